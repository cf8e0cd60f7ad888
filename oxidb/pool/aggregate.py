"""
Splitting an aggregation pipeline for scatter-gather, sans-IO: a shard part
every shard runs over its own documents, and a merge part the router runs
over the shards' concatenated outputs with C{aggregate_docs}. Running the
merge part over the shard parts' outputs gives the same documents as the
whole pipeline over all documents (up to the order of equal sort keys).

The shard part is the longest prefix of per-document stages (C{$match},
C{$project}, C{$addFields}, C{$set}, C{$unset}, C{$unwind},
C{$replaceRoot}, C{$replaceWith}); the first other stage starts the merge
part, which holds it and everything after it. Some of those stages also
send a partial step to the shards, so that less travels:

 - C{$group} whose accumulators are all C{$sum}, C{$min}, C{$max} or
   C{$count}: each shard groups its documents; the merge groups the partial
   groups again (sums summed, extremes of extremes).
 - C{$sort} followed by C{$limit} (with C{$skip} between): each shard keeps
   its first C{skip + limit} in order.
 - C{$limit} (and C{$skip} + C{$limit}): each shard keeps C{skip + limit}.
 - C{$count}: each shard counts; the merge sums the counts.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["SplitPipeline", "split_pipeline"]

STREAMING = frozenset({"$match", "$project", "$addFields", "$set", "$unset", "$unwind", "$replaceRoot", "$replaceWith"})

_COMBINE = {"$sum": "$sum", "$min": "$min", "$max": "$max", "$count": "$sum"}


@attrs.frozen
class SplitPipeline:
    """C{shard}: what every shard runs; C{merge}: what runs over their outputs (empty: concatenate)."""

    shard: list[dict[str, Any]]
    merge: list[dict[str, Any]]


def _name(stage: Any) -> str | None:
    if isinstance(stage, dict) and len(stage) == 1:
        name = next(iter(stage))
        return name if isinstance(name, str) else None
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def split_pipeline(pipeline: list[Any]) -> SplitPipeline:
    """
    Split C{pipeline} (a list; stages the engine would refuse are left for
    it to refuse, in the shard part or the merge part).
    """
    position = 0
    while position < len(pipeline) and _name(pipeline[position]) in STREAMING:
        position += 1
    shard: list[dict[str, Any]] = list(pipeline[:position])
    rest: list[dict[str, Any]] = list(pipeline[position:])
    if not rest:
        return SplitPipeline(shard, [])
    first = rest[0]
    name = _name(first)
    if name == "$group":
        partial = _partial_group(first["$group"])
        if partial is not None:
            shard_group, merge_group = partial
            return SplitPipeline([*shard, {"$group": shard_group}], [{"$group": merge_group}, *rest[1:]])
    elif name == "$count" and isinstance(first["$count"], str):
        field = first["$count"]
        merge: list[dict[str, Any]] = [
            {"$group": {"_id": None, field: {"$sum": f"${field}"}}},
            {"$project": {"_id": 0, field: 1}},
        ]
        return SplitPipeline([*shard, first], [*merge, *rest[1:]])
    elif name in ("$sort", "$skip", "$limit"):
        top = _top(rest)
        if top is not None:
            return SplitPipeline([*shard, *top], rest)
    return SplitPipeline(shard, rest)


def _top(rest: list[Any]) -> list[dict[str, Any]] | None:
    """For C{[$sort?, $skip?, $limit, ...]}: the shard's own C{[$sort?, $limit skip+limit]}."""
    out: list[dict[str, Any]] = []
    position = 0
    if _name(rest[0]) == "$sort":
        out.append(rest[0])
        position = 1
    skip = 0
    if position < len(rest) and _name(rest[position]) == "$skip":
        value = _count(rest[position]["$skip"])
        if value is None:
            return None
        skip = value
        position += 1
    if position < len(rest) and _name(rest[position]) == "$limit":
        limit = _count(rest[position]["$limit"])
        if limit is None or limit == 0:
            return None
        return [*out, {"$limit": skip + limit}]
    return None


def _partial_group(spec: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The shard's and the merge's C{$group} specs, or C{None} when an accumulator cannot be split."""
    if not isinstance(spec, dict) or "_id" not in spec:
        return None
    shard: dict[str, Any] = {"_id": spec["_id"]}
    merge: dict[str, Any] = {"_id": "$_id"}
    for field, accumulator in spec.items():
        if field == "_id":
            continue
        if not isinstance(field, str) or field.startswith("$") or "." in field:
            return None
        if not isinstance(accumulator, dict) or len(accumulator) != 1:
            return None
        ((op, argument),) = accumulator.items()
        combine = _COMBINE.get(op)
        if combine is None:
            return None
        shard[field] = {op: argument}
        merge[field] = {combine: f"${field}"}
    return shard, merge
