"""
Raft values and peer messages, and their JSON shapes.

Log ids, entries and memberships use the shapes of the persistent Raft state
(server.md 8.6): a log id is C{{"leader_id":{"term":T,"node_id":N},"index":I}},
an entry is C{{"log_id":...,"payload":"Blank"|{"Normal":<request>}|
{"Membership":<membership>}}} (normal entries also carry the leader's
timestamp as C{"ts"}, Unix milliseconds). Peer messages are JSON objects with a
C{"type"} key; see C{docs/raft-internals.md} for every shape.

Decoding is strict: anything a peer sends that does not have the documented
shape raises L{MessageDecodeError}. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
import orjson

from oxidb.raft import quorum


class MessageDecodeError(ValueError):
    """A JSON value does not have the shape of a Raft value or message."""


# --- values -----------------------------------------------------------------


@attrs.frozen
class LogId:
    """
    The id of a log entry: the term and node of the leader that created it,
    and its index (the first entry has index 1). Two log ids are ordered by
    C{(term, index)}; one leader per term makes the node id redundant there.
    """

    term: int
    node_id: int
    index: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.term, self.index)

    def display(self) -> str:
        """openraft's display form, C{T<term>-N<node>-<index>}."""
        return f"T{self.term}-N{self.node_id}-{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {
            "leader_id": {"term": self.term, "node_id": self.node_id},
            "index": self.index,
        }

    @classmethod
    def from_json(cls, value: Any) -> LogId:
        # The well-formed case first: it is on every append's path.
        if type(value) is dict:
            leader = value.get("leader_id")
            if type(leader) is dict:
                term, node_id, index = leader.get("term"), leader.get("node_id"), value.get("index")
                if (
                    type(term) is int and type(node_id) is int and type(index) is int
                    and term >= 0 and node_id >= 0 and index >= 0
                ):
                    return cls(term, node_id, index)
        obj = _object(value, "log id")
        leader = _object(obj.get("leader_id"), "log id leader_id")
        return cls(
            term=_uint(leader, "term"),
            node_id=_uint(leader, "node_id"),
            index=_uint(obj, "index"),
        )


def log_id_json(log_id: LogId | None) -> dict[str, Any] | None:
    return None if log_id is None else log_id.to_json()


def log_id_from_json(value: Any) -> LogId | None:
    return None if value is None else LogId.from_json(value)


def _frozen_nodes(nodes: Mapping[int, str]) -> Mapping[int, str]:
    return MappingProxyType(dict(sorted(nodes.items())))


def _frozen_configs(configs: Iterable[Iterable[int]]) -> tuple[frozenset[int], ...]:
    return tuple(frozenset(c) for c in configs)


def _frozen_incarnations(incarnations: Mapping[int, str] | None) -> Mapping[int, str]:
    return MappingProxyType(dict(sorted((incarnations or {}).items())))


