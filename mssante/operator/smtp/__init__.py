"""SMTP relay (peer operators) and submission (clients). Arrives with the relay issue."""
