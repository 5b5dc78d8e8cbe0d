"""Feedback log format v1: one JSON object per line, validated into an `Event`.

Schema: ``daemon/data/schemas/feedback-v1.schema.json``. Validation is not done with a JSON Schema library
because it runs once per production log line and ingest throughput is a target: a typed msgspec decode
does the types in C, hand-written checks the values; ``tests/test_logline.py`` checks that this agrees
with the schema, and that the typed path agrees with the generic one that explains failures.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgspec
import orjson

from daemon.errors import LogLineError

UNKNOWN_ID = "unknown expected id"


class Event(NamedTuple):
    """One validated v1 log line."""

    ts: str  # UTC as "YYYY-MM-DD HH:MM:SS.ffffff": SQLAlchemy's SQLite format, sorts as time does
    query: str
    expected_ids: list[str]
    retrieved_ids: list[str]
    retrieved_scores: list[float] | None
    request_id: str | None
    source: str | None
    kind: str  # "miss" | "hit"
    rank: int | None  # 1-based rank of the best expected id in retrieved_ids, None if absent


class Limits(NamedTuple):
    """The per-line checks from ``[ingest]``."""

    k: int = 10
    max_query_chars: int = 4096
    max_ids: int = 1000
    known_ids: frozenset[str] | set[str] | None = None  # None: do not check ids against the corpus


class _Wire(msgspec.Struct, gc=False):
    """The v1 field types, for the typed fast path. Unknown fields are allowed (kept in ``raw``)."""

    ts: str
    query: str
    expected_ids: list[str]
    retrieved_ids: list[str]
    retrieved_scores: list[int | float] | None = None
    request_id: str | None = None
    source: str | None = None


_decode_wire = msgspec.json.Decoder(_Wire).decode
_STR_ONLY = {str}
_NUMBERS = {int, float}
_NONE_OR_STR = {type(None), str}


def parse_event(line: bytes | str, limits: Limits) -> Event:
    """Validate one v1 log line and classify it as a miss or a hit.

    Decoding and type checks happen in one typed pass (msgspec); a line that fails them is decoded again
    generically to say exactly which field is wrong. The value checks are the same for both paths.

    Raises:
        LogLineError: with a reason that says which field is wrong and how.
    """
    try:
        w = _decode_wire(line)
    except msgspec.MsgspecError:
        return _parse_untyped(line, limits)
    return _event(w.ts, w.query, w.expected_ids, w.retrieved_ids, w.retrieved_scores, w.request_id, w.source, limits)


def _parse_untyped(line: bytes | str, limits: Limits) -> Event:
    """The reference path: generic JSON, then a type check per field with a message for each."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LogLineError(f"not valid JSON ({exc})") from None
    if type(obj) is not dict:
        raise LogLineError(f"expected a JSON object, got {type(obj).__name__}")
    ts = obj.get("ts")
    if ts is None:
        raise LogLineError('missing field "ts"')
    query = obj.get("query")
    if type(query) is not str:
        raise LogLineError('field "query" must be a non-empty string' if "query" in obj else 'missing field "query"')
    expected = _typed_ids(obj, "expected_ids")
    retrieved = _typed_ids(obj, "retrieved_ids")
    scores = obj.get("retrieved_scores")
    if scores is not None and (type(scores) is not list or not set(map(type, scores)) <= _NUMBERS):
        raise LogLineError(_SCORES_MSG)
    request_id, source = obj.get("request_id"), obj.get("source")
    for key, v in (("request_id", request_id), ("source", source)):
        if type(v) not in _NONE_OR_STR:
            raise LogLineError(f'field "{key}" must be a string without NUL characters')
    return _event(ts, query, expected, retrieved, scores, request_id, source, limits)


_SCORES_MSG = 'field "retrieved_scores" must be a list of numbers as long as "retrieved_ids"'


def _typed_ids(obj: dict[str, Any], key: str) -> list[str]:
    v = obj.get(key)
    if v is None:
        raise LogLineError(f'missing field "{key}"')
    if type(v) is not list or not set(map(type, v)) <= _STR_ONLY:
        raise LogLineError(f'field "{key}" must be a list of non-empty strings (chunk ids)')
    return v


