"""The mail operator proper: SMTP relay and submission, IMAP store, delivery and queue."""
