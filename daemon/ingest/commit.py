"""The commit protocol: each batch and the cursor's advance over it in one transaction, exactly once.

The cursor moves by compare-and-swap on the offset the batch started at, so a crash at any instant neither
loses nor duplicates a line, and two ingesters never both commit the same lines. A batch's pairs are either
pending (a pending_pairs row) or folded together with its window's (daemon/ingest/pending.py).
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.engine import Engine

from daemon.data.pairs import placeholders, quote
from daemon.ingest import pending
from daemon.ingest.batch import EVENT_COLS, LABEL_COLS, Prepared
from daemon.store.db import IngestCursor, Quarantine, utcnow, write_tx

log = structlog.get_logger(__name__)
cursors_t = IngestCursor.__table__
quarantine_t = Quarantine.__table__


class Committer:
    """Commits the prepared batches of one reader of one file (its ``cursor``; the file's ``size`` when read)."""

    def __init__(self, engine: Engine, cursor: dict[str, Any], size: int):
        self.engine, self.cursor, self.size = engine, cursor, size
        self.events_sql, self.counts_sql = insert_events_sql(engine.dialect), count_sql(engine.dialect)
        self.labels_sql = insert_labels_sql(engine.dialect)

    def __call__(self, p: Prepared) -> dict[str, int] | None:
        """Write a batch and advance the cursor over it in one transaction, with its pairs either pending
        or folded together with its window's.

        Returns:
            The batch's summary, or None if another ingester moved the cursor (nothing written).
        """
        try:
            summary, pending_id = self._commit_tx(p)
        except pending.FoldConflict as exc:
            # Another process recovered some of this window's batches from their pending rows, and the
            # window's merged pairs went with the rolled-back fold. Commit this batch as pending, outside any
            # window: recovery folds it with the window's other batches.
            log.warning("ingest.fold_conflict", file=self.cursor["path"], error=str(exc))
            summary, _ = self._commit_tx(p._replace(fold_rows=None, fold_ids=[]))
            return summary
        if pending_id is not None:
            p.window.pending.append(pending_id)
        return summary

    def _commit_tx(self, p: Prepared) -> tuple[dict[str, int] | None, int | None]:
        """One transaction of ``__call__``. Returns (summary or None if the cursor moved, the pending id)."""
        if not p.lines and not p.fold_ids and not p.fold_rows:
            return p.summary(), None  # a reader's last turn with nothing left to fold
        pending_id = None
        with write_tx(self.engine) as conn:
            if p.lines:  # a line-less batch only folds: the cursor is not its to check or move
                moved = conn.execute(
                    cursors_t.update()
                    .where(cursors_t.c.id == self.cursor["id"], cursors_t.c.offset == p.start_offset)
                    .values(offset=p.end_offset, line_no=p.end_line, size=self.size, updated_at=utcnow())
                ).rowcount
                if moved != 1:
                    conn.rollback()
                    log.warning("ingest.cursor_moved", file=self.cursor["path"], expected_offset=p.start_offset)
                    return None, None
            if p.fold_rows is not None:
                pending.fold(conn, p.fold_rows, p.fold_ids)  # first: a conflict rolls back before any write
            # Driver-level executemany on rows serialized by the reader: SQLAlchemy's per-value
            # processing (JSON, datetime) cost more than parsing, and ingest throughput is a target.
            if p.event_rows:
                first_id = pending.next_event_id(conn) if p.fold_rows is None else None  # None: folded above
                conn.exec_driver_sql(self.events_sql, p.event_rows)
                if first_id is not None:
                    pending_id = pending.record(conn, self.cursor["id"], first_id, p.start_offset, p.end_offset)
            if p.label_rows:
                conn.exec_driver_sql(self.labels_sql, p.label_rows)
            if p.hour_counts:
                conn.exec_driver_sql(self.counts_sql, p.hour_counts)
            if p.bad_rows:
                conn.execute(quarantine_t.insert(), p.bad_rows)
        if p.fold_rows is not None:
            log.debug("ingest.fold", file=self.cursor["path"], batches=len(p.fold_ids) + 1, pairs=len(p.fold_rows))
        return p.summary(), pending_id


def insert_events_sql(dialect) -> str:
    values = placeholders(dialect, EVENT_COLS, {"raw"}, {"ts"})
    return f"INSERT INTO feedback_events ({', '.join(map(quote, EVENT_COLS))}) VALUES ({values})"


def insert_labels_sql(dialect) -> str:
    values = placeholders(dialect, LABEL_COLS, {"raw", "expected_ids"}, {"ts", "created_at"})
    return f"INSERT INTO feedback_labels ({', '.join(map(quote, LABEL_COLS))}) VALUES ({values})"


def count_sql(dialect) -> str:
    values = placeholders(dialect, ("hour", "kind", "count"), set(), set())
    return (f"INSERT INTO event_counts (hour, kind, count) VALUES ({values}) "
            "ON CONFLICT (hour, kind) DO UPDATE SET count = event_counts.count + excluded.count")
