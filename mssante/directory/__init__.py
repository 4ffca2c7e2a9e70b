"""Mirror of the national MSSanté directory: the table and its lookups (`mirror.py`); the LDAP
sync and the extraction-file import arrive with the directory issue (docs/directory.md)."""
