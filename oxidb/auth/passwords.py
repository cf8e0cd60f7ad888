"""
Password hashing: Argon2id for C{auth_simple} and the SCRAM verifier, both
derived once when a password is set. Everything here is CPU work (tens of
milliseconds): call it on the thread pool, never on the reactor.
"""

from __future__ import annotations

import attrs
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from scramp import ScramException

from oxidb.auth.scram import ScramVerifier
from oxidb.errors import BadRequestError

#: server.md 4.2: Argon2id v19, m=19456 KiB, t=2, p=1, 16-byte salt,
#: 32-byte tag. Verification accepts any valid PHC argon2 string.
HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16)

SALT_LENGTH = 16


@attrs.frozen
class PasswordSecrets:
    """What is stored for a password: its Argon2id hash and SCRAM verifier."""

    password_hash: str
    verifier: ScramVerifier

    def to_fields(self) -> dict[str, object]:
        """The C{password_hash} and C{scram_*} fields of a record."""
        return {"password_hash": self.password_hash, **self.verifier.to_fields()}


def derive_secrets(password: str, argon2_salt: bytes, scram_salt: bytes, iterations: int) -> PasswordSecrets:
    """
    Hash C{password} for storage (blocking).

    @raise BadRequestError: the password is empty or SASLprep refuses it
        (e.g. control characters), so no client could log in with it.
    """
    if not password:
        raise BadRequestError("invalid password: must not be empty")
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError("invalid password: not valid Unicode text") from None
    try:
        verifier = ScramVerifier.derive(password, scram_salt, iterations)
    except ScramException as e:
        raise BadRequestError(f"invalid password: {e.args[0]}") from None
    return PasswordSecrets(HASHER.hash(password, salt=argon2_salt), verifier)


def verify_password(password_hash: str, password: str | bytes) -> bool:
    """Does C{password} match the PHC string C{password_hash}? (blocking)"""
    try:
        return HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
