"""
Login and user-management commands (server.md 4.5, 4.6, 4.9). They exist
only with authentication on; the service registers both lists then.

Handlers reach the L{oxidb.auth.manager.AuthManager} as C{ctx.auth}
and the L{oxidb.audit.events.Auditor} as C{ctx.audit} (None when
auditing is off). Logins audit themselves (with the name tried), so their
rows are C{audited=False}; user management is audited by the dispatcher.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, NoReturn, cast

from scramp import ScramException
from scramp.utils import saslprep
from twisted.cred.credentials import UsernamePassword
from twisted.internet.defer import Deferred

from oxidb.audit.events import DENIED, ERROR, OK
from oxidb.auth.cred import IOxiUser, LoginFailed, OxiUser, ScramContinue, ScramCredentials
from oxidb.auth.login import LoginInputs
from oxidb.auth.manager import AuthManager
from oxidb.auth.passwords import SALT_LENGTH, PasswordSecrets, derive_secrets
from oxidb.auth.rbac import Role
from oxidb.auth.store import GrantDbRole, RevokeDbRole, create_user_op, drop_user_op, update_user_op
from oxidb.commands._args import optional_str, require_str
from oxidb.commands._context import CommandContext
from oxidb.commands._registry import Command
from oxidb.commands._schema import Field, JsonType, fields
from oxidb.engine import databases
from oxidb.errors import (
    AuthenticationFailedError,
    BadRequestError,
    InternalError,
    InvalidRoleError,
    LoginThrottledError,
    NoDbRoleError,
    OxiError,
    ScramProtocolError,
    UserExistsError,
    UserNotFoundError,
)
from oxidb.logs import Logger

_log = Logger(namespace="oxidb.commands.auth")


def _run(coroutine: Coroutine[Any, Any, Any]) -> Deferred[Any]:
    return Deferred.fromCoroutine(coroutine)


def _auth(ctx: CommandContext) -> AuthManager:
    """The user manager; these handlers run only with authentication on."""
    manager = ctx.auth
    if manager is None:
        raise InternalError("authentication is off")
    return manager


def _login(ctx: CommandContext) -> LoginInputs:
    """The session's login machine (L{oxidb.auth.login}): it refuses steps out of order."""
    return ctx.session.login.machine


def _audit_login(
    ctx: CommandContext, cmd: str, username: str | None, role: Role | None, result: str, detail: str
) -> None:
    audit = ctx.audit
    if audit is not None:
        audit.record_login(ctx.session, cmd, username, None if role is None else role.wire, result, detail)


def _logged_in(ctx: CommandContext, cmd: str, avatar: OxiUser) -> None:
    session = ctx.session
    _login(ctx).succeeded(avatar.username, avatar.role)
    _auth(ctx).throttle.succeeded(avatar.username, session)
    _audit_login(ctx, cmd, avatar.username, avatar.role, OK, "")


def _begin_attempt(ctx: CommandContext, cmd: str, username: str) -> None:
    """
    Count a login attempt for C{username} from this session's address, or
    refuse it (audited as denied) while the name or the address is
    throttled. Runs alike for known and unknown names.
    """
    try:
        _auth(ctx).throttle.begin(ctx.session, username)
    except LoginThrottledError as e:
        _audit_login(ctx, cmd, username, None, DENIED, e.message)
        _log.info(
            "refused a login for {user} from {peer}: throttled ({cmd})", user=username, peer=ctx.session.peer, cmd=cmd
        )
        raise


async def _login_failed(ctx: CommandContext, cmd: str, username: str | None, error: OxiError) -> NoReturn:
    """Audit a failed login, hold wrong credentials back, and raise C{error}."""
    wrong_credentials = isinstance(error, AuthenticationFailedError)
    _audit_login(ctx, cmd, username, None, DENIED if wrong_credentials else ERROR, error.message)
    if wrong_credentials:
        metrics = ctx.metrics
        if metrics is not None:
            metrics.auth_failed()
        _log.info("failed login for {user} from {peer} ({cmd})", user=username, peer=ctx.session.peer, cmd=cmd)
        await _auth(ctx).throttle.failed(ctx.session, username or "")
    raise error


# --- login -------------------------------------------------------------------


