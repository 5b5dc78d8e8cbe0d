"""Training pairs: query normalization, the train/held-out split, and the deduplicating upsert.

Shared by ingestion (failure and hit pairs) and synthesis (synthetic pairs).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from daemon.data.logline import ts_text

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
# Words that do not change what a question asks; dropped from the split key only (never from the
# stored query), so "How do I X?" and "how can i X" land on the same side of the split.
_STOP = frozenset(
    "a an the of to in on for and or is are was be do does did can could how what which why i my me "
    "you your it its this that with from by as at".split()
)
MAX_NEGATIVES = 20


# ASCII fast path of normalize_query: NFKC leaves ASCII as is, casefold is lower(), and [\W_] is every
# character but a letter or digit. Same result (tests/test_pairs.py checks), a quarter of the time.
_ASCII_NON_WORD = str.maketrans({chr(c): " " for c in range(128) if not chr(c).isalnum()})


def normalize_query(q: str) -> str:
    """Case-folded, Unicode-normalized, punctuation-free form used to deduplicate queries."""
    if q.isascii():
        return " ".join(q.lower().translate(_ASCII_NON_WORD).split())
    return " ".join(_NON_WORD.sub(" ", unicodedata.normalize("NFKC", q).casefold()).split())


def split_key(query_norm: str) -> str:
    """The key that decides the split: the sorted set of content words.

    Near-duplicates that differ only in word order, punctuation, case, repeated words or stop words
    share this key, so they are always on the same side of the split.
    """
    return " ".join(sorted(set(query_norm.split()) - _STOP)) or query_norm


def split_position(query_norm: str) -> float:
    """Where the query's split key hashes to in [0, 1): held out when below the held-out share."""
    return int.from_bytes(hashlib.blake2b(split_key(query_norm).encode(), digest_size=8).digest(), "big") / 2**64


def split_for(query_norm: str, heldout_fraction: float) -> str:
    """Stable assignment: the same key gives the same split on every machine and every run."""
    return "heldout" if split_position(query_norm) < heldout_fraction else "train"


class QueryKeys:
    """Memoized (normalized query, split) per raw query text; production traffic repeats itself."""

    def __init__(self, heldout_fraction: float, max_entries: int = 200_000):
        self.heldout_fraction, self.max_entries = heldout_fraction, max_entries
        self._cache: dict[str, tuple[str, str]] = {}
        self.heldout: set[str] = set()  # split keys of held-out queries, where a caller needs them

    def __call__(self, query: str) -> tuple[str, str]:
        hit = self._cache.get(query)
        if hit is None:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            qn = normalize_query(query)
            hit = self._cache[query] = (qn, split_for(qn, self.heldout_fraction))
        return hit


# Column order of the upsert parameters; a row is a tuple in this order.
PAIR_COLS = ("query", "query_norm", "chunk_id", "hard_negative_ids", "count", "miss_count", "hit_count",
             "last_rank", "split", "origin", "generator", "first_seen", "last_seen")
_COUNT, _MISS, _HIT, _RANK, _ORIGIN, _FIRST, _LAST, _NEG = 4, 5, 6, 7, 9, 11, 12, 3


class PairBatch:
    """Pairs from one batch of events, merged in memory, then upserted in one statement.

    Events are keyed by the raw query text on the hot path; normalization and the split are looked
    up once per distinct query when the rows are built.
    """

    def __init__(self, keys: QueryKeys):
        self.keys = keys
        # (raw query, chunk id) -> [count, misses, first ts, last ts, and of the last event: rank,
        # retrieved ids, expected ids]
        self._acc: dict[tuple[str, str], list[Any]] = {}
        self._extra: list[tuple[Any, ...]] = []

    def add_event(self, ev) -> None:
        miss = ev.kind == "miss"
        ts = ev.ts
        acc = self._acc
        for cid in ev.expected_ids:
            a = acc.get((ev.query, cid))
            if a is None:
                acc[(ev.query, cid)] = [1, int(miss), ts, ts, ev.rank, ev.retrieved_ids, ev.expected_ids]
                continue
            a[0] += 1
            a[1] += miss
            if ts < a[2]:
                a[2] = ts
            if ts >= a[3]:
                # Not the whole event: a window holds these for many batches, and its other fields
                # (scores, request id, ...) are garbage by then.
                a[3], a[4], a[5], a[6] = ts, ev.rank, ev.retrieved_ids, ev.expected_ids

    def add_pair(self, query: str, chunk_id: str, ts: datetime, *, origin: str, generator: str | None = None,
                 negatives: list[str] | None = None, split: str | None = None) -> None:
        """A pair that does not come from a logged event (e.g. a synthetic question); ``split`` overrides
        the hash-based assignment."""
        qn, hashed = self.keys(query)
        split = split or hashed
        t = ts_text(ts)
        self._extra.append((query, qn, chunk_id, orjson.dumps(negatives or []).decode(), 1, 0, 0, None, split,
                            origin, generator, t, t))

    def rows(self) -> list[tuple[Any, ...]]:
        """Upsert parameter rows (PAIR_COLS order), one per (normalized query, chunk)."""
        merged: dict[tuple[str, str], tuple[Any, ...]] = {}
        keys, dumps = self.keys, orjson.dumps
        for (query, cid), (count, misses, first, last, rank, retrieved, expected) in self._acc.items():
            qn, split = keys(query)
            negs = [c for c in retrieved if c not in expected][:MAX_NEGATIVES]
            row = (query, qn, cid, dumps(negs).decode(), count, misses, count - misses, rank, split,
                   "failure" if misses else "hit", None, first, last)
            old = merged.get((qn, cid))
            merged[(qn, cid)] = row if old is None else _merge(old, row)
        for row in self._extra:
            old = merged.get((row[1], row[2]))
            merged[(row[1], row[2])] = row if old is None else _merge(old, row)
        return list(merged.values())

    def write(self, conn: sa.Connection) -> None:
        upsert_rows(conn, self.rows())


