"""Batches: complete lines of a feedback log, parsed into the rows one commit writes (the hot path of ingest).

A reader cuts the file into batches of ``ingest.batch_lines`` lines at the same places whichever process
reads it, so forked workers (daemon/ingest/workers.py) can each prepare every n-th batch. A batch's
training pairs go to its reader's window (daemon/ingest/pending.py), which folds every
``ingest.pair_fold_lines`` lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator, NamedTuple

import orjson

from daemon.config import Settings
from daemon.data.logline import UNKNOWN_ID, UNLABELED, Event, Label, Limits, parse_event, ts_text
from daemon.data.pairs import QueryKeys
from daemon.errors import LogLineError
from daemon.ingest import pending
from daemon.store.db import utcnow

EVENT_COLS = ("ts", "query", "raw", "request_id", "source", "kind", "rank", "file", "offset", "line_no", "cursor_id")
LABEL_COLS = ("request_id", "ts", "expected_ids", "raw", "source", "file", "offset", "line_no", "cursor_id",
              "created_at")


class Prepared(NamedTuple):
    """A batch of lines ready for the driver: everything a commit needs."""

    start_offset: int
    end_offset: int
    end_line: int
    lines: int
    misses: int
    hits: int
    unlabeled: int
    event_rows: list[tuple[Any, ...]]
    label_rows: list[tuple[Any, ...]]
    hour_counts: list[tuple[str, str, int]]
    bad_rows: list[dict[str, Any]]
    window: pending.Window  # the reader's: takes this batch's pending id when committed
    fold_rows: list[tuple[Any, ...]] | None  # the window's merged pairs, this batch's included; None: pending
    fold_ids: list[int]  # pending ids of the window's earlier batches, deleted by the fold

    def summary(self) -> dict[str, int]:
        """What the report needs of a committed batch (small: a worker sends it to the parent)."""
        return {"start_offset": self.start_offset, "end_offset": self.end_offset, "lines": self.lines,
                "misses": self.misses, "hits": self.hits, "unlabeled": self.unlabeled,
                "labels": len(self.label_rows), "quarantined": len(self.bad_rows)}


@dataclass
class ReadSpec:
    """What a reader needs to turn bytes into prepared batches (no engine, no connection)."""

    path: str
    cursor_id: int
    limits: Limits
    batch_lines: int
    max_line_bytes: int
    raw_chars: int
    keys: QueryKeys
    fold_lines: int

    @classmethod
    def of(cls, settings: Settings, cursor: dict[str, Any], limits: Limits, keys: QueryKeys | None = None) -> "ReadSpec":
        """The spec of a reader of ``cursor``'s file under ``settings`` (``keys``: the split's, by default)."""
        s = settings.ingest
        return cls(cursor["path"], cursor["id"], limits, s.batch_lines, s.max_line_bytes, s.quarantine_raw_chars,
                   keys or QueryKeys(settings.gate.ingest_fraction()), s.pair_fold_lines)


def batches(fh: IO[bytes], offset: int, line_no: int, spec: ReadSpec,
             keep: Callable[[int], bool] | None = None) -> Iterator[Prepared | None]:
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

    def __init__(self, spec: ReadSpec, window: pending.Window, start_offset: int):
        self.spec, self.window, self.start_offset = spec, window, start_offset
        self.rows: list[tuple[Any, ...]] = []  # event_row() of each good line
        self.labels: list[tuple[Any, ...]] = []  # label_row() of each label line
        self.hours: dict[tuple[str, str], int] = {}
        self.bad: list[dict[str, Any]] = []
        self.misses = 0
        self.unlabeled = 0
        self.size = 0
        self._now: str | None = None

    def add(self, line: bytes, line_no: int, offset: int) -> None:
        """Parse a line into its event row, its hour count and its pairs (the hot path of ingest)."""
        self.size += 1
        spec = self.spec
        try:
            ev = parse_event(line, spec.limits)
        except LogLineError as exc:
            self._bad(line_no, offset, str(exc), line)
            return
        if type(ev) is Label:
            self.labels.append(label_row(ev, line.decode("utf-8", "replace").rstrip(), spec.path, offset, line_no,
                                         spec.cursor_id, self.now))
            return
        kind = ev.kind
        self.rows.append(event_row(ev, line.decode("utf-8", "replace").rstrip(), spec.path, offset, line_no,
                                   spec.cursor_id))
        hour = (ev.ts[:13], kind)
        self.hours[hour] = self.hours.get(hour, 0) + 1
        self.misses += kind == "miss"
        if kind == UNLABELED:
            self.unlabeled += 1  # no pairs until its label is joined
        else:
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

    def prepare(self, end_offset: int, end_line: int, last: bool = False) -> Prepared:
        """The batch's rows; its pairs are in the window, which folds here when due or when ``last``."""
        window = self.window
        window.lines += self.size
        fold_rows, fold_ids = window.take() if last or window.due() else (None, [])
        return Prepared(self.start_offset, end_offset, end_line, self.size, self.misses,
                        len(self.rows) - self.misses - self.unlabeled, self.unlabeled, self.rows, self.labels,
                        [(h, k, n) for (h, k), n in self.hours.items()], self.bad, window, fold_rows, fold_ids)

    @property
    def now(self) -> str:
        """When this batch was read, as stored text (a label's created_at: its wait starts then)."""
        if self._now is None:
            self._now = ts_text(utcnow())
        return self._now


def event_row(ev: Event, raw: str, path: str, offset: int, line_no: int, cursor_id: int) -> tuple[Any, ...]:
    """Driver parameters (EVENT_COLS order); ``raw`` is the line as written."""
    return (ev.ts, ev.query, raw, ev.request_id, ev.source, ev.kind, ev.rank, path, offset, line_no, cursor_id)


def label_row(label: Label, raw: str, path: str, offset: int, line_no: int, cursor_id: int, now: str) -> tuple[Any, ...]:
    """Driver parameters (LABEL_COLS order)."""
    return (label.request_id, label.ts, orjson.dumps(label.expected_ids).decode(), raw, label.source, path, offset,
            line_no, cursor_id, now)
