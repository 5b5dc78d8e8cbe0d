"""Pending pairs: an ingest reader merges the training pairs of many batches and upserts each once.

Upserting a batch's pairs with the batch rewrote random pages of training_pairs on every commit; with
production's repeated questions that was half the cost of reading a backlog. So a reader (the inline
one, or each ingest worker) keeps a `Window`: the pairs of its batches merged in memory. Each batch
commits its events with a pending_pairs row naming them (cursor, event id range, offsets). When the
window covers ``ingest.pair_fold_lines`` lines, and at the reader's last batch, that batch's commit
also upserts the window's merged pairs and deletes the pending rows of the batches in it, in the same
transaction: a pair is counted once, whenever the process dies.

A reader that was killed or stopped leaves pending rows; `recover` re-reads the events they name from
the store and folds them. Every ingest pass starts and ends with it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.data.logline import Event, ts_text
from daemon.data.pairs import PairBatch, QueryKeys, upsert_rows
from daemon.errors import StoreError
from daemon.store.db import FeedbackEvent, PendingPairs, write_tx

log = structlog.get_logger(__name__)
pending_t = PendingPairs.__table__
events_t = FeedbackEvent.__table__

RECOVER_BATCHES_PER_TX = 20


class FoldConflict(Exception):
    """Another process folded some of this window's batches (from their pending rows) first."""


class Window:
    """One reader's pairs, merged over its committed batches until they are folded."""

    def __init__(self, keys: QueryKeys, fold_lines: int):
        self.keys, self.fold_lines = keys, fold_lines
        self.pairs = PairBatch(keys)
        self.lines = 0
        self.pending: list[int] = []  # pending_pairs ids of this window's committed batches

    def is_empty(self) -> bool:
        return not self.pending and not self.lines

    def due(self) -> bool:
        return self.lines >= self.fold_lines

    def take(self) -> tuple[list[tuple[Any, ...]], list[int]]:
        """The merged rows and the pending ids they cover; the window starts over (the caller folds)."""
        rows, ids = self.pairs.rows(), self.pending
        self.pairs, self.lines, self.pending = PairBatch(self.keys), 0, []
        return rows, ids


def record(conn: sa.Connection, cursor_id: int, first_event_id: int, start: int, end: int) -> int:
    """Name the batch just inserted (events with ids from ``first_event_id`` on) as pending."""
    last = conn.scalar(sa.select(sa.func.max(events_t.c.id)))
    return conn.execute(pending_t.insert().values(
        cursor_id=cursor_id, first_event_id=first_event_id, last_event_id=last, start_offset=start, end_offset=end,
    )).inserted_primary_key[0]


def next_event_id(conn: sa.Connection) -> int:
    """Event ids grow: the next batch's events have ids at least this (SQLite rowids; PostgreSQL serial)."""
    return (conn.scalar(sa.select(sa.func.max(events_t.c.id))) or 0) + 1


def fold(conn: sa.Connection, rows: list[tuple[Any, ...]], pending_ids: list[int]) -> None:
    """Upsert merged rows and delete the pending rows they cover, in the caller's transaction.

    Raises:
        FoldConflict: some pending rows were already gone (another process recovered them); the caller
            rolls back, so nothing is counted twice.
    """
    deleted = 0
    for part in _slices(pending_ids, 500):
        deleted += conn.execute(pending_t.delete().where(pending_t.c.id.in_(part))).rowcount
    if deleted != len(pending_ids):
        raise FoldConflict(f"{len(pending_ids) - deleted} of {len(pending_ids)} pending batches were folded elsewhere")
    upsert_rows(conn, rows)


def recover(engine: Engine, keys: QueryKeys) -> int:
    """Fold the pairs of every pending batch from its stored events (what a killed reader left).

    Returns:
        Batches recovered.
    """
    with engine.connect() as conn:  # every pass calls this twice; most find nothing, without the write lock
        if conn.scalar(sa.select(pending_t.c.id).limit(1)) is None:
            return 0
    done = 0
    while True:
        with write_tx(engine) as conn:
            # SKIP LOCKED: on PostgreSQL, batches another process is recovering are left to it.
            pending = conn.execute(sa.select(pending_t).order_by(pending_t.c.id).limit(RECOVER_BATCHES_PER_TX)
                                   .with_for_update(skip_locked=True)).mappings().all()
            if not pending:
                break
            pairs = PairBatch(keys)
            for p in pending:
                for e in conn.execute(sa.select(events_t.c.ts, events_t.c.query, events_t.c.raw, events_t.c.kind,
                                                events_t.c.rank)
                                      .where(events_t.c.id.between(p["first_event_id"], p["last_event_id"]),
                                             events_t.c.cursor_id == p["cursor_id"],
                                             events_t.c.offset >= p["start_offset"],
                                             events_t.c.offset < p["end_offset"])):
                    pairs.add_event(_stored_event(e))
            try:
                fold(conn, pairs.rows(), [p["id"] for p in pending])
            except FoldConflict as exc:  # only with another process deleting rows it had not locked
                raise StoreError(f"pending pairs changed during recovery: {exc}") from None
        done += len(pending)
        if len(pending) < RECOVER_BATCHES_PER_TX:
            break
    if done:
        log.info("ingest.pairs_recovered", batches=done)
    return done


def _stored_event(e: Any) -> Event:
    """The parts of a stored event a pair needs; kind and rank as decided when it was read.

    An event read without expected_ids has no pairs here, whether or not a label has completed it since:
    the join upserted the pairs of a completed one (daemon/ingest/labels.py).
    """
    raw = e.raw
    return Event(ts_text(e.ts), e.query, raw.get("expected_ids") or [], raw["retrieved_ids"], None, None, None, e.kind,
                 e.rank)


def _slices(seq: list, n: int):
    return (seq[i:i + n] for i in range(0, len(seq), n))
