"""Ingest: tail production feedback logs into events and training pairs, exactly once.

A file is identified by a fingerprint of its first line (which survives rename rotation and
compression to .gz) plus device+inode. The byte offset reached is committed in the same
transaction as the rows read before it, with a compare-and-swap on the old offset, so a crash at
any instant neither loses nor duplicates a line, and two ingesters never both commit the same lines.

A large backlog is read by forked workers (daemon/ingest_workers.py) that parse on every core and
commit in turn: batches still commit one at a time, in file order, each with its offset.

Training pairs are merged in memory over ``ingest.pair_fold_lines`` lines and upserted once per
(query, chunk); each batch commits a pending_pairs row until then (daemon/pending.py).
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
from typing import IO, Any, Callable, Iterator, NamedTuple

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon import pending
from daemon.config import Settings
from daemon.corpus import known_chunk_ids
from daemon.errors import LogLineError
from daemon.ingest_workers import WorkerJob, run_workers
from daemon.logline import UNKNOWN_ID, Event, Limits, parse_event
from daemon.pairs import PairBatch, QueryKeys, placeholders, quote
from daemon.store import FeedbackEvent, IngestCursor, Quarantine, utcnow, write_tx

log = structlog.get_logger(__name__)
events_t = FeedbackEvent.__table__
cursors_t = IngestCursor.__table__
quarantine_t = Quarantine.__table__

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
    quarantined: int = 0
    bytes: int = 0
    skipped_files: list[str] = field(default_factory=list)

    def add(self, other: "IngestReport") -> None:
        for name in ("files", "lines", "events", "misses", "hits", "quarantined", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped_files += other.skipped_files

    def add_batch(self, s: dict[str, int]) -> None:
        """Account for a committed batch (``_Prepared.summary()``)."""
        self.bytes += s["end_offset"] - s["start_offset"]
        self.lines += s["lines"]
        self.events += s["misses"] + s["hits"]
        self.misses += s["misses"]
        self.hits += s["hits"]
        self.quarantined += s["quarantined"]

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "skipped_files"}
        d["miss_rate"] = round(self.misses / self.events, 4) if self.events else None
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
            fp = _fingerprint(fh)
            if fp is None or fp in seen:
                return rep  # no complete first line yet, or this content was just read under another name
            seen.add(fp)
            cursor = _claim_cursor(engine, fp, path, st, is_gz)
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


def _fingerprint(fh: IO[bytes]) -> str | None:
    fh.seek(0)
    head = fh.read(FINGERPRINT_BYTES)
    nl = head.find(b"\n")
    if nl < 0 and len(head) < FINGERPRINT_BYTES:
        return None
    return hashlib.sha256(head[: nl + 1] if nl >= 0 else head).hexdigest()


def _claim_cursor(engine: Engine, fp: str, path: str, st: os.stat_result, is_gz: bool) -> dict[str, Any] | None:
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


class _Prepared(NamedTuple):
    """A batch of lines ready for the driver: everything a commit needs."""

    start_offset: int
    end_offset: int
    end_line: int
    lines: int
    misses: int
    hits: int
    event_rows: list[tuple[Any, ...]]
    hour_counts: list[tuple[str, str, int]]
    bad_rows: list[dict[str, Any]]
    window: pending.Window  # the reader's: takes this batch's pending id when committed
    fold_rows: list[tuple[Any, ...]] | None  # the window's merged pairs, this batch's included; None: pending
    fold_ids: list[int]  # pending ids of the window's earlier batches, deleted by the fold

    def summary(self) -> dict[str, int]:
        """What the report needs of a committed batch (small: a worker sends it to the parent)."""
        return {"start_offset": self.start_offset, "end_offset": self.end_offset, "lines": self.lines,
                "misses": self.misses, "hits": self.hits, "quarantined": len(self.bad_rows)}


@dataclass
class _ReadSpec:
    """What a reader needs to turn bytes into prepared batches (no engine, no connection)."""

    path: str
    cursor_id: int
    limits: Limits
    batch_lines: int
    max_line_bytes: int
    raw_chars: int
    keys: QueryKeys
    fold_lines: int


def _read(engine: Engine, settings: Settings, limits: Limits, fh: IO[bytes], cursor, st, rep: IngestReport,
          stop: threading.Event | None = None) -> None:
    s = settings.ingest
    spec = _ReadSpec(cursor["path"], cursor["id"], limits, s.batch_lines, s.max_line_bytes, s.quarantine_raw_chars,
                     QueryKeys(settings.gate.ingest_fraction()), s.pair_fold_lines)
    is_gz = isinstance(fh, gzip.GzipFile)
    w = _Writer(_insert_events_sql(engine.dialect), _count_sql(engine.dialect))
    remaining = (st.st_size * 5 if is_gz else st.st_size) - cursor["offset"]
    workers = settings.ingest.workers or min(os.cpu_count() or 1, 4)
    if workers > 1 and remaining >= PARALLEL_MIN_BYTES:
        job = WorkerJob(engine, fh.fileno(), is_gz, st.st_size, cursor["offset"], cursor["line_no"],
                        batches=lambda f, off, line, keep: _batches(f, off, line, spec, keep),
                        commit=lambda p: _commit(engine, w, cursor, p, st.st_size))
        finished = run_workers(job, workers, rep.add_batch, stop)
        completed = is_gz and finished
    else:
        fh.seek(cursor["offset"])
        for prepared in _batches(fh, cursor["offset"], cursor["line_no"], spec):
            committed = _commit(engine, w, cursor, prepared, st.st_size)
            if committed is None:
                return
            rep.add_batch(committed)
            if stop is not None and stop.is_set():
                return
        completed = is_gz and not fh.read(1)
    if completed:
        with engine.begin() as conn:  # a .gz is final once rotated: never decompress it again
            conn.execute(cursors_t.update().where(cursors_t.c.id == cursor["id"]).values(complete=True))


def _batches(fh: IO[bytes], offset: int, line_no: int, spec: _ReadSpec,
             keep: Callable[[int], bool] | None = None) -> Iterator[_Prepared | None]:
    """Complete lines from ``offset`` on, as prepared batches of up to ``spec.batch_lines`` lines.

    With ``keep`` (a worker), batch ``i`` is prepared only where ``keep(i)``; the others are cut the same
    way, their lines counted but not parsed, and yield None; and a last, line-less batch folds what is
    left of this reader's pairs, so every worker takes one more turn. Without ``keep``, the last batch
    folds them (or a line-less one, if the last batch was full).
    """
    window = pending.Window(spec.keys, spec.fold_lines)

    def start(index: int, at: int) -> _Batch | _Skipped:
        return _Batch(spec, window, at) if keep is None or keep(index) else _Skipped()

    index = 0
    batch = start(index, offset)
    limit = spec.max_line_bytes
    while True:
        line = fh.readline(limit + 1)
        if not line:
            break
        if line[-1] != 10:  # no newline
            if len(line) <= limit:
                break  # a partial last line: wait for its newline
            skipped = _skip_to_newline(fh)
            if skipped is None:
                break  # the oversized line is still being written
            line_no += 1
            batch.quarantine(line_no, offset, f"line longer than ingest.max_line_bytes={limit}", line)
            offset += len(line) + skipped
        else:
            line_no += 1
            batch.add(line, line_no, offset)
            offset += len(line)
        if batch.size >= spec.batch_lines:
            yield batch.prepare(offset, line_no)
            index += 1
            batch = start(index, offset)
    if batch.size:
        yield batch.prepare(offset, line_no, last=True)
    if keep is not None or not window.is_empty():
        yield _Batch(spec, window, offset).prepare(offset, line_no, last=True)


def _skip_to_newline(fh: IO[bytes]) -> int | None:
    skipped = 0
    while True:
        chunk = fh.readline(1 << 20)
        if not chunk:
            return None
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            return skipped


class _Writer(NamedTuple):
    events_sql: str
    counts_sql: str


def _commit(engine: Engine, w: _Writer, cursor: dict[str, Any], p: _Prepared, size: int) -> dict[str, int] | None:
    """Write a batch and advance the cursor over it in one transaction, with its pairs either pending
    or folded together with its window's (daemon/pending.py).

    Returns:
        The batch's summary, or None if another ingester moved the cursor (nothing written).
    """
    try:
        summary, pending_id = _commit_tx(engine, w, cursor, p, size)
    except pending.FoldConflict as exc:
        # Another process recovered some of this window's batches from their pending rows, and the
        # window's merged pairs went with the rolled-back fold. Commit this batch as pending, outside any
        # window: recovery folds it with the window's other batches.
        log.warning("ingest.fold_conflict", file=cursor["path"], error=str(exc))
        summary, _ = _commit_tx(engine, w, cursor, p._replace(fold_rows=None, fold_ids=[]), size)
        return summary
    if pending_id is not None:
        p.window.pending.append(pending_id)
    return summary


def _commit_tx(engine: Engine, w: _Writer, cursor: dict[str, Any], p: _Prepared,
               size: int) -> tuple[dict[str, int] | None, int | None]:
    """One transaction of ``_commit``. Returns (summary or None if the cursor moved, the pending id)."""
    if not p.lines and not p.fold_ids and not p.fold_rows:
        return p.summary(), None  # a reader's last turn with nothing left to fold
    pending_id = None
    with write_tx(engine) as conn:
        if p.lines:  # a line-less batch only folds: the cursor is not its to check or move
            moved = conn.execute(
                cursors_t.update()
                .where(cursors_t.c.id == cursor["id"], cursors_t.c.offset == p.start_offset)
                .values(offset=p.end_offset, line_no=p.end_line, size=size, updated_at=utcnow())
            ).rowcount
            if moved != 1:
                conn.rollback()
                log.warning("ingest.cursor_moved", file=cursor["path"], expected_offset=p.start_offset)
                return None, None
        if p.fold_rows is not None:
            pending.fold(conn, p.fold_rows, p.fold_ids)  # first: a conflict rolls back before any write
        # Driver-level executemany on rows serialized by the reader: SQLAlchemy's per-value
        # processing (JSON, datetime) cost more than parsing, and ingest throughput is a target.
        if p.event_rows:
            first_id = pending.next_event_id(conn) if p.fold_rows is None else None  # None: folded above
            conn.exec_driver_sql(w.events_sql, p.event_rows)
            if first_id is not None:
                pending_id = pending.record(conn, cursor["id"], first_id, p.start_offset, p.end_offset)
        if p.hour_counts:
            conn.exec_driver_sql(w.counts_sql, p.hour_counts)
        if p.bad_rows:
            conn.execute(quarantine_t.insert(), p.bad_rows)
    if p.fold_rows is not None:
        log.debug("ingest.fold", file=cursor["path"], batches=len(p.fold_ids) + 1, pairs=len(p.fold_rows))
    return p.summary(), pending_id


class _Skipped:
    """Another worker's batch: cut at the same lines, not parsed."""

    def __init__(self):
        self.size = 0

    def add(self, *_line: Any) -> None:
        self.size += 1

    quarantine = add

    def prepare(self, end_offset: int, end_line: int, last: bool = False) -> None:
        return None