def upsert_rows(conn: sa.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Upsert in key order: concurrent writers on PostgreSQL then lock rows in one order (no deadlock),
    and SQLite walks the unique index's pages in order."""
    if rows:
        rows.sort(key=lambda r: (r[1], r[2]))
        conn.exec_driver_sql(upsert_sql(conn.dialect), rows)


def _merge(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Two rows for the same (normalized query, chunk): the same rule as the SQL upsert below."""
    newer = b if b[_LAST] >= a[_LAST] else a
    out = list(a)
    out[_COUNT], out[_MISS], out[_HIT] = a[_COUNT] + b[_COUNT], a[_MISS] + b[_MISS], a[_HIT] + b[_HIT]
    out[_ORIGIN] = "failure" if "failure" in (a[_ORIGIN], b[_ORIGIN]) else a[_ORIGIN]
    out[_NEG], out[_RANK], out[_LAST] = newer[_NEG], newer[_RANK], newer[_LAST]
    out[_FIRST] = min(a[_FIRST], b[_FIRST])
    return tuple(out)


# Plain SQL that SQLite (>= 3.24) and PostgreSQL both accept.
_ON_CONFLICT = """ON CONFLICT (query_norm, chunk_id) DO UPDATE SET
  count = training_pairs.count + excluded.count,
  miss_count = training_pairs.miss_count + excluded.miss_count,
  hit_count = training_pairs.hit_count + excluded.hit_count,
  origin = CASE WHEN excluded.origin = 'failure' THEN 'failure' ELSE training_pairs.origin END,
  hard_negative_ids = CASE WHEN excluded.last_seen >= training_pairs.last_seen
      THEN excluded.hard_negative_ids ELSE training_pairs.hard_negative_ids END,
  last_rank = CASE WHEN excluded.last_seen >= training_pairs.last_seen
      THEN excluded.last_rank ELSE training_pairs.last_rank END,
  first_seen = CASE WHEN excluded.first_seen < training_pairs.first_seen
      THEN excluded.first_seen ELSE training_pairs.first_seen END,
  last_seen = CASE WHEN excluded.last_seen >= training_pairs.last_seen
      THEN excluded.last_seen ELSE training_pairs.last_seen END"""


def placeholder(dialect, kind: str = "") -> str:
    """One parameter of driver-level SQL. Rows carry JSON (``kind`` "json") and UTC times ("time") as text;
    SQLite stores them as is, PostgreSQL casts them to json and timestamptz."""
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    if dialect.name == "sqlite" or not kind:
        return mark
    return f"CAST({mark} AS JSON)" if kind == "json" else f"(CAST({mark} AS TIMESTAMP) AT TIME ZONE 'UTC')"


def placeholders(dialect, columns: tuple[str, ...], json_cols: set[str], time_cols: set[str]) -> str:
    """VALUES placeholders for driver-level SQL, one per column (see `placeholder`)."""
    return ", ".join(placeholder(dialect, "json" if c in json_cols else "time" if c in time_cols else "")
                     for c in columns)


def upsert_sql(dialect) -> str:
    """Driver-level upsert: SQLAlchemy's per-value processing dominated ingest time."""
    values = placeholders(dialect, PAIR_COLS, {"hard_negative_ids"}, {"first_seen", "last_seen"})
    return f"INSERT INTO training_pairs ({', '.join(map(quote, PAIR_COLS))}) VALUES ({values}) {_ON_CONFLICT}"


def quote(column: str) -> str:
    """Quoted identifier for hand-written SQL ("offset" is reserved in PostgreSQL)."""
    return f'"{column}"'
