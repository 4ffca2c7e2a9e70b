"""The error contract of the whitelist layer.

:class:`WhitelistError` is the one error type raised by ``mssante.whitelist``: a list that cannot
be used (malformed, wrong format, bad entry, checksum mismatch, replayed) or a source that cannot
be read. Its message names the source and, for a parse error, the line, so that an operator can
open the file at the right place. :meth:`WhitelistStore.refresh` never raises it: it logs it and
keeps the last good list.
"""

from __future__ import annotations


class WhitelistError(Exception):
    """A whitelist, its checksum or its source cannot be used; the message says why."""