@attrs.frozen
class Membership:
    """
    A cluster configuration: one voter set, or two during a joint change
    (C{[old, new]}), and the Raft address of every member. Nodes that are in
    C{nodes} but in no voter set are learners: they receive the log and never
    count towards a quorum.

    Identity (docs/raft-internals.md, "Identity"): C{incarnations} pins the
    incarnation id of a member's data directory once the leader has learned
    it (a member without one is not pinned yet: a learner before its first
    contact, or a cluster formed before identities existed); C{cluster_id}
    names the cluster (C{None} only in memberships written before it
    existed).
    """

    configs: tuple[frozenset[int], ...] = attrs.field(converter=_frozen_configs)
    nodes: Mapping[int, str] = attrs.field(converter=_frozen_nodes)
    incarnations: Mapping[int, str] = attrs.field(default=None, converter=_frozen_incarnations)
    cluster_id: str | None = None

    @configs.validator
    def _check_configs(self, attribute: Any, value: tuple[frozenset[int], ...]) -> None:
        if not 1 <= len(value) <= 2:
            raise ValueError("a membership has one or two voter sets")
        for config in value:
            missing = config - set(self.nodes)
            if missing:
                raise ValueError(f"voters without an address: {sorted(missing)}")

    @incarnations.validator
    def _check_incarnations(self, attribute: Any, value: Mapping[int, str]) -> None:
        stray = set(value) - set(self.nodes)
        if stray:
            raise ValueError(f"incarnations of nodes that are not members: {sorted(stray)}")

    @property
    def voters(self) -> frozenset[int]:
        """Every node that votes in at least one of the voter sets."""
        return frozenset().union(*self.configs)

    @property
    def learners(self) -> frozenset[int]:
        return frozenset(self.nodes) - self.voters

    @property
    def is_joint(self) -> bool:
        return len(self.configs) == 2

    def is_quorum(self, granted: Iterable[int]) -> bool:
        """C{granted} holds a majority of every voter set."""
        return quorum.is_quorum(self.configs, granted)

    def quorum_index(self, matched: Callable[[int], int]) -> int:
        """
        The highest index that a majority of every voter set has reached,
        given each voter's matched index.
        """
        return quorum.quorum_index(self.configs, matched)

    def to_json(self) -> dict[str, Any]:
        nodes: dict[str, Any] = {}
        for n, a in self.nodes.items():
            node: dict[str, Any] = {"addr": a}
            if n in self.incarnations:
                node["incarnation"] = self.incarnations[n]
            nodes[str(n)] = node
        out: dict[str, Any] = {"configs": [sorted(c) for c in self.configs], "nodes": nodes}
        if self.cluster_id is not None:
            out["cluster_id"] = self.cluster_id
        return out

    @classmethod
    def from_json(cls, value: Any) -> Membership:
        obj = _object(value, "membership")
        configs = obj.get("configs")
        nodes = _object(obj.get("nodes"), "membership nodes")
        if not isinstance(configs, list):
            raise MessageDecodeError("membership configs must be an array")
        parsed_nodes: dict[int, str] = {}
        incarnations: dict[int, str] = {}
        for key, node in nodes.items():
            if not key.isdigit():
                raise MessageDecodeError(f"membership node id {key!r} is not a number")
            fields = _object(node, "membership node")
            addr = fields.get("addr")
            if not isinstance(addr, str):
                raise MessageDecodeError("membership node addr must be a string")
            parsed_nodes[int(key)] = addr
            incarnation = fields.get("incarnation")
            if incarnation is not None:
                if not isinstance(incarnation, str) or not incarnation:
                    raise MessageDecodeError("membership node incarnation must be a non-empty string")
                incarnations[int(key)] = incarnation
        cluster_id = obj.get("cluster_id")
        if cluster_id is not None and (not isinstance(cluster_id, str) or not cluster_id):
            raise MessageDecodeError("membership cluster_id must be a non-empty string")
        parsed_configs = []
        for config in configs:
            if not isinstance(config, list) or not all(_is_uint(n) for n in config):
                raise MessageDecodeError("a membership config must be an array of node ids")
            parsed_configs.append(config)
        try:
            return cls(
                configs=parsed_configs, nodes=parsed_nodes, incarnations=incarnations, cluster_id=cluster_id
            )
        except ValueError as e:
            raise MessageDecodeError(str(e)) from None

    def debug_text(self) -> str:
        """Upstream's Rust debug form of the membership (an opaque string)."""
        configs = ", ".join("{" + ", ".join(map(str, sorted(c))) + "}" for c in self.configs)
        nodes = ", ".join(f'{n}: BasicNode {{ addr: "{a}" }}' for n, a in self.nodes.items())
        return f"Membership {{ configs: [{configs}], nodes: {{{nodes}}} }}"


@attrs.frozen
class StoredMembership:
    """A membership and the id of the log entry that carried it."""

    log_id: LogId | None
    membership: Membership

    def to_json(self) -> dict[str, Any]:
        return {"log_id": log_id_json(self.log_id), "membership": self.membership.to_json()}

    @classmethod
    def from_json(cls, value: Any) -> StoredMembership:
        obj = _object(value, "stored membership")
        return cls(
            log_id=log_id_from_json(obj.get("log_id")),
            membership=Membership.from_json(obj.get("membership")),
        )

    def debug_text(self) -> str:
        log_id = "None" if self.log_id is None else f"Some({self.log_id.display()})"
        return (
            f"StoredMembership {{ log_id: {log_id}, "
            f"membership: {self.membership.debug_text()} }}"
        )


