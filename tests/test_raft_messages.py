"""JSON shapes of Raft values and peer messages, and strict decoding."""

from __future__ import annotations

import attrs
import orjson
import pytest

from oxidb.raft.messages import (
    AppendEntriesRequest,
    AppendEntriesResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshotRequest,
    InstallSnapshotResponse,
    LogId,
    Membership,
    MessageDecodeError,
    ReadIndexRequest,
    ReadIndexResponse,
    SnapshotMeta,
    StoredMembership,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    decode_message,
    encode_message,
    message_to_json,
)

MEMBERS = Membership([{1, 2, 3}], {1: "h1:4445", 2: "h2:4445", 3: "h3:4445"})
META = SnapshotMeta(LogId(3, 1, 40), StoredMembership(LogId(1, 1, 1), MEMBERS), "3-1-40")

MESSAGES = [
    VoteRequest(4, 1, 2, LogId(3, 1, 9), pre_vote=True),
    VoteRequest(4, 1, 2, None, transfer=True),
    VoteResponse(4, 2, 1, True, pre_vote=False),
    AppendEntriesRequest(
        3,
        1,
        2,
        LogId(3, 1, 9),
        (
            Entry(LogId(3, 1, 10)),
            Entry(LogId(3, 1, 11), {"Insert": {"collection": "c", "document": {"a": [1, "x"]}}}, 1700000000123),
            Entry(LogId(3, 1, 12), MEMBERS),
        ),
        8,
    ),
    AppendEntriesRequest(3, 1, 2, None, (), 0),
    AppendEntriesResponse(3, 2, 1, True, 12),
    AppendEntriesResponse(3, 2, 1, False, 12, hint_index=7, hint_term=2),
    Heartbeat(3, 1, 2, 12, 5),
    HeartbeatResponse(3, 2, 1, 5),
    InstallSnapshotRequest(3, 1, 2, META, 0, b"\x00\xffdata", False),
    InstallSnapshotResponse(3, 2, 1, "3-1-40", 6, True),
    ReadIndexRequest(3, 2, 1, 77),
    ReadIndexResponse(3, 1, 2, 77, 12),
    ReadIndexResponse(3, 1, 2, 78, None),
    TimeoutNow(3, 1, 2),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_json(msg: object) -> None:
    data = encode_message(msg)  # type: ignore[arg-type]
    assert decode_message(data) == msg


def test_append_entries_shape() -> None:
    obj = message_to_json(MESSAGES[3])  # type: ignore[arg-type]
    assert obj["type"] == "append_entries"
    assert (obj["from"], obj["to"], obj["term"], obj["leader_commit"]) == (1, 2, 3, 8)
    assert obj["prev_log_id"] == {"leader_id": {"term": 3, "node_id": 1}, "index": 9}
    assert obj["entries"][0] == {"log_id": {"leader_id": {"term": 3, "node_id": 1}, "index": 10}, "payload": "Blank"}
    assert obj["entries"][1]["payload"] == {"Normal": {"Insert": {"collection": "c", "document": {"a": [1, "x"]}}}}
    assert obj["entries"][1]["ts"] == 1700000000123
    assert obj["entries"][2]["payload"] == {
        "Membership": {
            "configs": [[1, 2, 3]],
            "nodes": {"1": {"addr": "h1:4445"}, "2": {"addr": "h2:4445"}, "3": {"addr": "h3:4445"}},
        }
    }


def test_snapshot_chunks_are_base64() -> None:
    obj = message_to_json(MESSAGES[9])  # type: ignore[arg-type]
    assert obj["data"] == "AP9kYXRh"
    assert obj["meta"]["snapshot_id"] == "3-1-40"
    assert obj["meta"]["last_membership"]["log_id"]["index"] == 1


def test_log_id_display_and_membership_texts() -> None:
    assert LogId(2, 1, 7).display() == "T2-N1-7"
    joint = Membership([{1, 2, 3}, {1, 2}], MEMBERS.nodes)
    assert joint.is_joint and joint.voters == {1, 2, 3} and joint.learners == set()
    assert StoredMembership(None, MEMBERS).debug_text().startswith("StoredMembership { log_id: None, ")


def test_quorums_of_joint_configurations() -> None:
    joint = Membership([{1, 2, 3}, {3, 4, 5}], {i: "a" for i in range(1, 6)})
    assert not joint.is_quorum({1, 2, 3})  # a majority of the old set only
    assert joint.is_quorum({1, 3, 4})
    matched = {1: 9, 2: 9, 3: 5, 4: 2, 5: 1}
    assert joint.quorum_index(matched.__getitem__) == 2


def test_membership_needs_addresses_for_voters() -> None:
    with pytest.raises(ValueError, match="without an address"):
        Membership([{1, 4}], {1: "a"})
    with pytest.raises(ValueError, match="one or two"):
        Membership([], {})


BAD = [
    (b"not json", "invalid JSON"),
    (b"[]", "message must be a JSON object"),
    (b'{"type":"nope"}', "unknown message type"),
    (b'{"type":["vote_request"]}', "unknown message type"),
    (b'{"type":"timeout_now","term":1,"from":1}', "without 'to'"),
    (b'{"type":"timeout_now","term":-1,"from":1,"to":2}', "'term' must be a non-negative integer"),
    (b'{"type":"timeout_now","term":true,"from":1,"to":2}', "'term' must be a non-negative integer"),
    (b'{"type":"vote_response","term":1,"from":1,"to":2,"granted":1,"pre_vote":false}', "'granted' must be a boolean"),
    (
        b'{"type":"append_entries","term":1,"from":1,"to":2,"prev_log_id":null,"entries":{},"leader_commit":0}',
        "'entries' must be an array",
    ),
    (
        b'{"type":"append_entries","term":1,"from":1,"to":2,"prev_log_id":null,'
        b'"entries":[{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"payload":{"Normal":{}}}],"leader_commit":0}',
        "needs an integer 'ts'",
    ),
    (
        b'{"type":"append_entries","term":1,"from":1,"to":2,"prev_log_id":null,'
        b'"entries":[{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},"payload":{"Evil":1}}],"leader_commit":0}',
        "unknown entry payload",
    ),
    (
        b'{"type":"append_entries","term":1,"from":1,"to":2,"prev_log_id":{"index":1},"entries":[],"leader_commit":0}',
        "log id leader_id must be a JSON object",
    ),
    (
        b'{"type":"install_snapshot","term":1,"from":1,"to":2,"meta":' + orjson.dumps(META.to_json())
        + b',"offset":0,"data":"***","done":true}',
        "not valid base64",
    ),
    (
        b'{"type":"append_entries","term":1,"from":1,"to":2,"prev_log_id":null,'
        b'"entries":[{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},'
        b'"payload":{"Membership":{"configs":[[1,9]],"nodes":{"1":{"addr":"a"}}}}}],"leader_commit":0}',
        "voters without an address",
    ),
    (
        b'{"type":"append_entries","term":1,"from":1,"to":2,"prev_log_id":null,'
        b'"entries":[{"log_id":{"leader_id":{"term":1,"node_id":1},"index":1},'
        b'"payload":{"Membership":{"configs":[[1]],"nodes":{"x":{"addr":"a"}}}}}],"leader_commit":0}',
        "is not a number",
    ),
]


@pytest.mark.parametrize("data,error", BAD, ids=[e for _d, e in BAD])
def test_malformed_messages_are_rejected(data: bytes, error: str) -> None:
    with pytest.raises(MessageDecodeError, match=error):
        decode_message(data)


def test_identity_fields_travel_and_are_optional() -> None:
    from oxidb.raft.messages import AppendEntriesResponse, LogId, Refused, decode_message, encode_message

    msg = AppendEntriesResponse(3, 2, 1, True, 7, commit_id=LogId(3, 1, 6), cluster="c1", incarnation="i2")
    wire = orjson.loads(encode_message(msg))
    assert (wire["cluster"], wire["incarnation"], wire["commit_id"]["index"]) == ("c1", "i2", 6)
    back = decode_message(encode_message(msg))
    assert (back.cluster, back.incarnation, back.commit_id) == ("c1", "i2", LogId(3, 1, 6))  # type: ignore[union-attr]
    # A peer of an earlier version sends none of them: still a valid message.
    old = {k: v for k, v in wire.items() if k not in ("cluster", "incarnation", "commit_id")}
    decoded = decode_message(orjson.dumps(old))
    assert decoded == msg and decoded.incarnation is None
    refused = Refused(3, 1, 2, "node 2 answers as ...", cluster="c1", incarnation="i1")
    assert decode_message(encode_message(refused)) == refused
    with pytest.raises(ValueError, match="'incarnation' must be a string"):
        decode_message(orjson.dumps({**wire, "incarnation": 5}))


def test_membership_records_incarnations_and_cluster_id() -> None:
    from oxidb.raft.messages import Membership

    members = Membership([{1, 2}], {1: "a:1", 2: "b:2", 3: "c:3"}, {1: "i1", 3: "i3"}, "c1")
    assert members.to_json() == {
        "configs": [[1, 2]],
        "nodes": {
            "1": {"addr": "a:1", "incarnation": "i1"},
            "2": {"addr": "b:2"},
            "3": {"addr": "c:3", "incarnation": "i3"},
        },
        "cluster_id": "c1",
    }
    assert Membership.from_json(members.to_json()) == members
    # Upstream's debug text is unchanged (tooling treats it as opaque).
    assert "incarnation" not in members.debug_text()
    # The shape of earlier versions still loads.
    legacy = Membership.from_json({"configs": [[1]], "nodes": {"1": {"addr": "a:1"}}})
    assert legacy.incarnations == {} and legacy.cluster_id is None
    with pytest.raises(ValueError, match="not members"):
        Membership([{1}], {1: "a:1"}, {2: "i2"})


@pytest.mark.parametrize(
    "msg",
    [*MESSAGES, attrs.evolve(MESSAGES[3], cluster="c1", incarnation="i1")],  # type: ignore[misc]
    ids=lambda m: type(m).__name__,
)
def test_encoding_is_the_compact_json_of_the_json_shape(msg: object) -> None:
    # An append splices its entries' cached bytes: the result must be the same bytes.
    assert encode_message(msg) == orjson.dumps(message_to_json(msg))  # type: ignore[arg-type]


def test_the_fast_decoding_paths_keep_the_checks() -> None:
    entry = {"log_id": {"leader_id": {"term": 1, "node_id": 1}, "index": 1}, "payload": {"Normal": {}}, "ts": 5}
    assert Entry.from_json(entry) == Entry(LogId(1, 1, 1), {}, 5)
    for bad_ts in (True, -1, 1.5, None):
        with pytest.raises(MessageDecodeError, match="needs an integer 'ts'"):
            Entry.from_json({**entry, "ts": bad_ts})
    with pytest.raises(MessageDecodeError, match="normal payload must be a JSON object"):
        Entry.from_json({**entry, "payload": {"Normal": [1]}})
    for bad in (True, -1, 2.0):
        with pytest.raises(MessageDecodeError, match="must be a non-negative integer"):
            LogId.from_json({"leader_id": {"term": bad, "node_id": 1}, "index": 1})
        with pytest.raises(MessageDecodeError, match="must be a non-negative integer"):
            LogId.from_json({"leader_id": {"term": 1, "node_id": 1}, "index": bad})


def test_a_normal_entry_built_around_its_request_json_encodes_the_same() -> None:
    request = {"Insert": {"collection": "c", "doc": {"a": [1, "x", 2.5, None], "é": {"b": True}}}}
    seeded = Entry.normal(LogId(7, 2, 123456), request, 1700000000123, orjson.dumps(request))
    plain = Entry(LogId(7, 2, 123456), request, 1700000000123)
    assert seeded == plain
    assert seeded.encoded == plain.encoded == orjson.dumps(plain.to_json())
    assert Entry.from_json(orjson.loads(seeded.encoded)) == plain
    assert Entry.normal(LogId(1, 1, 1), request, 0).encoded == orjson.dumps(Entry(LogId(1, 1, 1), request, 0).to_json())


def test_a_decoded_normal_entry_keeps_the_encoding_it_arrived_in() -> None:
    plain = Entry(LogId(4, 1, 9), {"Insert": {"doc": {"x": [1.25, "é", None, True]}}}, 1700000000999)
    decoded = Entry.from_json(orjson.loads(plain.encoded))
    assert decoded == plain and decoded.encoded == plain.encoded
    # Anything beyond the entry's fields is not carried into its encoding.
    extra = Entry.from_json({**plain.to_json(), "x": 1})
    assert extra == plain and extra.encoded == plain.encoded
