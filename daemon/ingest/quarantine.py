"""Quarantine: the log lines ingest could not use, kept with the reason, listed and retried on request."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.data.corpus import known_chunk_ids
from daemon.data.logline import Label, parse_event, ts_text
from daemon.data.pairs import PairBatch, QueryKeys
from daemon.errors import LogLineError
from daemon.ingest import labels
from daemon.ingest.batch import event_row, label_row
from daemon.ingest.commit import count_sql, insert_events_sql, insert_labels_sql
from daemon.ingest.reader import limits_from
from daemon.store.db import IngestCursor, Quarantine, utcnow, write_tx

log = structlog.get_logger(__name__)
cursors_t = IngestCursor.__table__
quarantine_t = Quarantine.__table__


def quarantined(engine: Engine, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` unresolved quarantined lines, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(quarantine_t).where(quarantine_t.c.resolved_at.is_(None))
                            .order_by(quarantine_t.c.id).limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def retry_quarantine(engine: Engine, settings: Settings, ids: list[int] | None = None) -> dict[str, int]:
    """Re-validate unresolved quarantined lines; the ones that now pass become events and pairs."""
    with engine.connect() as conn:
        limits = limits_from(settings, known_chunk_ids(conn))
    q = sa.select(quarantine_t).where(quarantine_t.c.resolved_at.is_(None))
    if ids:
        q = q.where(quarantine_t.c.id.in_(ids))
    resolved = still_bad = 0
    keys = QueryKeys(settings.gate.ingest_fraction())
    with write_tx(engine) as conn:
        for row in conn.execute(q.order_by(quarantine_t.c.id)).mappings().all():
            try:
                ev = parse_event(row["raw"], limits)
            except LogLineError as exc:
                conn.execute(quarantine_t.update().where(quarantine_t.c.id == row["id"]).values(reason=str(exc)))
                still_bad += 1
                continue
            cur_id = conn.scalar(sa.select(cursors_t.c.id).where(cursors_t.c.path == row["file"]).limit(1)) or 0
            if type(ev) is Label:  # waits for its retrieval again, from now
                conn.exec_driver_sql(insert_labels_sql(conn.dialect), [label_row(
                    ev, row["raw"], row["file"], row["offset"], row["line_no"], cur_id, ts_text(utcnow()))])
            else:
                conn.exec_driver_sql(insert_events_sql(conn.dialect),
                                     [event_row(ev, row["raw"], row["file"], row["offset"], row["line_no"], cur_id)])
                conn.exec_driver_sql(count_sql(conn.dialect), [(ev.ts[:13], ev.kind, 1)])
                pairs = PairBatch(keys)
                pairs.add_event(ev)
                pairs.write(conn)
            conn.execute(quarantine_t.update().where(quarantine_t.c.id == row["id"]).values(resolved_at=utcnow()))
            resolved += 1
    if resolved:
        labels.join(engine, settings, keys)
    log.info("quarantine.retry", resolved=resolved, still_bad=still_bad)
    return {"resolved": resolved, "still_bad": still_bad}
