"""IMAP4rev1/IMAP4rev2 server. Arrives with the IMAP issue."""