def _event(ts: Any, query: str, expected: list[str], retrieved: list[str], scores: list | None,
           request_id: str | None, source: str | None, limits: Limits) -> Event:
    """The value checks on typed fields, then the classification."""
    ts_stored = _parse_ts(ts)
    max_ids = limits.max_ids
    # One expression for the common case of a good line (this runs for every production log line);
    # `_explain` finds which check failed, in the documented order.
    if (not query or len(query) > limits.max_query_chars or "\x00" in query or query.isspace()
            or not expected or len(expected) > max_ids or "" in expected or len(retrieved) > max_ids or "" in retrieved
            or (scores is not None and len(scores) != len(retrieved))
            or (request_id is not None and "\x00" in request_id) or (source is not None and "\x00" in source)):
        _explain(query, expected, retrieved, scores, request_id, source, limits)
    known = limits.known_ids
    if known is not None and not known.issuperset(expected):
        unknown = next(i for i in expected if i not in known)
        raise LogLineError(f"{UNKNOWN_ID} {unknown!r} (load it with `ragloop corpus load`, then "
                           "`ragloop quarantine retry`)")
    rank = best_rank(expected, retrieved)
    kind = "hit" if rank is not None and rank <= limits.k else "miss"
    return Event(ts_stored, query, expected, retrieved, scores, request_id, source, kind, rank)


def _explain(query: str, expected: list[str], retrieved: list[str], scores: list | None,
             request_id: str | None, source: str | None, limits: Limits) -> None:
    """Raise the reason of the first value check that fails."""
    _check_query(query, limits.max_query_chars)
    _check_ids("expected_ids", expected, limits.max_ids, min_len=1)
    _check_ids("retrieved_ids", retrieved, limits.max_ids, min_len=0)
    if scores is not None and len(scores) != len(retrieved):
        raise LogLineError(_SCORES_MSG)
    for key, v in (("request_id", request_id), ("source", source)):
        if v is not None and "\x00" in v:
            raise LogLineError(f'field "{key}" must be a string without NUL characters')
    raise AssertionError("a value check failed without a reason")  # the two lists of checks disagree


def _check_query(query: str, max_chars: int) -> None:
    if not query or query.isspace():
        raise LogLineError('field "query" must be a non-empty string')
    if len(query) > max_chars:
        raise LogLineError(f'field "query" is {len(query)} chars, over ingest.max_query_chars={max_chars}')
    if "\x00" in query:
        raise LogLineError('field "query" contains a NUL character (\\u0000)')


def _parse_ts(v: Any) -> str:
    """``v`` is present (both paths check that first); any other type is reported here."""
    if type(v) is not str:
        raise LogLineError('field "ts" must be an RFC 3339 string, e.g. "2026-11-21T10:00:00Z"')
    try:
        ts = datetime.fromisoformat(v)
    except ValueError:
        raise LogLineError(f'field "ts" is not RFC 3339: {v[:40]!r}; write e.g. "2026-11-21T10:00:00Z"') from None
    if ts.tzinfo is None:
        raise LogLineError('field "ts" has no UTC offset; write e.g. "2026-11-21T10:00:00Z"')
    # Fast paths for the common UTC spellings; the general case converts through datetime.
    if v[-1] == "Z" and v[10] in "Tt ":
        if len(v) == 20:
            return f"{v[:10]} {v[11:19]}.000000"
        if len(v) == 27:
            return f"{v[:10]} {v[11:26]}"
    return ts_text(ts)


def ts_text(ts: datetime) -> str:
    """The canonical stored form of a time: naive UTC text with microseconds."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts.isoformat(" ", "microseconds")


def _check_ids(key: str, v: list[str], max_ids: int, min_len: int) -> None:
    if "" in v:
        raise LogLineError(f'field "{key}" must be a list of non-empty strings (chunk ids)')
    if len(v) < min_len:
        raise LogLineError(f'field "{key}" must list at least {min_len} chunk id')
    if len(v) > max_ids:
        raise LogLineError(f'field "{key}" has {len(v)} ids, over ingest.max_ids={max_ids}')


def best_rank(expected: list[str], retrieved: list[str]) -> int | None:
    """1-based position of the first expected id in ``retrieved``, or None."""
    if len(expected) == 1:
        return retrieved.index(expected[0]) + 1 if expected[0] in retrieved else None
    want = set(expected)
    for i, cid in enumerate(retrieved):
        if cid in want:
            return i + 1
    return None
