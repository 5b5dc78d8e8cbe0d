"""The daemon end to end: a real `ragloop run` subprocess, real signals, a real notify socket."""

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from daemon.cli import main
from daemon.models import packaged_minilm
from daemon.store import open_store

from helpers import small_feedback_files

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, tmp: Path, db_url: str, *, base: str, min_new_pairs: int, port: int) -> None:
    path.write_text(f"""
state_dir = "{tmp / 'state'}"
[log]
format = "json"
[store]
url = "{db_url}"
[ingest]
paths = ["{tmp / 'logs'}/*.jsonl"]
[schedule]
ingest_interval_s = 0.5
check_interval_s = 1
min_new_pairs = {min_new_pairs}
min_cycle_interval_s = 0
[service]
metrics_addr = "127.0.0.1:{port}"
heartbeat_interval_s = 1
shutdown_timeout_s = 30
[gate]
min_heldout = 3
[qdrant]
verify_sample = 5
lock_wait_s = 60
[train]
device = "cpu"
[train.embedder]
base = "{base}"
start_from = "base"
max_steps = 2
batch_size = 4
[train.reranker]
max_steps = 2
batch_size = 4
""")


class Daemon:
    def __init__(self, cfg: Path, tmp: Path):
        self.sock_path = str(tmp / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.log = open(tmp / "daemon.log", "w")
        env = {**os.environ, "NOTIFY_SOCKET": self.sock_path, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "run"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.messages: list[str] = []
        # read the socket all along, as systemd does: its queue holds only net.unix.max_dgram_qlen (often 10)
        # datagrams, and the daemon drops what does not fit (MSG_DONTWAIT), so a test that stopped reading
        # during a long cycle would lose STOPPING=1
        self.inbox: queue.Queue[str] = queue.Queue()
        self.sock.settimeout(0.2)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while self.sock.fileno() != -1:
            try:
                self.inbox.put(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.inbox.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.messages.append(msg)
            if msg.startswith(prefix):
                return msg
        raise AssertionError(f"no {prefix} within {timeout}s; got {self.messages[-5:]}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.reader.join(timeout=2)
        self.log.close()


def poll(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def status(cfg: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "status", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_daemon_ingests_cycles_promotes_and_stops_cleanly(tmp_path, db_url, damaged_minilm):
    cfg, port = tmp_path / "config.toml", free_port()
    corpus, lines = small_feedback_files(tmp_path, n_questions=60)
    (tmp_path / "logs").mkdir()
    # Planted: production starts with a broken embedder; the first cycle must replace it.
    write_config(cfg, tmp_path, db_url, base=damaged_minilm, min_new_pairs=10_000, port=port)
    assert main(["-c", str(cfg), "corpus", "load", str(corpus)]) == 0
    d = Daemon(cfg, tmp_path)
    try:
        assert "STATUS=" in d.wait_for("READY=1", 120)
        assert main(["-c", str(cfg), "check"]) == 0
        second = subprocess.run([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "run"], capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 3 and f'"pid": {d.proc.pid}' in second.stderr

        (tmp_path / "logs" / "feedback.jsonl").write_text("".join(line + "\n" for line in lines))
        poll(lambda: status(cfg)["events"] == len(lines), 60, "ingestion")
        # SIGHUP: a new config (a good base, a low retrain threshold) takes effect without a restart
        write_config(cfg, tmp_path, db_url, base=packaged_minilm(), min_new_pairs=5, port=port)
        d.proc.send_signal(signal.SIGHUP)
        # the promoting cycle refits (train.embedder.refit is on); its held-out queries retire, so the cycle
        # after it waits for fresh ones instead of training a candidate the gate could not judge
        s = poll(lambda: ((st := status(cfg))["last_cycle"] or {}).get("waiting_for") and st, 600,
                 "a promoting cycle, then one that waits for held-out queries")
        assert s["last_cycle"]["decisions"] == [] and "waiting for" in s["last_cycle"]["not_trained"][0]["reason"]
        decided = [x for x in reversed(s["decisions"]) if x["kind"] == "embedder"]  # oldest first
        assert [x["outcome"] for x in decided][:1] == ["promote"], decided
        # what serves: the promoted candidate, or its refit on all traffic when that passed its check
        emb = next(x for x in reversed(decided) if x["outcome"] in ("promote", "refit"))
        assert s["serving"]["models"]["embedder"]["version"] == emb["candidate"]
        # v1 was built with the broken embedder; each promotion re-indexed: the candidate's, then its refit's
        collection = f"chunks__v{1 + sum(x['outcome'] in ('promote', 'refit') for x in decided)}"
        assert s["serving"]["collection"] == collection
        manifest = json.loads((tmp_path / "state" / "serving.json").read_text())
        assert manifest["collection"] == collection and manifest["embedder"]["version"] == emb["candidate"]

        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        samples = dict(re.findall(r'^(ragloop_[a-z_]+(?:\{[^}]*\})?) (\S+)$', body, re.M))
        assert float(samples['ragloop_events_total{kind="miss"}']) + float(samples['ragloop_events_total{kind="hit"}']) == len(lines)
        assert float(samples['ragloop_serving_version{kind="embedder"}']) == emb["candidate"]
        assert float(samples["ragloop_heldout_queries_needed"]) == s["last_cycle"]["waiting_for"] > 0
        assert float(samples["ragloop_cycles_total"]) >= 1 and "ragloop_last_heartbeat_timestamp_seconds" in samples
        assert float(samples['ragloop_gate_decisions_total{kind="embedder",outcome="promote"}']) == 1

        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=60) == 0
        d.wait_for("STOPPING=1", 5)
    finally:
        d.close()
    assert main(["-c", str(cfg), "check"]) == 1
    log = (tmp_path / "daemon.log").read_text()
    assert '"event": "service.stopped"' in log and '"event": "service.reloaded"' in log
    stages = [json.loads(line)["stage"] for line in log.splitlines() if '"service.stage"' in line]
    assert "training embedder" in stages and any(st.startswith("promoting embedder") for st in stages)
    # a clean journal: the daemon's, its training child's and the libraries' lines are all JSON events
    not_json = [line for line in log.splitlines() if line.strip() and not _is_json_object(line)]
    assert not_json == []


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_sigterm_during_training_exits_cleanly_and_registers_nothing(tmp_path, db_url):
    cfg, port = tmp_path / "config.toml", free_port()
    corpus, lines = small_feedback_files(tmp_path, n_questions=40)
    (tmp_path / "logs").mkdir()
    write_config(cfg, tmp_path, db_url, base=packaged_minilm(), min_new_pairs=1, port=port)
    assert main(["-c", str(cfg), "corpus", "load", str(corpus)]) == 0
    (tmp_path / "logs" / "feedback.jsonl").write_text("".join(line + "\n" for line in lines))
    d = Daemon(cfg, tmp_path)
    try:
        d.wait_for("READY=1", 120)
        poll(lambda: _training_child(), 300, "the training child")
        time.sleep(1.0)
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=45) == 0
        assert time.monotonic() - t0 < 35
    finally:
        d.close()
    assert _training_child() is None
    engine = open_store(f"{db_url}")
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM model_versions WHERE version > 0")) == 0
    engine.dispose()
    models = tmp_path / "state" / "models" / "embedder"
    assert not models.exists() or list(models.iterdir()) == []


def _training_child() -> int | None:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if b"daemon.train\x00" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
            except OSError:
                continue
    return None