Payload = Membership | Mapping[str, Any] | None


@attrs.frozen
class Entry:
    """
    One log entry. C{payload} is C{None} for a blank entry, a L{Membership}
    for a configuration change, or the application's request (an opaque JSON
    object) for a normal entry; normal entries carry the proposing leader's
    timestamp C{ts} (Unix milliseconds) so that every node applies
    time-dependent operations identically.
    """

    log_id: LogId
    payload: Payload = None
    ts: int | None = None

    @property
    def index(self) -> int:
        return self.log_id.index

    @property
    def term(self) -> int:
        return self.log_id.term

    @property
    def is_blank(self) -> bool:
        return self.payload is None

    @property
    def membership(self) -> Membership | None:
        return self.payload if isinstance(self.payload, Membership) else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"log_id": self.log_id.to_json()}
        if self.payload is None:
            out["payload"] = "Blank"
        elif isinstance(self.payload, Membership):
            out["payload"] = {"Membership": self.payload.to_json()}
        else:
            out["payload"] = {"Normal": self.payload}
            out["ts"] = self.ts
        return out

    @functools.cached_property
    def encoded(self) -> bytes:
        """The compact JSON of L{to_json}; its length is the entry's size."""
        return orjson.dumps(self.to_json())

    @classmethod
    def normal(cls, log_id: LogId, request: Mapping[str, Any], ts: int, request_json: bytes | None = None) -> Entry:
        """
        A normal entry. C{request_json}, when given, is C{orjson.dumps(request)}
        (a caller that has serialised the request already): L{encoded} is
        then assembled around it instead of serialising the request again.
        """
        entry = cls(log_id, request, ts)
        if request_json is not None:
            encoded = b'{"log_id":%s,"payload":{"Normal":%s},"ts":%d}' % (
                orjson.dumps(log_id.to_json()), request_json, ts
            )
            # The cached property's slot: the same value it would compute.
            object.__setattr__(entry, "encoded", encoded)
        return entry

    @classmethod
    def from_json(cls, value: Any) -> Entry:
        obj = _object(value, "entry")
        log_id = LogId.from_json(obj.get("log_id"))
        payload = obj.get("payload")
        if type(payload) is dict and len(payload) == 1:
            inner = payload.get("Normal")
            ts = obj.get("ts")
            if type(inner) is dict and type(ts) is int and ts >= 0:
                # The common case, decoded without the general checks below.
                entry = cls(log_id, inner, ts)
                if len(obj) == 3:
                    # Nothing but the entry's fields, in the order the sender
                    # serialised them: its encoding without building to_json().
                    object.__setattr__(entry, "encoded", orjson.dumps(obj))
                return entry
        if payload == "Blank":
            return cls(log_id)
        body = _object(payload, "entry payload")
        if len(body) != 1:
            raise MessageDecodeError("an entry payload has exactly one key")
        ((kind, inner),) = body.items()
        if kind == "Membership":
            return cls(log_id, Membership.from_json(inner))
        if kind == "Normal":
            ts = obj.get("ts")
            if not _is_uint(ts):
                raise MessageDecodeError("a normal entry needs an integer 'ts'")
            return cls(log_id, _object(inner, "normal payload"), ts)
        raise MessageDecodeError(f"unknown entry payload {kind!r}")


@attrs.frozen
class HardState:
    """
    What a node must remember before it answers anyone: its term and vote,
    and its identity: the incarnation id of its data directory (minted at
    first start) and the id of the cluster it belongs to (once known).
    """

    term: int = 0
    voted_for: int | None = None
    incarnation: str | None = None
    cluster_id: str | None = None


