"""The label join: a label line completes the unlabeled retrieval logged earlier with its request id.

Production often learns which chunk answers a question after it has answered (a click, a thumbs-down with the
document the user finally found, a support agent, a judge). It logs the retrieval without ``expected_ids``
and, later, a label line with the same ``request_id`` (daemon/data/logline.py). Both are stored as they are
read, in whichever order and from whichever files they come; `join` then completes each waiting label's
retrieval (the most recent unlabeled event with that request id; a second label for the same request waits,
and is quarantined after the wait) in one transaction per chunk:

- the event becomes a hit or a miss against what production retrieved then (its rank in ``retrieved_ids``);
- its hour's count moves from "unlabeled" to that kind;
- its training pairs are upserted, as if the line had carried the label;
- the label records the event it completed (``event_id``), which also marks it done.

Each step is guarded (the event must still be unlabeled, the label still waiting), so a label is applied
once whenever the process dies and however many processes join. A stored unlabeled event never has pairs of
its own: its raw line has no ``expected_ids``, so recovering its batch's pending pairs adds nothing for it.

`sweep` quarantines labels whose retrieval has not been read ``ingest.label_wait_s`` after the label was,
with the reason; `ragloop quarantine retry` stores such a label again.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.data.logline import UNLABELED, Event, best_rank, classify, ts_text
from daemon.data.pairs import PairBatch, QueryKeys, placeholder, upsert_rows
from daemon.errors import StoreError
from daemon.ingest.commit import count_sql
from daemon.store.db import FeedbackEvent, FeedbackLabel, Quarantine, utcnow, write_tx

log = structlog.get_logger(__name__)
labels_t, events_t, quarantine_t = FeedbackLabel.__table__, FeedbackEvent.__table__, Quarantine.__table__

JOIN_CHUNK = 1000


def waiting(conn: sa.Connection) -> bool:
    """Whether any label waits for its retrieval (the partial index answers)."""
    return conn.scalar(sa.select(labels_t.c.id).where(labels_t.c.event_id.is_(None)).limit(1)) is not None


def join(engine: Engine, settings: Settings, keys: QueryKeys) -> int:
    """Complete every unlabeled event whose label is stored. Returns the events completed.

    Walks the waiting labels (a partial index: labels already joined are not in it) in chunks, and finds
    each chunk's retrievals by request id (a partial index of unlabeled events): the cost follows the labels
    waiting, not the events stored.
    """
    with engine.connect() as conn:
        if not waiting(conn):
            return 0
    k, counts_sql, total, after = settings.ingest.k, count_sql(engine.dialect), 0, 0
    while True:
        with write_tx(engine) as conn:
            joined, after = _join_chunk(conn, k, keys, counts_sql, after)
        total += joined
        if after is None:
            break
    if total:
        log.info("ingest.labels_joined", events=total)
    return total


def _join_chunk(conn: sa.Connection, k: int, keys: QueryKeys, counts_sql: str, after: int) -> tuple[int, int | None]:
    """Join the next JOIN_CHUNK waiting labels (ids above ``after``) in the caller's transaction.

    Returns (events completed, the last label id looked at; None when no label is left).
    """
    pg = conn.dialect.name == "postgresql"
    q = (sa.select(labels_t.c.id, labels_t.c.request_id, labels_t.c.expected_ids)
         .where(labels_t.c.event_id.is_(None), labels_t.c.id > after).order_by(labels_t.c.id).limit(JOIN_CHUNK))
    # On PostgreSQL the rows are locked (another joiner skips them), so each update below finds its row as
    # selected; on SQLite the transaction holds the write lock from its start.
    labels = conn.execute(q.with_for_update(skip_locked=True) if pg else q).all()
    if not labels:
        return 0, None
    eq = (sa.select(events_t.c.id, events_t.c.request_id, events_t.c.ts, events_t.c.query, events_t.c.raw)
          .where(events_t.c.kind == UNLABELED, events_t.c.request_id.in_({r.request_id for r in labels}))
          .order_by(events_t.c.id.desc()))
    by_request: dict[str, list[Any]] = {}
    for e in conn.execute(eq.with_for_update(skip_locked=True) if pg else eq):
        by_request.setdefault(e.request_id, []).append(e)  # most recent first
    now, pairs = ts_text(utcnow()), PairBatch(keys)
    counts, event_updates, label_updates = [], [], []
    for label in labels:
        events = by_request.get(label.request_id)
        if not events:
            continue  # its retrieval has not been read (or a first label took it): it waits
        e = events.pop(0)  # the most recent unlabeled retrieval with this request id
        expected, retrieved = label.expected_ids, e.raw.get("retrieved_ids") or []
        rank = best_rank(expected, retrieved)
        kind = classify(rank, k)
        event_updates.append((kind, rank, e.id))
        label_updates.append((e.id, now, label.id))
        ts = ts_text(e.ts)
        counts += [(ts[:13], UNLABELED, -1), (ts[:13], kind, 1)]
        pairs.add_event(Event(ts, e.query, expected, retrieved, None, None, None, kind, rank))
    if event_updates:
        mark, at = placeholder(conn.dialect), placeholder(conn.dialect, "time")
        # Driver-level executemany: per-row SQLAlchemy updates made the join six times slower than reading.
        n_events = conn.exec_driver_sql(
            f"UPDATE feedback_events SET kind = {mark}, rank = {mark} WHERE id = {mark} AND kind = '{UNLABELED}'",
            event_updates).rowcount
        n_labels = conn.exec_driver_sql(
            f"UPDATE feedback_labels SET event_id = {mark}, joined_at = {at} WHERE id = {mark} AND event_id IS NULL",
            label_updates).rowcount
        if n_events != len(event_updates) or n_labels != len(label_updates):  # rolled back by the caller
            raise StoreError(f"the label join found {n_events} of {len(event_updates)} events and {n_labels} of "
                             f"{len(label_updates)} labels as it had selected them")
        conn.exec_driver_sql(counts_sql, counts)
        upsert_rows(conn, pairs.rows())
    return len(event_updates), labels[-1].id if len(labels) == JOIN_CHUNK else None


def sweep(engine: Engine, settings: Settings) -> int:
    """Quarantine labels that waited longer than ``ingest.label_wait_s`` for their retrieval. Returns how many."""
    wait = settings.ingest.label_wait_s
    cutoff = utcnow() - timedelta(seconds=wait)
    stale = sa.and_(labels_t.c.event_id.is_(None), labels_t.c.created_at < cutoff)
    with engine.connect() as conn:
        if conn.scalar(sa.select(labels_t.c.id).where(stale).limit(1)) is None:
            return 0
    moved = 0
    while True:
        with write_tx(engine) as conn:
            q = sa.select(labels_t).where(stale).order_by(labels_t.c.id).limit(JOIN_CHUNK)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rows = conn.execute(q).mappings().all()
            if not rows:
                break
            now = utcnow()
            conn.execute(quarantine_t.insert(), [dict(
                file=r["file"], line_no=r["line_no"], offset=r["offset"], created_at=now,
                raw=json.dumps(r["raw"], ensure_ascii=False, separators=(",", ":")),
                reason=(f"label for request_id {r['request_id']!r}: no unlabeled retrieval with this request_id "
                        f"was read within ingest.label_wait_s={wait:g} s (an unknown request, or one already "
                        "labelled); `ragloop quarantine retry` stores it again"),
            ) for r in rows])
            conn.execute(labels_t.delete().where(labels_t.c.id.in_([r["id"] for r in rows])))
        moved += len(rows)
        if len(rows) < JOIN_CHUNK:
            break
    log.warning("ingest.labels_quarantined", labels=moved, label_wait_s=wait)
    return moved

