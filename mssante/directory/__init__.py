"""Mirror of the national MSSanté directory. Arrives with the directory issue."""