@attrs.frozen
class SnapshotMeta:
    """
    What a snapshot covers: the last log id included and the membership in
    force at that id. C{snapshot_id} names the snapshot (and its file).
    """

    last_log_id: LogId
    last_membership: StoredMembership
    snapshot_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "last_log_id": self.last_log_id.to_json(),
            "last_membership": self.last_membership.to_json(),
            "snapshot_id": self.snapshot_id,
        }

    @classmethod
    def from_json(cls, value: Any) -> SnapshotMeta:
        obj = _object(value, "snapshot meta")
        snapshot_id = obj.get("snapshot_id")
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise MessageDecodeError("snapshot_id must be a non-empty string")
        return cls(
            last_log_id=LogId.from_json(obj.get("last_log_id")),
            last_membership=StoredMembership.from_json(obj.get("last_membership")),
            snapshot_id=snapshot_id,
        )


def snapshot_id_for(log_id: LogId) -> str:
    """The deterministic snapshot id of a snapshot ending at C{log_id}."""
    return f"{log_id.term}-{log_id.node_id}-{log_id.index}"


@attrs.frozen
class Snapshot:
    """A snapshot: its metadata and the state machine's opaque bytes."""

    meta: SnapshotMeta
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")


@attrs.frozen
class PersistBatch:
    """
    What one storage step must make durable, in this order: the snapshot and
    the meta file (hard state, snapshot, purge point, commit), then the log:
    drop entries from C{truncate_from} on, drop entries up to C{purge_upto},
    append C{entries}, one fsync.

    @ivar committed: the commit point known when the batch was made; it is
        written with the meta file when that is rewritten anyway, so it is a
        lower bound after a restart.
    """

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    truncate_from: int | None = None
    entries: tuple[Entry, ...] = ()
    purge_upto: LogId | None = None
    committed: LogId | None = None

    @property
    def is_empty(self) -> bool:
        return (
            self.hard_state is None
            and self.snapshot is None
            and self.truncate_from is None
            and not self.entries
            and self.purge_upto is None
        )


# --- peer messages ------------------------------------------------------------


@attrs.frozen
class VoteRequest:
    """
    A (pre-)vote request. C{term} is the term the candidate asks for (for a
    pre-vote, one more than its current term, which it has not taken).
    C{transfer} marks an election started by a leadership transfer: it may
    disturb a leader that is still in its lease.
    """

    term: int
    src: int
    dst: int
    last_log_id: LogId | None
    pre_vote: bool = False
    transfer: bool = False
    #: The sender's cluster id and data-directory incarnation (stamped by the
    #: core on every message it sends; C{None} from a node that has none yet,
    #: or that runs a version without identities).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class VoteResponse:
    term: int
    src: int
    dst: int
    granted: bool
    pre_vote: bool = False
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class AppendEntriesRequest:
    term: int
    src: int
    dst: int
    prev_log_id: LogId | None
    entries: tuple[Entry, ...]
    leader_commit: int
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class AppendEntriesResponse:
    """
    On success C{index} is the follower's matched index. On a rejection it is
    the C{prev_log_id} index that did not match, and C{hint_index}/C{hint_term}
    point at where the follower's log may still agree with the leader's.
    """

    term: int
    src: int
    dst: int
    success: bool
    index: int
    hint_index: int = 0
    hint_term: int = 0
    #: The follower's commit point, for the leader's safety check.
    commit_id: LogId | None = attrs.field(default=None, eq=False)
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Heartbeat:
    """
    Keeps followers' election timers quiet and carries the commit index (never
    above what the follower is known to hold). C{read_seq} numbers the
    leader's ReadIndex confirmation rounds; it is echoed back.
    """

    term: int
    src: int
    dst: int
    commit: int
    read_seq: int
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class HeartbeatResponse:
    term: int
    src: int
    dst: int
    read_seq: int
    #: The follower's commit point, for the leader's safety check.
    commit_id: LogId | None = attrs.field(default=None, eq=False)
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class InstallSnapshotRequest:
    term: int
    src: int
    dst: int
    meta: SnapshotMeta
    offset: int
    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    done: bool
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class InstallSnapshotResponse:
    """
    C{next_offset} is the byte the follower expects next for C{snapshot_id};
    C{done} says it has installed (and persisted) the whole snapshot.
    """

    term: int
    src: int
    dst: int
    snapshot_id: str
    next_offset: int
    done: bool
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class ReadIndexRequest:
    """A follower asks the leader for a confirmed read index."""

    term: int
    src: int
    dst: int
    request_id: int
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class ReadIndexResponse:
    """C{read_index} is the confirmed read index, or C{None} if the leader could not confirm."""

    term: int
    src: int
    dst: int
    request_id: int
    read_index: int | None
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class TimeoutNow:
    """A leader hands over: the receiver starts an election at once."""

    term: int
    src: int
    dst: int
    # The sender's identity, as above (not part of equality).
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Refused:
    """
    The receiver will not count the sender (its data directory is not the
    incarnation the membership pinned, or it belongs to another cluster);
    C{reason} says why and what the operator can do.
    """

    term: int
    src: int
    dst: int
    reason: str
    cluster: str | None = attrs.field(default=None, eq=False)
    incarnation: str | None = attrs.field(default=None, eq=False)


