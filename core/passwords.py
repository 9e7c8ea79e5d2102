"""Password hashing (argon2id, `argon2-cffi`'s defaults) and the rules a new password must meet.

The rules follow NIST SP 800-63B: a minimum length (not composition rules), a maximum that
bounds hashing cost, and refusal of the passwords attackers try first: common ones, one
character repeated, or the account's own email."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MAX_LENGTH = 256
# The most used passwords of public breach corpora that meet a 8+ length; a fuller list can be
# loaded later, the check stays one set lookup.
_COMMON = frozenset({
    "password", "password1", "password12", "password123", "password1234", "passw0rd", "12345678", "123456789",
    "1234567890", "123456789012", "qwertyuiop", "qwerty123", "iloveyou", "11111111", "00000000",
    "abcdefgh", "abc12345", "letmein1", "welcome1", "welcome123", "admin123", "administrator",
    "sunshine1", "football1", "baseball1", "princess1", "trustno1", "changeme", "changeme123",
    "correcthorsebatterystaple", "qwertyuiopasdfghjkl", "1q2w3e4r5t6y", "zaq12wsx", "p@ssw0rd",
})

_HASHER = PasswordHasher()
# A hash checked when no account matches, so an unknown email takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("agentos-no-such-account")


class PasswordRejected(ValueError):
    """The password does not meet the rules; the message says which one (never the password)."""


def check_rules(password: str, *, min_length: int, email: str | None = None) -> None:
    if len(password) < min_length:
        raise PasswordRejected(f"must be at least {min_length} characters long")
    if len(password) > MAX_LENGTH:
        raise PasswordRejected(f"must be at most {MAX_LENGTH} characters long")
    lowered = password.lower()
    if lowered in _COMMON or len(set(password)) <= 2:
        raise PasswordRejected("is too common or too easy to guess; choose a longer passphrase")
    if email and (lowered == email.lower() or lowered == email.split("@")[0].lower()):
        raise PasswordRejected("must not be your email address")


async def hash_password(password: str) -> str:
    """An argon2id hash (off the event loop: hashing takes tens of milliseconds by design)."""
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify(password_hash: str | None, password: str) -> bool:
    """True if `password` matches; an account without a password (`None`) never matches, after
    the same work as a wrong one."""
    def check() -> bool:
        try:
            return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False
    return await asyncio.to_thread(check)