class _Batch:
    """Rows produced by up to ``ingest.batch_lines`` lines, written together."""

    def __init__(self, spec: _ReadSpec, window: pending.Window, start_offset: int):
        self.spec, self.window, self.start_offset = spec, window, start_offset
        self.rows: list[tuple[Any, ...]] = []  # event_row() of each good line
        self.hours: dict[tuple[str, str], int] = {}
        self.bad: list[dict[str, Any]] = []
        self.misses = 0
        self.size = 0

    def add(self, line: bytes, line_no: int, offset: int) -> None:
        """Parse a line into its event row, its hour count and its pairs (the hot path of ingest)."""
        self.size += 1
        spec = self.spec
        try:
            ev = parse_event(line, spec.limits)
        except LogLineError as exc:
            self._bad(line_no, offset, str(exc), line)
            return
        kind = ev.kind
        self.rows.append(event_row(ev, line.decode("utf-8", "replace").rstrip(), spec.path, offset, line_no,
                                   spec.cursor_id))
        hour = (ev.ts[:13], kind)
        self.hours[hour] = self.hours.get(hour, 0) + 1
        self.misses += kind == "miss"
        self.window.pairs.add_event(ev)

    def quarantine(self, line_no: int, offset: int, reason: str, line: bytes) -> None:
        self.size += 1
        self._bad(line_no, offset, reason, line)

    def _bad(self, line_no: int, offset: int, reason: str, line: bytes) -> None:
        # Lines that may become valid later (unknown ids) are kept whole so they can be retried.
        keep = len(line) if reason.startswith(UNKNOWN_ID) else self.spec.raw_chars
        raw = line[:keep].decode("utf-8", "replace").rstrip("\n").replace("\x00", "\ufffd")  # PostgreSQL text has no NUL
        self.bad.append(dict(file=self.spec.path, line_no=line_no, offset=offset, reason=reason.replace("\x00", "\ufffd"),
                             raw=raw, created_at=utcnow()))

    def prepare(self, end_offset: int, end_line: int, last: bool = False) -> _Prepared:
        """The batch's rows; its pairs are in the window, which folds here when due or when ``last``."""
        window = self.window
        window.lines += self.size
        fold_rows, fold_ids = window.take() if last or window.due() else (None, [])
        return _Prepared(self.start_offset, end_offset, end_line, self.size, self.misses,
                         len(self.rows) - self.misses, self.rows, [(h, k, n) for (h, k), n in self.hours.items()],
                         self.bad, window,
                         fold_rows, fold_ids)