def authenticate(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """SCRAM step 1: client-first in, server-first out."""
    return _run(_authenticate(ctx, request))


#: Audit detail of an accepted SCRAM first step (the proof follows).
FIRST_STEP = "SCRAM first step accepted; proof pending"


async def _authenticate(ctx: CommandContext, request: dict[str, Any]) -> dict[str, Any]:
    _login(ctx).scram_first("authenticate")
    credentials = ScramCredentials(optional_str(request, "payload") or "")
    try:
        await _auth(ctx).portal.login(credentials, None, IOxiUser)
    except ScramContinue as step:
        exchange = step.exchange
        # Counted (or refused) here, when the attempt starts, and audited
        # like the final step: the same work for known and unknown names.
        _begin_attempt(ctx, "authenticate", exchange.username)
        _audit_login(ctx, "authenticate", exchange.username, None, OK, FIRST_STEP)
        _login(ctx).server_first_sent(exchange)
        return {"payload": exchange.server_first, "done": False}
    except LoginFailed as e:
        await _login_failed(ctx, "authenticate", None, e.error)
    raise InternalError()  # the first message never completes a login


def authenticate_continue(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """SCRAM step 2: client-final in, server-final out; logs the session in."""
    return _run(_authenticate_continue(ctx, request))


async def _authenticate_continue(ctx: CommandContext, request: dict[str, Any]) -> dict[str, Any]:
    exchange = _login(ctx).scram_final("authenticate_continue")  # consumed whatever the outcome
    if exchange is None:
        await _login_failed(ctx, "authenticate", None, ScramProtocolError("no SCRAM state; send 'authenticate' first"))
    credentials = ScramCredentials(optional_str(request, "payload") or "", exchange)
    try:
        _, avatar, _ = await _auth(ctx).portal.login(credentials, None, IOxiUser)
    except LoginFailed as e:
        await _login_failed(ctx, "authenticate", exchange.username, e.error)
    _logged_in(ctx, "authenticate", cast(OxiUser, avatar))
    return {"payload": exchange.server_final, "done": True}


def auth_simple(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """Plaintext login against the Argon2id hash (legacy clients; use TLS)."""
    return _run(_auth_simple(ctx, request))


async def _auth_simple(ctx: CommandContext, request: dict[str, Any]) -> dict[str, Any]:
    _login(ctx).attempt("auth_simple")
    username = optional_str(request, "username") or ""
    password = optional_str(request, "password") or ""
    credentials = UsernamePassword(username.encode("utf-8", "surrogatepass"), password.encode("utf-8", "surrogatepass"))
    _begin_attempt(ctx, "auth_simple", username)
    try:
        _, avatar, _ = await _auth(ctx).portal.login(credentials, None, IOxiUser)
    except LoginFailed as e:
        await _login_failed(ctx, "auth_simple", username, e.error)
    user = cast(OxiUser, avatar)
    _logged_in(ctx, "auth_simple", user)
    return {"role": user.role.wire, "done": True}


# --- user management ---------------------------------------------------------


def _role_field(request: dict[str, Any]) -> Role | None:
    """The C{role} field: None when absent; an invalid role is an error."""
    text = optional_str(request, "role")
    if text is None:
        return None
    role = Role.parse(text)
    if role is None:
        raise InvalidRoleError(text)
    return role


def _hash(ctx: CommandContext, password: str) -> Deferred[PasswordSecrets]:
    """Derive the stored secrets on the thread pool (Argon2id + PBKDF2)."""
    auth = _auth(ctx)
    return ctx.read(
        derive_secrets, password, auth.rng.randbytes(SALT_LENGTH), auth.rng.randbytes(SALT_LENGTH), auth.iterations
    )


def create_user(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _run(_create_user(ctx, request))


async def _create_user(ctx: CommandContext, request: dict[str, Any]) -> Any:
    username: str = request["username"]
    password: str = request["password"]
    role = _role_field(request) or Role.READ
    _check_username(username)
    if _auth(ctx).store.get(username) is not None:
        raise UserExistsError(username)
    secrets = await _hash(ctx, password)
    return await ctx.write(create_user_op(username, role, secrets))


def _check_username(username: str) -> None:
    """Only names a SCRAM client can send (SASLprep leaves them unchanged)."""
    if not username:
        raise BadRequestError("missing 'username'")
    try:
        prepared = saslprep(username)
    except ScramException:
        prepared = None
    if prepared != username:
        raise BadRequestError(f"invalid username: '{username}' is not in SASLprep normal form")


def drop_user(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return ctx.write(drop_user_op(request["username"]))


def update_user(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    return _run(_update_user(ctx, request))


async def _update_user(ctx: CommandContext, request: dict[str, Any]) -> Any:
    username: str = request["username"]
    password = optional_str(request, "password")
    if password is None and optional_str(request, "role") is None:
        raise BadRequestError("must specify 'password' or 'role' to update")
    role = _role_field(request)
    if _auth(ctx).store.get(username) is None:
        raise UserNotFoundError(username)
    secrets = None if password is None else await _hash(ctx, password)
    return await ctx.write(update_user_op(username, role, secrets))


def list_users(ctx: CommandContext, request: dict[str, Any]) -> list[dict[str, Any]]:
    users = []
    for record in _auth(ctx).store.users():
        entry: dict[str, Any] = {"username": record.username, "role": record.role.wire}
        if record.db_roles:
            entry["db_roles"] = dict(record.db_roles)
        users.append(entry)
    return users


def grant_db_role(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """
    C{"granted role '<r>' on database '<d>' to user '<u>'"}: for the
    commands acting in that database the user has C{role} instead of the
    global one (server.md 5).
    """
    username = require_str(request, "username")
    database = require_str(request, "database")
    text = require_str(request, "role")
    databases.validate_name(database)
    role = Role.parse(text)
    if role is None:
        raise InvalidRoleError(text)
    if _auth(ctx).store.get(username) is None:
        raise UserNotFoundError(username)
    return ctx.write(GrantDbRole(username, database, role))


def revoke_db_role(ctx: CommandContext, request: dict[str, Any]) -> Deferred[Any]:
    """C{"revoked database role on '<d>' from user '<u>'"}."""
    username = require_str(request, "username")
    database = require_str(request, "database")
    store = _auth(ctx).store
    if store.get(username) is None:
        raise UserNotFoundError(username)
    if store.db_role(username, database) is None:
        raise NoDbRoleError(username, database)
    return ctx.write(RevokeDbRole(username, database))


_PAYLOAD = fields(Field("payload", JsonType.STRING, doc="the SCRAM message"))
_ROLE = Field("role", JsonType.STRING, doc="`read`, `readWrite` or `admin` (checked by the handler)", handler=True)

#: Served before login; they audit themselves. Once logged in they are
#: unknown commands (server.md 4.8): Admin-only, so a non-admin is denied.
LOGIN_COMMANDS = [
    Command(
        "authenticate",
        authenticate,
        pre_auth=True,
        audited=False,
        schema=_PAYLOAD,
        summary="SCRAM-SHA-256 step 1: client-first in, server-first out.",
    ),
    Command(
        "authenticate_continue",
        authenticate_continue,
        pre_auth=True,
        audited=False,
        schema=_PAYLOAD,
        summary="SCRAM-SHA-256 step 2: client-final in, server-final out; logs the session in.",
    ),
    Command(
        "auth_simple",
        auth_simple,
        pre_auth=True,
        audited=False,
        schema=fields(Field("username", JsonType.STRING), Field("password", JsonType.STRING)),
        summary="Plaintext login (legacy clients; use TLS): the user's role.",
    ),
]

#: Admin-only; the changes replicate in cluster mode.
USER_COMMANDS = [
    Command(
        "create_user",
        create_user,
        writes=True,
        audit_collection=None,
        audit_target=("username", "role"),
        schema=fields(
            Field("username", JsonType.STRING, required=True, doc="in SASLprep normal form (checked by the handler)"),
            Field("password", JsonType.STRING, required=True),
            Field("role", JsonType.STRING, doc="default `read`; `read`, `readWrite` or `admin`", handler=True),
        ),
        summary='`"user created"`.',
    ),
    Command(
        "drop_user",
        drop_user,
        writes=True,
        audit_collection=None,
        audit_target=("username",),
        schema=fields(Field("username", JsonType.STRING, required=True)),
        summary='`"user dropped"`; never the last admin.',
    ),
    Command(
        "update_user",
        update_user,
        writes=True,
        audit_collection=None,
        audit_target=("username", "role"),
        schema=fields(
            Field("username", JsonType.STRING, required=True),
            Field("password", JsonType.STRING, doc="`password` and/or `role` (checked by the handler)", handler=True),
            _ROLE,
        ),
        summary='`"user updated"`; never demotes the last admin.',
    ),
    Command(
        "grant_db_role",
        grant_db_role,
        writes=True,
        audit_collection=None,
        audit_target=("username", "database", "role"),
        schema=fields(
            Field("username", JsonType.STRING, required=True),
            Field("database", JsonType.STRING, required=True, doc="a database name (it need not exist yet)"),
            Field("role", JsonType.STRING, required=True, doc="`read`, `readWrite` or `admin` (checked later)"),
        ),
        summary="Gives the user a role on one database: `\"granted role '<r>' on database '<d>' to user '<u>'\"`.",
    ),
    Command(
        "revoke_db_role",
        revoke_db_role,
        writes=True,
        audit_collection=None,
        audit_target=("username", "database"),
        schema=fields(
            Field("username", JsonType.STRING, required=True),
            Field("database", JsonType.STRING, required=True),
        ),
        summary="Takes the user's role on one database away: `\"revoked database role on '<d>' from user '<u>'\"`.",
    ),
    Command(
        "list_users",
        list_users,
        audit_collection=None,
        summary="The users and their roles, by name.",
    ),
]
