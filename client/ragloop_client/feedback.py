"""FeedbackLog: the retrieval log ragloop ingests, written safely from many threads and processes.

Every line is one JSON object in ragloop's v1 format (daemon/data/schemas/feedback-v1.schema.json): a
retrieval with its label, a retrieval whose label comes later (with a request id), or that later label.
Each is checked before it is written, and written with a single ``write`` on a file opened with ``O_APPEND``: lines from any
number of processes interleave whole, never torn. Before each write the path is checked the way ``logging``'s
WatchedFileHandler does: when logrotate (``create`` mode) has moved the file away, the next line goes to the
new file at the path, so no line is written to a file ragloop has stopped reading.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ragloop_client.retriever import SearchResult


class FeedbackLog:
    """Append retrieval events for ragloop to ingest.

    Args:
        path: the log file (one of ragloop's ``ingest.paths``).
        source: written as each line's ``source`` (which application or tenant logged it), unless given per line.
        mode: permissions of a file this log creates (logrotate's ``create`` sets them on rotation).
    """

    def __init__(self, path: str | Path, *, source: str | None = None, mode: int = 0o640):
        self.path, self.source, self.mode = Path(path), source, mode
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None

    def log(self, query: str, retrieved_ids: Sequence[str], expected_ids: Sequence[str] | None = None, *,
            retrieved_scores: Sequence[float] | None = None, request_id: str | None = None,
            source: str | None = None, ts: datetime | None = None, **extra: Any) -> dict[str, Any]:
        """Write one retrieval event: what production retrieved for ``query`` and, when known, which chunks
        answer it. Without ``expected_ids`` the event needs a ``request_id``: `label` completes it later.

        Returns the event as written. Raises ValueError, naming the field, for an event ragloop would
        quarantine (nothing is written then).
        """
        event: dict[str, Any] = {"ts": _timestamp(ts), "query": query}
        if expected_ids is not None:
            event["expected_ids"] = list(expected_ids)
        event["retrieved_ids"] = list(retrieved_ids)
        if retrieved_scores is not None:
            event["retrieved_scores"] = [float(s) for s in retrieved_scores]
        if request_id is not None:
            event["request_id"] = request_id
        return self._emit(event, source, extra, _check)

    def log_result(self, result: SearchResult, expected_ids: Sequence[str] | None = None, **kw: Any) -> dict[str, Any]:
        """`log` for a `Retriever.search` answer: its ids and scores, and the version that ranked them.

        Without ``expected_ids`` (the label comes later) a ``request_id`` is made up when none is given; it is
        in the returned event, for `label`.
        """
        kw.setdefault("serving_version", result.version)
        if expected_ids is None and kw.get("request_id") is None:
            kw["request_id"] = uuid.uuid4().hex
        return self.log(result.query, result.ids, expected_ids, retrieved_scores=result.scores, **kw)

    def label(self, request_id: str, expected_ids: Sequence[str], *, source: str | None = None,
              ts: datetime | None = None, **extra: Any) -> dict[str, Any]:
        """Write the label of the retrieval logged earlier (by any process, to any of ragloop's logs) with
        ``request_id``: the chunks that answer it. ragloop joins the two whichever it reads first.

        Returns the line as written; ValueError, naming the field, for a label ragloop would quarantine.
        """
        line: dict[str, Any] = {"ts": _timestamp(ts), "request_id": request_id, "expected_ids": list(expected_ids)}
        return self._emit(line, source, extra, _check_label)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = self._id = None

    def __enter__(self) -> FeedbackLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emit(self, line: dict[str, Any], source: str | None, extra: dict[str, Any], check) -> dict[str, Any]:
        """Add the source and any extra fields, check the line (ValueError: nothing written), write it."""
        if (source := source or self.source) is not None:
            line["source"] = source
        line.update(extra)
        check(line)
        self._write((json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
        return line

    def _write(self, data: bytes) -> None:
        with self._lock:
            fd = self._open()
            written = os.write(fd, data)
            if written != len(data):  # a full disk: say so rather than leave half a line
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes (disk full?)")

    def _open(self) -> int:
        """The descriptor for the file now at ``path``: reopened when rotation moved or removed the old one."""
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if self._fd is not None and current == self._id:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        st = os.fstat(self._fd)
        self._id = (st.st_dev, st.st_ino)
        return self._fd


def _timestamp(ts: datetime | None) -> str:
    ts = ts or datetime.now(timezone.utc)
    if ts.tzinfo is None:
        raise ValueError("ts must carry a timezone (ragloop reads RFC 3339 with an offset)")
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check(event: dict[str, Any]) -> None:
    """The v1 schema's rules, in the words of what to fix."""
    if not isinstance(event["query"], str) or not event["query"].strip():
        raise ValueError("query must be a non-empty string")
    _check_ids(event, "retrieved_ids")
    if "expected_ids" in event:
        _check_ids(event, "expected_ids")
    elif not isinstance(event.get("request_id"), str) or not event["request_id"]:
        raise ValueError("a retrieval logged without expected_ids needs a request_id, which its later label names")
    scores = event.get("retrieved_scores")
    if scores is not None and len(scores) != len(event["retrieved_ids"]):
        raise ValueError(f"retrieved_scores has {len(scores)} scores for {len(event['retrieved_ids'])} retrieved_ids")
    for key in ("request_id", "source"):
        if event.get(key) is not None and not isinstance(event[key], str):
            raise ValueError(f"{key} must be a string")


def _check_label(line: dict[str, Any]) -> None:
    if not isinstance(line["request_id"], str) or not line["request_id"]:
        raise ValueError("request_id must be the non-empty id the retrieval was logged with")
    _check_ids(line, "expected_ids")
    if line.get("source") is not None and not isinstance(line["source"], str):
        raise ValueError("source must be a string")


def _check_ids(event: dict[str, Any], key: str) -> None:
    ids = event[key]
    if not all(isinstance(i, str) and i for i in ids):
        raise ValueError(f"{key} must be non-empty strings (chunk ids), got {ids!r}")
    if key == "expected_ids" and not ids:
        raise ValueError("expected_ids must name at least one chunk that answers the query")