_EVENT_COLS = ("ts", "query", "raw", "request_id", "source", "kind", "rank", "file", "offset", "line_no", "cursor_id")


def _insert_events_sql(dialect) -> str:
    values = placeholders(dialect, _EVENT_COLS, {"raw"}, {"ts"})
    return f"INSERT INTO feedback_events ({', '.join(map(quote, _EVENT_COLS))}) VALUES ({values})"


def event_row(ev: Event, raw: str, path: str, offset: int, line_no: int, cursor_id: int) -> tuple[Any, ...]:
    """Driver parameters (_EVENT_COLS order); ``raw`` is the line as written."""
    return (ev.ts, ev.query, raw, ev.request_id, ev.source, ev.kind, ev.rank, path, offset, line_no, cursor_id)


def _count_sql(dialect) -> str:
    values = placeholders(dialect, ("hour", "kind", "count"), set(), set())
    return (f"INSERT INTO event_counts (hour, kind, count) VALUES ({values}) "
            "ON CONFLICT (hour, kind) DO UPDATE SET count = event_counts.count + excluded.count")


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
            conn.exec_driver_sql(_insert_events_sql(conn.dialect),
                                 [event_row(ev, row["raw"], row["file"], row["offset"], row["line_no"], cur_id)])
            conn.exec_driver_sql(_count_sql(conn.dialect), [(ev.ts[:13], ev.kind, 1)])
            pairs = PairBatch(keys)
            pairs.add_event(ev)
            pairs.write(conn)
            conn.execute(quarantine_t.update().where(quarantine_t.c.id == row["id"]).values(resolved_at=utcnow()))
            resolved += 1
    log.info("quarantine.retry", resolved=resolved, still_bad=still_bad)
    return {"resolved": resolved, "still_bad": still_bad}
