"""Ingest: tail production feedback logs into events and training pairs, exactly once.

A file is identified by a fingerprint of its first line (which survives rename rotation and
compression to .gz) plus device+inode. The byte offset reached is committed in the same
transaction as the rows read before it, with a compare-and-swap on the old offset, so a crash at
any instant neither loses nor duplicates a line, and two ingesters never both commit the same lines.

Lines become batches in daemon/ingest/batch.py and are committed by daemon/ingest/commit.py. A large
backlog is read by forked workers (daemon/ingest/workers.py) that parse on every core and commit in turn:
batches still commit one at a time, in file order, each with its offset.

Training pairs are merged in memory over ``ingest.pair_fold_lines`` lines and upserted once per
(query, chunk); each batch commits a pending_pairs row until then (daemon/ingest/pending.py).
"""

from __future__ import annotations

import contextlib
import gc
import glob
import gzip
import hashlib
import os
import threading
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.data.corpus import known_chunk_ids
from daemon.data.logline import Limits
from daemon.data.pairs import QueryKeys
from daemon.ingest import pending
from daemon.ingest.batch import ReadSpec, batches
from daemon.ingest import labels
from daemon.ingest.commit import Committer
from daemon.ingest.workers import WorkerJob, run_workers
from daemon.store.db import IngestCursor, utcnow, write_tx

log = structlog.get_logger(__name__)
cursors_t = IngestCursor.__table__

FINGERPRINT_BYTES = 1024
# Below this much unread data the fork costs more than it saves.
PARALLEL_MIN_BYTES = 8 << 20


@dataclass
class IngestReport:
    files: int = 0
    lines: int = 0
    events: int = 0
    misses: int = 0
    hits: int = 0
    unlabeled: int = 0  # retrievals stored without a label (a later label line completes them)
    labels: int = 0  # label lines stored
    quarantined: int = 0
    bytes: int = 0
    skipped_files: list[str] = field(default_factory=list)

    def add(self, other: "IngestReport") -> None:
        for name in ("files", "lines", "events", "misses", "hits", "unlabeled", "labels", "quarantined", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped_files += other.skipped_files

    def add_batch(self, s: dict[str, int]) -> None:
        """Account for a committed batch (``Prepared.summary()``)."""
        self.bytes += s["end_offset"] - s["start_offset"]
        self.lines += s["lines"]
        self.events += s["misses"] + s["hits"] + s["unlabeled"]
        self.misses += s["misses"]
        self.hits += s["hits"]
        self.unlabeled += s["unlabeled"]
        self.labels += s["labels"]
        self.quarantined += s["quarantined"]

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "skipped_files"}
        labelled = self.misses + self.hits
        d["miss_rate"] = round(self.misses / labelled, 4) if labelled else None
        return d


def limits_from(settings: Settings, known_ids: set[str]) -> Limits:
    s = settings.ingest
    return Limits(s.k, s.max_query_chars, s.max_ids, known_ids if s.require_known_ids else None)


def ingest_once(engine: Engine, settings: Settings, files: list[str] | None = None,
                stop: threading.Event | None = None) -> IngestReport:
    """Read every new complete line of the configured logs (or of ``files``) into the store.

    ``stop``, when set, ends the pass after the batch being committed (a daemon shutting down).

    Returns:
        What was read, summed over files.
    """
    paths = files if files is not None else expand_globs(settings.ingest.paths)
    with engine.connect() as conn:
        limits = limits_from(settings, known_chunk_ids(conn))
    total = IngestReport()
    seen_fingerprints: set[str] = set()
    keys = QueryKeys(settings.gate.ingest_fraction())
    with _no_cyclic_gc():
        pending.recover(engine, keys)  # pairs a killed or stopped reader had not folded
        for path in paths:
            if stop is not None and stop.is_set():
                break
            total.add(_ingest_path(engine, settings, limits, path, seen_fingerprints, stop))
        pending.recover(engine, keys)
        labels.join(engine, settings, keys)  # labels read in this pass or earlier, whose retrieval is now in
        labels.sweep(engine, settings)
    # An idle pass every few seconds is not news: log it only when it read something.
    (log.info if total.lines or total.skipped_files else log.debug)("ingest.pass", **total.as_dict())
    return total


