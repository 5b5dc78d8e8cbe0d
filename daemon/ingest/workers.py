"""Parallel ingest of a large backlog: forked workers that parse and commit batches in turn.

Every worker reads the same bytes (the file as it was when the pass began, through its own positional
reader, so no worker moves another's file offset) and cuts them into the same batches. Worker ``w``
prepares batches ``w, w + n, w + 2n, ...`` and skips the lines of the others; a chain of semaphores
hands the turn to commit from batch to batch, so batches still commit one at a time, in file order,
each with its offset (under the same compare-and-swap as the inline path). Parsing runs on every core
while one batch commits, and no rows cross a process boundary: pickling them cost as much as parsing.

The parent only watches: it sums what the workers report, tells them to stop after their current
commit when the daemon shuts down, and turns a worker's death into an error. Workers die with the
parent (PR_SET_PDEATHSIG), so a killed ingester leaves no orphan writing behind its back.
"""

from __future__ import annotations

import gzip
import io
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterator

from sqlalchemy.engine import Engine

from daemon.process import die_with_parent

_TURN_POLL_S = 0.1
# A worker that reports nothing for this long is presumed stuck: a fork can copy a lock that another
# thread of the daemon held at that instant (SQLite's and Python's locks are not fork-safe), and a
# stuck worker would otherwise stall its file forever. Its file is read again next pass.
STALL_S = 300.0
# After a stop, workers finish the commit in progress; one still running this much later is killed.
HALT_GRACE_S = 30.0


class PositionalReader(io.RawIOBase):
    """A private reader over an open file descriptor: os.pread at its own position, up to ``end``.

    Forked processes share an inherited file's offset; pread does not touch it. ``end`` freezes the
    file as it was when the pass began, so all workers see the same lines even while it grows.
    """

    def __init__(self, fd: int, end: int | None):
        self.fd, self.end, self.pos = fd, end, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.pos = pos
        elif whence == io.SEEK_CUR:
            self.pos += pos
        else:
            self.pos = (self.end if self.end is not None else os.fstat(self.fd).st_size) + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        want = len(buf) if self.end is None else max(0, min(len(buf), self.end - self.pos))
        data = os.pread(self.fd, want, self.pos) if want else b""
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def private_file(fd: int, is_gz: bool, end: int | None) -> IO[bytes]:
    raw = io.BufferedReader(PositionalReader(fd, None if is_gz else end), buffer_size=1 << 20)
    return gzip.GzipFile(fileobj=raw) if is_gz else raw


@dataclass
class WorkerJob:
    """What each worker needs; inherited through fork, never pickled."""

    engine: Engine
    fd: int
    is_gz: bool
    end: int | None  # plain files: the size at the start of the pass
    offset: int
    line_no: int
    batches: Callable[..., Iterator[Any]]  # ingest._batches(fh, offset, line_no, keep=...)
    commit: Callable[[Any], dict | None]  # writes a batch, advances the cursor: its summary; None: cursor moved


def run_workers(job: WorkerJob, n: int, on_commit: Callable[[Any], None],
                stop: threading.Event | None = None) -> bool:
    """Run ``n`` workers over the job and call ``on_commit`` with each committed batch's summary.

    Returns:
        True when every batch was committed; False when the pass stopped early (``stop`` was set, or
        another ingester moved the cursor).

    Raises:
        OSError: a worker failed or died; the batches committed before stay committed.
    """
    ctx = multiprocessing.get_context("fork")
    turns = [ctx.Semaphore(0) for _ in range(n)]
    halt = ctx.Event()
    pipes = [ctx.Pipe(duplex=False) for _ in range(n)]  # one each: a killed worker cannot jam the others
    parent = os.getpid()
    procs = [ctx.Process(target=_worker, args=(w, n, job, turns, halt, pipes, parent), daemon=True,
                         name=f"ragloop-ingest-{w}") for w in range(n)]
    turns[0].release()
    for p, (_, send) in zip(procs, pipes):
        p.start()
        send.close()
    error, finished, stuck = "ingest workers interrupted", False, True
    try:
        error, finished, stuck = _watch({recv: w for w, (recv, _) in enumerate(pipes)}, halt, on_commit, stop)
    finally:
        halt.set()
        deadline = time.monotonic() + (0 if stuck else HALT_GRACE_S)
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for recv, _ in pipes:
            recv.close()
    if error:
        raise OSError(error)
    return finished


def _watch(open_pipes: dict, halt, on_commit, stop) -> tuple[str | None, bool, bool]:
    """Collect what the workers report until each has said its last word.

    Returns:
        (error, finished, stuck): stuck when workers stopped reporting and must be killed now.
    """
    error, halted = None, False
    last_word = time.monotonic()
    halted_at = None
    while open_pipes:
        now = time.monotonic()
        if stop is not None and stop.is_set():
            halt.set()
        if halt.is_set() and halted_at is None:
            halted_at = now
        if halted_at is not None and now - halted_at > HALT_GRACE_S:
            return error or f"ingest workers still running {HALT_GRACE_S:.0f} s after a stop; killed", False, True
        if now - last_word > STALL_S:
            return (f"no ingest worker reported for {STALL_S:.0f} s (one may be stuck on a lock copied by fork); "
                    "killed them; the file is read again next pass"), False, True
        for recv in multiprocessing.connection.wait(list(open_pipes), timeout=_TURN_POLL_S):
            last_word = time.monotonic()
            w = open_pipes[recv]
            try:
                kind, payload = recv.recv()
            except EOFError:  # exited without a last word: killed (OOM, a signal); its commits stay
                kind, payload = "error", f"ingest worker {w} died; committed batches are kept"
            if kind == "batch":
                on_commit(payload)
                continue
            del open_pipes[recv]
            halted |= kind != "done"
            if kind == "error":
                error = error or payload
                halt.set()
    return error, not halted and error is None, False


def _worker(w: int, n: int, job: WorkerJob, turns, halt, pipes, parent: int) -> None:
    die_with_parent(parent)
    for i, (recv, other_send) in enumerate(pipes):
        recv.close()
        if i != w:  # another worker's pipe must see EOF when that worker dies, so hold no copy of it
            other_send.close()
    send = pipes[w][1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    job.engine.dispose(close=False)  # the parent's pooled connections are not ours to use
    try:
        send.send(_work(w, n, job, turns, halt, send))
    except Exception as exc:  # reported to the parent, which logs it and keeps what was committed
        halt.set()
        turns[(w + 1) % n].release()
        send.send(("error", f"ingest worker {w}: {exc!r}"))
    finally:
        send.close()
        job.engine.dispose()


def _work(w: int, n: int, job: WorkerJob, turns, halt, send) -> tuple[str, None]:
    """Prepare this worker's batches; commit each in its turn. Returns the last word for the parent."""
    fh = private_file(job.fd, job.is_gz, job.end)
    fh.seek(job.offset)
    for prepared in job.batches(fh, job.offset, job.line_no, keep=lambda i: i % n == w):
        if prepared is None:
            continue  # another worker's batch
        if not _await_turn(turns[w], halt):
            return ("halted", None)
        try:
            summary = job.commit(prepared)
        finally:
            turns[(w + 1) % n].release()
        if summary is None:  # another ingester moved the cursor: it reads on from there
            halt.set()
            return ("halted", None)
        send.send(("batch", summary))
    return ("done", None)


def _await_turn(turn, halt) -> bool:
    while not turn.acquire(timeout=_TURN_POLL_S):
        if halt.is_set():
            return False
    return not halt.is_set()
