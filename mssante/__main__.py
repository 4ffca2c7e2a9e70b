"""`python -m mssante` runs the command line."""

import sys

from mssante.cli import main

sys.exit(main())