Message = (
    VoteRequest
    | VoteResponse
    | AppendEntriesRequest
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshotRequest
    | InstallSnapshotResponse
    | ReadIndexRequest
    | ReadIndexResponse
    | TimeoutNow
    | Refused
)

_TYPE_NAMES: dict[type, str] = {
    VoteRequest: "vote",
    VoteResponse: "vote_response",
    AppendEntriesRequest: "append_entries",
    AppendEntriesResponse: "append_entries_response",
    Heartbeat: "heartbeat",
    HeartbeatResponse: "heartbeat_response",
    InstallSnapshotRequest: "install_snapshot",
    InstallSnapshotResponse: "install_snapshot_response",
    ReadIndexRequest: "read_index",
    ReadIndexResponse: "read_index_response",
    TimeoutNow: "timeout_now",
    Refused: "refused",
}

#: Fields added after the first release: left out when C{None}, optional when decoding.
_OPTIONAL_FIELDS = frozenset({"cluster", "incarnation", "commit_id"})


def message_to_json(msg: Message) -> dict[str, Any]:
    """The JSON object of a peer message (C{src}/C{dst} as C{"from"}/C{"to"})."""
    name, fields = _CODECS[type(msg)]
    out: dict[str, Any] = {"type": name}
    for field in fields:
        value = getattr(msg, field.name)
        if value is None and field.optional:
            continue
        if isinstance(value, (LogId, SnapshotMeta)):
            value = value.to_json()
        elif isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif isinstance(value, tuple):
            value = [e.to_json() for e in value]
        out[field.key] = value
    return out


def encode_message(msg: Message) -> bytes:
    """
    The compact JSON of L{message_to_json}. An append's entries are spliced
    in as their cached encodings (L{Entry.encoded}, which the leader has
    computed for its own log already): the same bytes, without building and
    serialising each entry again for every follower.
    """
    if type(msg) is not AppendEntriesRequest or not msg.entries:
        return orjson.dumps(message_to_json(msg))
    head: dict[str, Any] = {
        "type": "append_entries",
        "term": msg.term,
        "from": msg.src,
        "to": msg.dst,
        "prev_log_id": log_id_json(msg.prev_log_id),
    }
    tail: dict[str, Any] = {"leader_commit": msg.leader_commit}
    if msg.cluster is not None:
        tail["cluster"] = msg.cluster
    if msg.incarnation is not None:
        tail["incarnation"] = msg.incarnation
    return b"".join(
        (
            orjson.dumps(head)[:-1],
            b',"entries":[',
            b",".join([entry.encoded for entry in msg.entries]),
            b"],",
            orjson.dumps(tail)[1:],
        )
    )


def message_from_json(value: Any) -> Message:
    """Decode and validate a peer message; raises L{MessageDecodeError}."""
    obj = _object(value, "message")
    kind = obj.get("type")
    codec = _CODECS_BY_NAME.get(kind) if type(kind) is str else None
    if codec is None:
        raise MessageDecodeError(f"unknown message type {obj.get('type')!r}")
    cls, fields = codec
    kwargs: dict[str, Any] = {}
    for field in fields:
        if field.key not in obj:
            if field.optional:
                continue
            raise MessageDecodeError(f"{kind} message without {field.key!r}")
        kwargs[field.name] = field.decode(obj, field.key)
    message: Message = cls(**kwargs)
    return message


