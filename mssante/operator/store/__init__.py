"""Durable, encrypted storage: schema, migrations, repositories and the blob cipher.

One module per concern: `schema` (tables and the enumerations stored in them), `migrate`
(Alembic, driven from code), `db` (engines, sessions, the `Store`), `crypto` (blob encryption),
`errors` (the `StoreError` family), and the repositories `domains`, `mailboxes`, `folders`,
`grants`, `blobs`, `messages`, `audit`. Repository functions take an `AsyncSession` and never
commit: the caller decides what is atomic.

Import from the submodules. This file stays empty of imports so that light users (the
configuration loader checking a key with `crypto.parse_key`) do not load SQLAlchemy.
"""
