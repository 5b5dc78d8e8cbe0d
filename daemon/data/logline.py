"""Feedback log format v1: one JSON object per line, validated into an `Event` or a `Label`.

A line is one of three shapes (schema: ``daemon/data/schemas/feedback-v1.schema.json``):

- a retrieval event with its label (``expected_ids``): a hit or a miss;
- a retrieval event without ``expected_ids`` but with a ``request_id``: stored as "unlabeled" until
- a label: ``ts``, ``request_id`` and ``expected_ids`` without a ``query``, completes the retrieval with that
  request id into a hit or a miss whenever both are in the store (daemon/ingest/labels.py).

Validation is not done with a JSON Schema library because it runs once per production log line and ingest throughput is a target: a typed msgspec decode
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
    kind: str  # "miss" | "hit" | "unlabeled" (no expected_ids yet: a later label line completes it)
    rank: int | None  # 1-based rank of the best expected id in retrieved_ids, None if absent


class Label(NamedTuple):
    """A label line: the chunks that answer the retrieval logged earlier with ``request_id``."""

    ts: str
    request_id: str
    expected_ids: list[str]
    source: str | None


UNLABELED = "unlabeled"


class Limits(NamedTuple):
    """The per-line checks from ``[ingest]``."""

    k: int = 10
    max_query_chars: int = 4096
    max_ids: int = 1000
    known_ids: frozenset[str] | set[str] | None = None  # None: do not check ids against the corpus


class _Wire(msgspec.Struct, gc=False):
    """The v1 field types, for the typed fast path. Unknown fields are allowed (kept in ``raw``)."""

    ts: str
    query: str | msgspec.UnsetType = msgspec.UNSET  # absent: a label line
    expected_ids: list[str] | msgspec.UnsetType = msgspec.UNSET  # absent: labelled later
    retrieved_ids: list[str] | msgspec.UnsetType = msgspec.UNSET
    retrieved_scores: list[int | float] | None = None
    request_id: str | None = None
    source: str | None = None


_decode_wire = msgspec.json.Decoder(_Wire).decode
UNSET = msgspec.UNSET
_STR_ONLY = {str}
_NUMBERS = {int, float}
_NONE_OR_STR = {type(None), str}


def parse_event(line: bytes | str, limits: Limits) -> Event | Label:
    """Validate one v1 log line: a retrieval event (a miss, a hit, or unlabeled) or a label.

    Decoding and type checks happen in one typed pass (msgspec); a line that fails them is decoded again
    generically to say exactly which field is wrong. The value checks are the same for both paths.

    Raises:
        LogLineError: with a reason that says which field is wrong and how.
    """
    try:
        w = _decode_wire(line)
    except msgspec.MsgspecError:
        return _parse_untyped(line, limits)
    query, expected, retrieved = w.query, w.expected_ids, w.retrieved_ids
    if query is UNSET or expected is UNSET or retrieved is UNSET:
        return _shape(w.ts, None if query is UNSET else query, None if expected is UNSET else expected,
                      None if retrieved is UNSET else retrieved, w.retrieved_scores, w.request_id, w.source, limits)
    return _event(w.ts, query, expected, retrieved, w.retrieved_scores, w.request_id, w.source, limits)


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
    if type(query) is not str and "query" in obj:
        raise LogLineError('field "query" must be a non-empty string')
    expected = _typed_ids(obj, "expected_ids")
    retrieved = _typed_ids(obj, "retrieved_ids")
    scores = obj.get("retrieved_scores")
    if scores is not None and (type(scores) is not list or not set(map(type, scores)) <= _NUMBERS):
        raise LogLineError(_SCORES_MSG)
    request_id, source = obj.get("request_id"), obj.get("source")
    for key, v in (("request_id", request_id), ("source", source)):
        if type(v) not in _NONE_OR_STR:
            raise LogLineError(f'field "{key}" must be a string without NUL characters')
    if query is None or expected is None or retrieved is None:
        return _shape(ts, query, expected, retrieved, scores, request_id, source, limits)
    return _event(ts, query, expected, retrieved, scores, request_id, source, limits)


def _shape(ts: Any, query: str | None, expected: list[str] | None, retrieved: list[str] | None, scores: list | None,
           request_id: str | None, source: str | None, limits: Limits) -> Event | Label:
    """A line without one of query, expected_ids, retrieved_ids (typed already): a label, an unlabeled
    retrieval, or a line that misses a field."""
    if query is None:
        if request_id is None or expected is None:
            raise LogLineError('missing field "query" (a label line, which has none, needs "request_id" and '
                               '"expected_ids")')
        _check_request_id(request_id)
        ts_stored = _parse_ts(ts)
        _check_ids("expected_ids", expected, limits.max_ids, min_len=1)
        _check_known(expected, limits)
        _check_no_nul("source", source)
        return Label(ts_stored, request_id, expected, source)
    if retrieved is None:
        raise LogLineError('missing field "retrieved_ids"')
    if request_id is None:  # expected is None
        raise LogLineError('missing field "expected_ids" (or log a "request_id" and its label line later)')
    _check_request_id(request_id)
    return _event(ts, query, expected, retrieved, scores, request_id, source, limits)


def _check_no_nul(key: str, v: str | None) -> None:
    if v is not None and "\x00" in v:
        raise LogLineError(f'field "{key}" must be a string without NUL characters')


def _check_request_id(request_id: str) -> None:
    if not request_id or "\x00" in request_id:
        raise LogLineError('field "request_id" must be a non-empty string without NUL characters (it joins a '
                           'retrieval to its label)')


def _check_known(expected: list[str], limits: Limits) -> None:
    known = limits.known_ids
    if known is not None and not known.issuperset(expected):
        unknown = next(i for i in expected if i not in known)
        raise LogLineError(f"{UNKNOWN_ID} {unknown!r} (load it with `ragloop corpus load`, then "
                           "`ragloop quarantine retry`)")


_SCORES_MSG = 'field "retrieved_scores" must be a list of numbers as long as "retrieved_ids"'


def _typed_ids(obj: dict[str, Any], key: str) -> list[str] | None:
    """The field's ids, None when absent (the line's shape decides whether it may be)."""
    v = obj.get(key)
    if v is None and key not in obj:
        return None
    if type(v) is not list or not set(map(type, v)) <= _STR_ONLY:
        raise LogLineError(f'field "{key}" must be a list of non-empty strings (chunk ids)')
    return v


def _event(ts: Any, query: str, expected: list[str] | None, retrieved: list[str], scores: list | None,
           request_id: str | None, source: str | None, limits: Limits) -> Event:
    """The value checks on typed fields, then the classification (``expected`` None: unlabeled)."""
    ts_stored = _parse_ts(ts)
    if expected is None:
        _check_query(query, limits.max_query_chars)
        _check_ids("retrieved_ids", retrieved, limits.max_ids, min_len=0)
        if scores is not None and len(scores) != len(retrieved):
            raise LogLineError(_SCORES_MSG)
        _check_no_nul("source", source)
        return Event(ts_stored, query, [], retrieved, scores, request_id, source, UNLABELED, None)
    max_ids = limits.max_ids
    # One expression for the common case of a good line (this runs for every production log line);
    # `_explain` finds which check failed, in the documented order.
    if (not query or len(query) > limits.max_query_chars or "\x00" in query or query.isspace()
            or not expected or len(expected) > max_ids or "" in expected or len(retrieved) > max_ids or "" in retrieved
            or (scores is not None and len(scores) != len(retrieved))
            or (request_id is not None and "\x00" in request_id) or (source is not None and "\x00" in source)):
        _explain(query, expected, retrieved, scores, request_id, source, limits)
    _check_known(expected, limits)
    rank = best_rank(expected, retrieved)
    return Event(ts_stored, query, expected, retrieved, scores, request_id, source, classify(rank, limits.k), rank)


def classify(rank: int | None, k: int) -> str:
    """A hit when the best expected id ranked within the top ``k``, else a miss."""
    return "hit" if rank is not None and rank <= k else "miss"


def _explain(query: str, expected: list[str], retrieved: list[str], scores: list | None,
             request_id: str | None, source: str | None, limits: Limits) -> None:
    """Raise the reason of the first value check that fails."""
    _check_query(query, limits.max_query_chars)
    _check_ids("expected_ids", expected, limits.max_ids, min_len=1)
    _check_ids("retrieved_ids", retrieved, limits.max_ids, min_len=0)
    if scores is not None and len(scores) != len(retrieved):
        raise LogLineError(_SCORES_MSG)
    _check_no_nul("request_id", request_id)
    _check_no_nul("source", source)
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
