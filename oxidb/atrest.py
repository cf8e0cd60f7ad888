"""
Encryption at rest: the key file of C{OXIDB_ENCRYPTION_KEY} and the keys
derived from it.

The key file holds at least 32 bytes of secret material (raw bytes or
text, e.g. C{openssl rand -hex 32}); surrounding whitespace is ignored. It
must be readable by its owner only (mode 0600 or stricter), else it is
refused. Two independent keys are derived from it with HKDF-SHA256:

  - the database key, given to SQLite3MultipleCiphers (C{PRAGMA hexkey}),
    which encrypts every page of the database file and its WAL (documents,
    indexes, blobs) and therefore backups and Raft snapshots, which are
    copies of the database made with the same key;
  - the log key: each Raft log entry's payload is sealed with AES-256-GCM,
    the entry's term and index as associated data (L{LogCipher}).
"""

from __future__ import annotations

import base64
import os
import stat

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from oxidb.errors import ConfigError

#: Fewest bytes of secret material a key file may hold.
MIN_KEY_BYTES = 32

#: Longest key file read (a key file is small; anything bigger is a mistake).
MAX_KEY_FILE_BYTES = 4096

_NONCE = 12


class AtRestKeyError(ConfigError):
    """The key file cannot be used, or data does not open with it (startup stops)."""


class EncryptedError(AtRestKeyError):
    """No key was given for a database file that is encrypted (or is not a database at all)."""


class WrongKeyError(AtRestKeyError):
    """A database file does not open with the key given: another key's file, or not a database."""


class NotEncryptedError(AtRestKeyError):
    """A key was given for a database file that is not encrypted."""


def _derive(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"oxidb encryption at rest", info=info).derive(material)


@attrs.frozen(repr=False)
class AtRestKey:
    """
    The keys derived from one key file.

    @ivar database: the SQLite3MultipleCiphers key (32 bytes).
    @ivar log: the Raft log payload key (32 bytes).
    """

    database: bytes
    log: bytes

    @classmethod
    def from_material(cls, material: bytes) -> AtRestKey:
        if len(material) < MIN_KEY_BYTES:
            raise AtRestKeyError(
                f"OXIDB_ENCRYPTION_KEY: the key file holds {len(material)} bytes; at least {MIN_KEY_BYTES} are needed"
            )
        return cls(_derive(material, b"database"), _derive(material, b"raft log"))

    def __repr__(self) -> str:
        return "AtRestKey(<redacted>)"

    @property
    def database_pragma(self) -> str:
        """The statement that keys a SQLite connection (run first)."""
        return f"PRAGMA hexkey='{self.database.hex()}'"


def load_key_file(path: str) -> AtRestKey:
    """
    The keys of the key file at C{path}; L{AtRestKeyError} if it is missing,
    not a regular file, readable or writable by anyone but its owner, too
    short or too long. Messages name neither the path nor the content (the
    variable is a secret setting: someone may put the key itself in it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise AtRestKeyError(f"OXIDB_ENCRYPTION_KEY: cannot read the key file: {e.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AtRestKeyError("OXIDB_ENCRYPTION_KEY: the key file is not a regular file")
        if info.st_mode & 0o077:
            raise AtRestKeyError(
                f"OXIDB_ENCRYPTION_KEY: the key file has mode {stat.S_IMODE(info.st_mode):04o}; "
                "it must be readable by its owner only (chmod 600)"
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise AtRestKeyError(f"OXIDB_ENCRYPTION_KEY: the key file is larger than {MAX_KEY_FILE_BYTES} bytes")
    return AtRestKey.from_material(data.strip())


@attrs.frozen(repr=False)
class LogCipher:
    """Seals and opens Raft log payloads with AES-256-GCM."""

    key: bytes

    def seal(self, plaintext: bytes, associated: bytes) -> str:
        """C{plaintext} encrypted and authenticated, as base64 text."""
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(self.key).encrypt(nonce, plaintext, associated)
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, text: str, associated: bytes) -> bytes:
        """The plaintext of L{seal}'s output; L{AtRestKeyError} if it does not authenticate."""
        try:
            raw = base64.b64decode(text, validate=True)
            return AESGCM(self.key).decrypt(raw[:_NONCE], raw[_NONCE:], associated)
        except (InvalidTag, ValueError) as e:
            raise AtRestKeyError(f"cannot decrypt with this key ({type(e).__name__})") from None
