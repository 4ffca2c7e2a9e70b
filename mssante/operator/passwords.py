"""Password hashing (argon2id) and the password policy for mailbox credentials.

argon2-cffi's defaults follow RFC 9106's second recommended option (argon2id, t=3, 64 MiB, p=4).
Hashing is CPU- and memory-bound on purpose: callers on the event loop use `hash_async` /
`verify_async`, which run it in a worker thread so one login never stalls other sessions.
"""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 12
MAX_LENGTH = 1024  # bound the work an attacker can make us hash

_hasher = PasswordHasher()


class PasswordPolicyError(ValueError):
    """A password the policy refuses; the message says which rule."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"password too short: at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"password too long: at most {MAX_LENGTH} characters")
    if password != password.strip():
        raise PasswordPolicyError("password must not start or end with white space")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise PasswordPolicyError("password must not contain control characters")


def generate_password() -> str:
    """A 20-character random password (about 119 bits), easy to type: no look-alike symbols."""
    alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(20))


def hash_password(password: str) -> str:
    check_policy(password)
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True when `password` matches; never raises for a wrong password or a corrupt hash."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's defaults."""
    return _hasher.check_needs_rehash(stored_hash)


async def hash_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def verify_async(stored_hash: str, password: str) -> bool:
    return await asyncio.to_thread(verify_password, stored_hash, password)
