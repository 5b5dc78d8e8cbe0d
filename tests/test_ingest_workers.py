"""Parallel ingest: forked workers that parse and commit in turn, in file order, exactly once."""

import gzip
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

import daemon.ingest.reader as ingest_reader
from daemon.ingest import PositionalReader, ingest_once

from helpers import event_line, ingest_config, stored_request_ids, write_corpus

IDS = [f"c{i}" for i in range(100)]


@pytest.fixture
def parallel(settings, engine, monkeypatch, tmp_path):
    """Every file takes the worker path, with three workers (an odd count, whatever the cores)."""
    monkeypatch.setattr(ingest_reader, "PARALLEL_MIN_BYTES", 0)
    settings.ingest.workers = 3
    settings.ingest.batch_lines = 97
    write_corpus(engine, IDS)
    logs = tmp_path / "logs"
    logs.mkdir()
    return logs / "feedback.jsonl"


def write(path, lines, mode="a"):
    with open(path, mode) as fh:
        fh.write("".join(line + "\n" for line in lines))


def pair_total(engine):
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT coalesce(sum(count), 0) FROM training_pairs"))


def test_workers_commit_every_line_once_in_file_order(settings, engine, parallel):
    write(parallel, [event_line(i, hit=i % 4 == 0) for i in range(2000)] + ["not json"])
    rep = ingest_once(engine, settings)
    assert (rep.lines, rep.events, rep.hits, rep.quarantined) == (2001, 2000, 500, 1)
    assert stored_request_ids(engine) == [f"r{i}" for i in range(2000)]
    assert pair_total(engine) == 2000
    with engine.connect() as conn:
        offset, line_no = conn.execute(sa.text('SELECT "offset", line_no FROM ingest_cursors')).one()
        assert conn.scalar(sa.text("SELECT line_no FROM quarantine")) == 2001
    assert (offset, line_no) == (parallel.stat().st_size, 2001)
    assert ingest_once(engine, settings).lines == 0


def test_a_growing_file_is_read_as_it_was_when_the_pass_began(settings, engine, parallel):
    write(parallel, [event_line(i) for i in range(3000)])
    done = threading.Event()

    def grow():
        n = 3000
        while not done.is_set():
            write(parallel, [event_line(i) for i in range(n, n + 50)])
            n += 50
            time.sleep(0.002)

    t = threading.Thread(target=grow)
    t.start()
    try:
        first = ingest_once(engine, settings)
    finally:
        done.set()
        t.join()
    total = parallel.read_text().count("\n")
    rest = ingest_once(engine, settings)
    assert first.lines >= 3000 and first.lines + rest.lines == total
    assert stored_request_ids(engine) == [f"r{i}" for i in range(total)] and pair_total(engine) == total


def test_gz_through_workers_is_read_once_and_completely(settings, engine, parallel):
    gz = parallel.with_name("feedback.jsonl.1.gz")
    with gzip.open(gz, "wt") as fh:
        fh.write("".join(event_line(i) + "\n" for i in range(1500)))
    assert ingest_once(engine, settings).events == 1500
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT complete FROM ingest_cursors"))
    assert ingest_once(engine, settings).lines == 0
    assert stored_request_ids(engine) == [f"r{i}" for i in range(1500)]


def test_stop_ends_the_pass_after_a_commit_and_the_next_pass_goes_on(settings, engine, parallel):
    write(parallel, [event_line(i) for i in range(20_000)])
    stop = threading.Event()
    result = {}

    def run():
        try:
            result["rep"] = ingest_once(engine, settings, stop=stop)
        except Exception as exc:  # reported by the assert below
            result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    while not stored_request_ids(engine):
        time.sleep(0.01)
    stop.set()
    t.join(timeout=90)  # workers stuck after the stop are killed after HALT_GRACE_S (30 s)
    assert not t.is_alive() and "error" not in result, result
    first = result["rep"].lines
    assert 0 < first < 20_000
    assert ingest_once(engine, settings).lines == 20_000 - first
    assert stored_request_ids(engine) == [f"r{i}" for i in range(20_000)] and pair_total(engine) == 20_000


def _signal_a_worker_mid_pass(settings, engine, parallel, sig):
    """Run a pass over 30,000 lines in a thread; once it has committed, send ``sig`` to worker 1.

    Returns:
        (the thread, what the pass returned, the log events).
    """
    settings.ingest.batch_lines = 50
    write(parallel, [event_line(i) for i in range(30_000)])
    result = {}
    t = threading.Thread(target=lambda: result.update(rep=ingest_once(engine, settings)))
    with capture_logs() as cap:
        t.start()
        victim = None
        while victim is None and t.is_alive():
            victim = next((p for p in multiprocessing.active_children() if p.name == "ragloop-ingest-1"), None)
            time.sleep(0.001)
        while t.is_alive() and not stored_request_ids(engine):
            time.sleep(0.005)
        os.kill(victim.pid, sig)
        t.join(timeout=60)
    return t, result, cap


def test_a_killed_worker_fails_the_file_not_the_pass_and_loses_nothing(settings, engine, parallel):
    _, result, cap = _signal_a_worker_mid_pass(settings, engine, parallel, signal.SIGKILL)
    assert result["rep"].skipped_files == [str(parallel)]
    assert any(e["event"] == "ingest.file_error" and "died" in e["error"] for e in cap)
    ingest_once(engine, settings)
    assert stored_request_ids(engine) == [f"r{i}" for i in range(30_000)] and pair_total(engine) == 30_000


def test_a_stuck_worker_is_killed_and_its_file_read_again_next_pass(settings, engine, parallel, monkeypatch):
    """A worker that stops reporting (here SIGSTOP; in the wild, a lock copied by fork) cannot stall the pass."""
    import daemon.ingest.workers as workers_mod

    monkeypatch.setattr(workers_mod, "STALL_S", 2.0)
    t, result, cap = _signal_a_worker_mid_pass(settings, engine, parallel, signal.SIGSTOP)
    assert not t.is_alive() and result["rep"].skipped_files == [str(parallel)]
    assert any(e["event"] == "ingest.file_error" and "no ingest worker reported" in e["error"] for e in cap)
    assert not any(p.name.startswith("ragloop-ingest") for p in multiprocessing.active_children())
    ingest_once(engine, settings)
    assert stored_request_ids(engine) == [f"r{i}" for i in range(30_000)] and pair_total(engine) == 30_000


def test_workers_die_with_a_killed_ingester(tmp_path, db_url):
    """SIGKILL to the ingesting process alone (not its group): no orphan worker goes on committing."""
    cfg, logs = ingest_config(tmp_path, db_url, "batch_lines = 100\nworkers = 2")
    from daemon.store import open_store

    engine = open_store(db_url)
    write_corpus(engine, IDS)
    engine.dispose()
    write(logs / "feedback.jsonl", [event_line(i) for i in range(60_000)])  # ~25 MB: the worker path
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "ingest"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        time.sleep(0.01)
    assert len(workers) >= 2, "the ingester never started its workers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)


def _children(pid: int) -> list[int]:
    """Forked children of ``pid`` (same command line), not helpers it may have exec'd."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        cmdline = fh.read()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and _cmdline(int(entry)) == cmdline:
                out.append(int(entry))
    return out


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_positional_reader_never_moves_the_shared_offset(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as shared:
        shared.seek(3)
        r = PositionalReader(shared.fileno(), end=8)
        r.seek(2)
        assert r.read(100) == b"234567" and r.read(1) == b""
        assert os.lseek(shared.fileno(), 0, os.SEEK_CUR) == 3