def decode_message(data: bytes) -> Message:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise MessageDecodeError(f"invalid JSON: {e}") from None
    return message_from_json(value)


def _bytes_field(obj: Mapping[str, Any], key: str) -> bytes:
    value = obj[key]
    if not isinstance(value, str):
        raise MessageDecodeError(f"{key!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise MessageDecodeError(f"{key!r} is not valid base64") from None


def _entries_field(obj: Mapping[str, Any], key: str) -> tuple[Entry, ...]:
    value = obj[key]
    if not isinstance(value, list):
        raise MessageDecodeError(f"{key!r} must be an array")
    return tuple(Entry.from_json(e) for e in value)


def _optional_uint(obj: Mapping[str, Any], key: str) -> int | None:
    return None if obj[key] is None else _uint(obj, key)


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj[key]
    if not isinstance(value, bool):
        raise MessageDecodeError(f"{key!r} must be a boolean")
    return value


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    return None if obj[key] is None else _str(obj, key)


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise MessageDecodeError(f"{key!r} must be a string")
    return value


_FIELD_DECODERS: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
    "term": lambda o, k: _uint(o, k),
    "src": lambda o, k: _uint(o, k),
    "dst": lambda o, k: _uint(o, k),
    "last_log_id": lambda o, k: log_id_from_json(o[k]),
    "prev_log_id": lambda o, k: log_id_from_json(o[k]),
    "pre_vote": _bool,
    "transfer": _bool,
    "granted": _bool,
    "success": _bool,
    "done": _bool,
    "entries": _entries_field,
    "leader_commit": lambda o, k: _uint(o, k),
    "index": lambda o, k: _uint(o, k),
    "read_index": lambda o, k: _optional_uint(o, k),
    "hint_index": lambda o, k: _uint(o, k),
    "hint_term": lambda o, k: _uint(o, k),
    "commit": lambda o, k: _uint(o, k),
    "read_seq": lambda o, k: _uint(o, k),
    "meta": lambda o, k: SnapshotMeta.from_json(o[k]),
    "offset": lambda o, k: _uint(o, k),
    "data": _bytes_field,
    "snapshot_id": _str,
    "next_offset": lambda o, k: _uint(o, k),
    "request_id": lambda o, k: _uint(o, k),
    "reason": _str,
    "cluster": lambda o, k: _optional_str(o, k),
    "incarnation": lambda o, k: _optional_str(o, k),
    "commit_id": lambda o, k: log_id_from_json(o[k]),
}


@attrs.frozen
class _FieldCodec:
    """One message field: its attribute, its wire key, whether it may be absent, its decoder."""

    name: str
    key: str
    optional: bool
    decode: Callable[[Mapping[str, Any], str], Any]


def _field_codecs(cls: type) -> tuple[_FieldCodec, ...]:
    return tuple(
        _FieldCodec(
            field.name,
            {"src": "from", "dst": "to"}.get(field.name, field.name),
            field.name in _OPTIONAL_FIELDS,
            _FIELD_DECODERS[field.name],
        )
        for field in attrs.fields(cls)
    )


#: Message class -> its wire name and fields, computed once.
_CODECS: dict[type, tuple[str, tuple[_FieldCodec, ...]]] = {
    cls: (name, _field_codecs(cls)) for cls, name in _TYPE_NAMES.items()
}
_CODECS_BY_NAME: dict[str, tuple[type, tuple[_FieldCodec, ...]]] = {
    name: (cls, fields) for cls, (name, fields) in _CODECS.items()
}


# --- validation helpers -----------------------------------------------------


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _uint(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or not _is_uint(value):
        raise MessageDecodeError(f"{key!r} must be a non-negative integer")
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageDecodeError(f"{what} must be a JSON object")
    return value
