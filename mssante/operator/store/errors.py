"""The store's error contract: every failure a caller may want to handle is one of these.

The names read as outcomes (`NotFound`, not `NotFoundError`) because callers write
`except NotFound:`; they are the agreed contract with the CLI and the servers.

Callers catch `StoreError` to handle "the store said no"; the subclasses say why. Messages are
safe to show to an administrator: they never contain a password, a key or message content.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class: the store cannot do what was asked; the message says why."""


class NotFound(StoreError):  # noqa: N818 - the contract's names
    """The named domain, mailbox, folder, grant or blob does not exist."""


class AlreadyExists(StoreError):  # noqa: N818 - the contract's names
    """Creating something that is already there (domain, mailbox, binding…)."""


class SchemaOutdated(StoreError):  # noqa: N818 - the contract's names
    """The database schema is not the revision this code expects (`mssante db upgrade`)."""


class KeyUnavailable(StoreError):  # noqa: N818 - the contract's names
    """A blob is encrypted under a key id that is not configured."""


class BlobTampered(StoreError):  # noqa: N818 - the contract's names
    """A blob failed authentication: wrong key material, or ciphertext/nonce/digest altered."""
