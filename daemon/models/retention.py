"""Retention: model folders that no rollback needs are deleted, so a daemon that runs for months keeps its disk.

Every cycle may register two candidates (~90 MB each for MiniLM, over 1 GB for a large base). Kept, per kind:
what serves, the newest ``retention.keep_previous`` versions that served before (rollback goes to the last
one; a gated candidate that served until its refit replaced it is one of them), candidates still waiting for
a decision, rejected candidates (and, in stores from before 2026-12-07, "refitted" ones) for
``retention.keep_rejected_days`` so they can be inspected, and any version whose document vectors a kept
query adapter uses. The rest is deleted, its row marked ``deleted`` (the record of what it scored stays) and
logged. Only folders under ``<state_dir>/models`` are ever deleted: a configured base model is never touched.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.models.registry import KINDS, documents_version, model_path, set_status, versions_t
from daemon.store.db import utcnow

log = structlog.get_logger(__name__)
INSPECT = ("rejected", "refitted")  # kept for keep_rejected_days, then deleted ("refitted": older stores)


def apply_retention(engine: Engine, settings: Settings, now: datetime | None = None) -> list[dict[str, Any]]:
    """Delete the model folders retention does not keep. Returns what was deleted (kind, version, reason, MB)."""
    now = now or utcnow()
    deleted = []
    for kind in KINDS:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.select(versions_t).where(versions_t.c.kind == kind)
                                                  .order_by(versions_t.c.status_at.desc())).mappings()]
        for row, reason in _expired(rows, settings, now):
            freed = _delete_folder(Path(model_path(settings, row)), settings.models_dir)
            set_status(engine, kind, row["version"], "deleted")
            deleted.append({"kind": kind, "version": row["version"], "reason": reason, "freed_mb": freed})
            log.info("retention.deleted", kind=kind, version=row["version"], path=row["path"], reason=reason,
                     freed_mb=freed)
    return deleted


def _expired(rows: list[dict[str, Any]], settings: Settings, now: datetime) -> list[tuple[dict[str, Any], str]]:
    """(row, why) for each version of one kind (newest status change first) that retention lets go."""
    r = settings.retention
    previous = [x for x in rows if x["status"] == "retired"]
    kept = [x for x in rows if x["status"] in ("serving", "candidate")] + previous[:r.keep_previous]
    cutoff = now - timedelta(days=r.keep_rejected_days)
    kept += [x for x in rows if x["status"] in INSPECT and _aware(x["status_at"]) > cutoff]
    needed = {x["version"] for x in kept} | {documents_version(x) for x in kept}
    out = [(x, f"retired, beyond retention.keep_previous={r.keep_previous}") for x in previous[r.keep_previous:]]
    out += [(x, f"{x['status']} more than retention.keep_rejected_days={r.keep_rejected_days:g} ago")
            for x in rows if x["status"] in INSPECT and _aware(x["status_at"]) <= cutoff]
    return [(x, why) for x, why in out if x["version"] not in needed and _ours(Path(model_path(settings, x)), settings.models_dir)]


def _ours(path: Path, models_dir: Path) -> bool:
    """A folder ragloop wrote (under ``models_dir``); a configured base model or any other path is never ours."""
    try:
        path.resolve().relative_to(models_dir.resolve())
        return True
    except ValueError:
        return False


def _delete_folder(path: Path, models_dir: Path) -> float:
    """Remove ``path`` (under ``models_dir``); the MB freed."""
    if not _ours(path, models_dir) or not path.is_dir():
        return 0.0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    shutil.rmtree(path, ignore_errors=True)
    return round(size / 2**20, 1)


def _aware(ts: datetime) -> datetime:
    """SQLite returns naive UTC datetimes, PostgreSQL aware ones."""
    from datetime import timezone

    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)