@contextlib.contextmanager
def _no_cyclic_gc():
    """Batches hold thousands of fresh containers; the cyclic GC rescanning them tripled the cost
    of a line. Ingest makes no reference cycles, so reference counting alone frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def expand_globs(patterns: list[str]) -> list[str]:
    """Files matching the patterns, oldest first, so a rotated file is finished before its successor."""
    found = {p for pat in patterns for p in glob.glob(pat) if os.path.isfile(p)}
    return sorted(found, key=lambda p: (_mtime(p), p))


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _ingest_path(engine: Engine, settings: Settings, limits: Limits, path: str, seen: set[str],
                 stop: threading.Event | None = None) -> IngestReport:
    rep = IngestReport()
    is_gz = path.endswith(".gz")
    try:
        with open(path, "rb") as raw_fh:
            st = os.fstat(raw_fh.fileno())
            fh: IO[bytes] = gzip.GzipFile(fileobj=raw_fh) if is_gz else raw_fh
            fp = fingerprint(fh)
            if fp is None or fp in seen:
                return rep  # no complete first line yet, or this content was just read under another name
            seen.add(fp)
            cursor = claim_cursor(engine, fp, path, st, is_gz)
            if cursor is None:
                return rep
            rep.files = 1
            _read(engine, settings, limits, fh, cursor, st, rep, stop)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        # Rotated away, unreadable or a corrupt .gz: what was committed stays; go on with the next file.
        log.warning("ingest.file_error", file=path, error=str(exc))
        rep.skipped_files.append(path)
    if rep.files:
        log.info("ingest.file", file=path, **{k: v for k, v in rep.as_dict().items() if k != "files"})
    return rep


def fingerprint(fh: IO[bytes]) -> str | None:
    """The file's identity: a hash of its first line (None until that line is complete)."""
    fh.seek(0)
    head = fh.read(FINGERPRINT_BYTES)
    nl = head.find(b"\n")
    if nl < 0 and len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.sha256(head[: nl + 1] if nl >= 0 else head).hexdigest()


def claim_cursor(engine: Engine, fp: str, path: str, st: os.stat_result, is_gz: bool) -> dict[str, Any] | None:
    """Find (or create) the cursor for this content. Returns None when there is nothing to read."""
    try:
        return _find_or_create_cursor(engine, fp, path, st, is_gz)
    except sa.exc.IntegrityError:  # another ingester created it first: use theirs
        return _find_or_create_cursor(engine, fp, path, st, is_gz)


def _find_or_create_cursor(engine: Engine, fp: str, path: str, st: os.stat_result, is_gz: bool):
    with write_tx(engine) as conn:
        # FOR UPDATE: on PostgreSQL another ingester must not move the offset between this read and
        # the write below (SQLite's BEGIN IMMEDIATE already serializes the whole transaction).
        rows = conn.execute(sa.select(cursors_t).where(cursors_t.c.fingerprint == fp).with_for_update()).mappings().all()
        same_inode = [r for r in rows if (r["dev"], r["inode"]) == (st.st_dev, st.st_ino)]
        row = (same_inode or sorted(rows, key=lambda r: -r["offset"]) or [None])[0]
        if row is None:
            values = dict(fingerprint=fp, path=path, dev=st.st_dev, inode=st.st_ino, offset=0, line_no=0,
                          complete=False, size=st.st_size, updated_at=utcnow())
            new_id = conn.execute(cursors_t.insert().values(**values)).inserted_primary_key[0]
            return {**values, "id": new_id}
        cur = dict(row)
        if cur["complete"]:
            return None
        if not is_gz and st.st_size < cur["offset"]:
            # copytruncate, and the new content starts with the same line: start over.
            log.warning("ingest.truncated", file=path, size=st.st_size, offset=cur["offset"])
            cur.update(offset=0, line_no=0)
        elif not is_gz and st.st_size == cur["offset"] and cur["path"] == path:
            return None  # nothing new
        conn.execute(cursors_t.update().where(cursors_t.c.id == cur["id"]).values(
            path=path, dev=st.st_dev, inode=st.st_ino, offset=cur["offset"], line_no=cur["line_no"]))  # locked above
        cur.update(path=path, dev=st.st_dev, inode=st.st_ino)
        return cur


def _read(engine: Engine, settings: Settings, limits: Limits, fh: IO[bytes], cursor, st, rep: IngestReport,
          stop: threading.Event | None = None) -> None:
    spec = ReadSpec.of(settings, cursor, limits)
    is_gz = isinstance(fh, gzip.GzipFile)
    commit = Committer(engine, cursor, st.st_size)
    remaining = (st.st_size * 5 if is_gz else st.st_size) - cursor["offset"]
    workers = settings.ingest.workers or min(os.cpu_count() or 1, 4)
    if workers > 1 and remaining >= PARALLEL_MIN_BYTES:
        job = WorkerJob(engine, fh.fileno(), is_gz, st.st_size, cursor["offset"], cursor["line_no"],
                        batches=lambda f, off, line, keep: batches(f, off, line, spec, keep),
                        commit=commit)
        finished = run_workers(job, workers, rep.add_batch, stop)
        completed = is_gz and finished
    else:
        fh.seek(cursor["offset"])
        for prepared in batches(fh, cursor["offset"], cursor["line_no"], spec):
            committed = commit(prepared)
            if committed is None:
                return
            rep.add_batch(committed)
            if stop is not None and stop.is_set():
                return
        completed = is_gz and not fh.read(1)
    if completed:
        with engine.begin() as conn:  # a .gz is final once rotated: never decompress it again
            conn.execute(cursors_t.update().where(cursors_t.c.id == cursor["id"]).values(complete=True))
