"""The corpus ragloop knows: chunks loaded from JSONL, upserted by id, changes detected by text hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.errors import CorpusError, RagloopError
from daemon.store.db import CORPUS_CHANGED, Chunk, put_state_in, utcnow, write_tx

log = structlog.get_logger(__name__)
chunks = Chunk.__table__


@dataclass
class CorpusReport:
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    restored: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_corpus(engine: Engine, path: str | Path, *, merge: bool = False) -> CorpusReport:
    """Upsert the chunks of a JSONL file (``{"id", "text", "doc"?, "metadata"?}`` per line).

    The file is validated whole before anything is written, and written in one transaction: a bad
    line means nothing is loaded.

    Args:
        merge: when False (default) the file is the whole corpus, and stored chunks absent from it
            are marked removed (kept, since pairs refer to them). When True, absent chunks are left alone.

    Raises:
        CorpusError: listing every bad line with its number.
        RagloopError: the file cannot be read.
    """
    try:
        records = _read_records(Path(path))
    except OSError as exc:
        raise RagloopError(f"cannot read the corpus file {path}: {exc.strerror}; pass the path of a JSONL file "
                           "of chunks (see docs/log-format.md, Corpus format)") from None
    report = upsert_chunks(engine, records, mark_missing_removed=not merge)
    log.info("corpus.load", file=str(path), **report.as_dict())
    return report


def _read_records(path: Path) -> list[dict[str, Any]]:
    problems: list[tuple[int, str]] = []
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with path.open("rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = _parse_chunk_line(line)
            except ValueError as exc:
                problems.append((n, str(exc)))
                continue
            if rec["id"] in seen:
                problems.append((n, f'duplicate id "{rec["id"]}" (first on line {seen[rec["id"]]})'))
                continue
            seen[rec["id"]] = n
            records.append(rec)
    if problems:
        raise CorpusError(str(path), problems)
    return records


def _parse_chunk_line(line: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object with id and text")
    for key in ("id", "text"):
        if key not in obj:
            raise ValueError(f'missing field "{key}"')
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise ValueError(f'field "{key}" must be a non-empty string')
    if obj.get("doc") is not None and not isinstance(obj["doc"], str):
        raise ValueError('field "doc" must be a string')
    if obj.get("metadata") is not None and not isinstance(obj["metadata"], dict):
        raise ValueError('field "metadata" must be a JSON object')
    return {"id": obj["id"], "text": obj["text"], "doc": obj.get("doc"), "metadata": obj.get("metadata")}


def upsert_chunks(engine: Engine, records: list[dict[str, Any]], *, mark_missing_removed: bool) -> CorpusReport:
    """Insert new chunks, update changed ones, and report what happened, in one transaction."""
    now = utcnow()
    report = CorpusReport()
    with write_tx(engine) as conn:
        existing = {
            row.id: (row.text_hash, row.removed_at)
            for row in conn.execute(sa.select(chunks.c.id, chunks.c.text_hash, chunks.c.removed_at))
        }
        inserts, updates = [], []
        for rec in records:
            h = text_hash(rec["text"])
            row = {"id": rec["id"], "text": rec["text"], "text_hash": h, "doc": rec["doc"], "metadata": rec["metadata"]}
            old = existing.get(rec["id"])
            if old is None:
                inserts.append({**row, "first_seen": now, "last_seen": now, "removed_at": None})
                report.added += 1
                continue
            report.changed += old[0] != h
            report.unchanged += old[0] == h
            report.restored += old[1] is not None
            updates.append({**row, "b_id": rec["id"], "last_seen": now, "removed_at": None})
        if inserts:
            conn.execute(chunks.insert(), inserts)
        if updates:
            stmt = chunks.update().where(chunks.c.id == sa.bindparam("b_id"))
            conn.execute(stmt, [{k: v for k, v in u.items() if k != "id"} for u in updates])
        if mark_missing_removed:
            keep = {r["id"] for r in records}
            gone = [cid for cid, (_, removed) in existing.items() if removed is None and cid not in keep]
            for i in range(0, len(gone), 500):
                conn.execute(chunks.update().where(chunks.c.id.in_(gone[i : i + 500])).values(removed_at=now))
            report.removed = len(gone)
        if report.added or report.changed or report.removed or report.restored:
            # the serving collection built before this is stale: the daemon re-indexes it (refresh_serving_index)
            put_state_in(conn, CORPUS_CHANGED, {"at": now.isoformat(), **report.as_dict()})
    return report


def known_chunk_ids(conn: sa.Connection) -> set[str]:
    """Ids of chunks currently in the corpus (not removed)."""
    return set(conn.scalars(sa.select(chunks.c.id).where(chunks.c.removed_at.is_(None))))
