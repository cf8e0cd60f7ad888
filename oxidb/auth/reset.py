"""
Offline reset of the C{admin} password: L{reset_admin_password}, behind
C{oxidb-cli admin reset-password --data DIR}.

It works on the data directory of a stopped server (it takes the data
directory's lock, so it refuses while a server runs there) and rewrites
C{_auth/users.json} as the server would: the new Argon2id hash and SCRAM
verifier, never the password. In a cluster it changes that node's copy
only; the next replicated user change or snapshot replaces it, so log in
there and set the password with C{update_user} on the leader.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from oxidb.auth.passwords import SALT_LENGTH, derive_secrets
from oxidb.auth.rbac import Role
from oxidb.auth.scram import DEFAULT_ITERATIONS
from oxidb.auth.store import ADMIN_PASSWORD_FILE, ADMIN_USER, UserRecord, UserStore, new_admin_password
from oxidb.datadir import DataDirLock
from oxidb.errors import BadRequestError, ConfigError

AUTH_DIR = "_auth"


def reset_admin_password(data_dir: str, password: str | None, rng: random.Random | None = None) -> str:
    """
    Set the password of C{admin} in C{data_dir} (creating the user, with the
    admin role, if it is missing; giving it the admin role back if it was
    demoted) and return the password: C{password}, or a generated one
    (32 characters, as on a first start) when it is C{None}.

    A stale generated first-admin password file (L{ADMIN_PASSWORD_FILE}) is
    removed. Blocking (hashing, file writes).

    @param rng: salts and generated passwords (default C{random.SystemRandom()}).
    @raise ConfigError: C{data_dir} is not a directory, a server holds its
        lock, the user store is unreadable, or the password is refused (empty,
        or rejected by SASLprep).
    """
    rng = rng if rng is not None else random.SystemRandom()
    path = os.path.abspath(data_dir)
    if not os.path.isdir(path):
        raise ConfigError(f"{data_dir!r} is not a data directory (it does not exist)")
    lock = DataDirLock(path)
    lock.acquire()
    try:
        store = UserStore.open(Path(path) / AUTH_DIR)
        existing = store.get(ADMIN_USER)
        iterations = DEFAULT_ITERATIONS
        if existing is not None and existing.scram is not None:
            iterations = existing.scram.iterations
        if password is None:
            password = new_admin_password(rng)
        try:
            secrets = derive_secrets(password, rng.randbytes(SALT_LENGTH), rng.randbytes(SALT_LENGTH), iterations)
        except BadRequestError as e:
            raise ConfigError(str(e)) from None
        if existing is None:
            store.create(UserRecord(ADMIN_USER, Role.ADMIN, secrets.password_hash, secrets.verifier))
        else:
            store.update(ADMIN_USER, Role.ADMIN, secrets)
        (Path(path) / ADMIN_PASSWORD_FILE).unlink(missing_ok=True)
    finally:
        lock.release()
    return password
