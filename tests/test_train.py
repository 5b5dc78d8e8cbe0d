import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from safetensors.numpy import load_file

from daemon.errors import ConfigError
from daemon.models import packaged_minilm, registry
from daemon.train import TrainCancelled, TrainError, run_job, validation_position

from helpers import make_settings, small_feedback_store


@pytest.fixture
def ingested_settings(settings, engine, tmp_path):
    settings.train.embedder.max_steps = 2
    settings.train.reranker.max_steps = 2
    settings.train.embedder.batch_size = 4
    settings.train.reranker.batch_size = 8
    settings.train.device = "cpu"
    # The long-run share (0.2), not the small-traffic one (0.5): with 30 questions half held out, the
    # no-duplicates sampler finds no batch of 4 without a repeated negative among the 15 left.
    settings.gate.heldout_target = 0
    small_feedback_store(engine, settings, tmp_path)
    return settings


def _train_pair_ids(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.text("SELECT id FROM training_pairs WHERE split = 'train'")))


def _heldout_pair_ids(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.text("SELECT id FROM training_pairs WHERE split = 'heldout'")))


@pytest.mark.slow
def test_a_full_fine_tune_runs_ddp_under_torchrun_on_two_cpu_processes(ingested_settings, engine, minilm):
    from daemon.models import load_embedder
    from daemon.train import child_command

    ingested_settings.train.devices = ["cpu", "cpu"]
    # each rank samples its half of the data; the no-duplicates sampler finds too few batches of 4 in ~12 rows
    ingested_settings.train.embedder.batch_size = 2
    assert child_command(Path("job.json"), ingested_settings.train.devices)[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    job = run_job(engine, ingested_settings, "embedder")
    t = job.training
    assert t["world_size"] == 2 and t["steps"] == 2  # gloo: the two ranks stepped together
    assert t["loss_curve"] and np.isfinite(t["final_loss"])
    assert list(Path(job.path).glob("*.safetensors")) and registry.get_version(engine, "embedder", 1)["status"] == "candidate"
    q = ["How do I install a Python package?"]
    assert not np.allclose(load_embedder(job.path, "cpu").encode(q), minilm.encode(q))


@pytest.mark.slow
def test_two_step_training_of_both_models_registers_candidates(ingested_settings, engine, minilm, capfd):
    from sentence_transformers.cross_encoder import CrossEncoder

    emb = run_job(engine, ingested_settings, "embedder")
    capfd.readouterr()
    rr = run_job(engine, ingested_settings, "reranker")
    out, err = capfd.readouterr()
    # the cold start's new head is said once, by ragloop, not by the libraries' load warnings
    assert "train.fresh_head" in out + err
    assert "LOAD REPORT" not in out + err and "to CrossEncoder" not in out + err
    assert (emb.version, rr.version) == (1, 1)
    for r in (emb, rr):
        t = json.loads((Path(r.path) / "training.json").read_text())
        assert t["steps"] == 2 and len(t["loss_curve"]) == 2 and t["device"] == "cpu"
        if r is emb:
            assert set(t["pairs"]["ids"]) == _train_pair_ids(engine)  # exactly the train pairs, replayed whole
        else:  # the train pairs, less those of the validation queries its fusion weight is chosen on
            left_out = _train_pair_ids(engine) - set(t["pairs"]["ids"])
            assert set(t["pairs"]["ids"]) < _train_pair_ids(engine) and left_out
            with engine.connect() as conn:
                query = dict(conn.execute(sa.text("SELECT id, query FROM training_pairs")).all())
            assert all(validation_position(query[i]) < ingested_settings.train.reranker.validation_fraction for i in left_out)
            assert t["fusion"]["validation_queries"] == len({query[i] for i in left_out})
        assert not set(t["pairs"]["ids"]) & _heldout_pair_ids(engine)
        assert t["seed"] == 42 and t["libraries"]["sentence_transformers"]
        assert list(Path(r.path).glob("*.safetensors")) and not list(Path(r.path).glob("*.bin"))
        row = registry.get_version(engine, r.kind, r.version)
        assert row["status"] == "candidate" and row["lineage"]["data_hash"] == t["data_hash"]
    assert _heldout_pair_ids(engine), "the fixture should have held-out pairs to leave out"
    from daemon.models import load_embedder

    tuned = load_embedder(emb.path, "cpu")
    q = ["How do I install a Python package?"]
    assert not np.allclose(tuned.encode(q), minilm.encode(q))
    assert emb.training["base"] == "embedder v0"
    ce = CrossEncoder(rr.path)
    pairs = [("What is Debian?", "Debian is a free operating system."), ("What is Debian?", "Python has lists.")]
    scores = ce.predict(pairs)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    assert rr.training["base"] == packaged_minilm()  # cold start from MiniLM with a fresh head


@pytest.mark.slow
def test_same_data_and_seed_give_the_same_weights_on_cpu(ingested_settings, engine):
    a = run_job(engine, ingested_settings, "embedder")
    b = run_job(engine, ingested_settings, "embedder")
    wa, wb = (load_file(str(next(Path(r.path).glob("*.safetensors")))) for r in (a, b))
    assert wa.keys() == wb.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a.training["data_hash"] == b.training["data_hash"]


@pytest.mark.slow
def test_cancelled_or_killed_job_registers_nothing(ingested_settings, engine):
    models = ingested_settings.models_dir / "embedder"
    cancel = threading.Event()
    err: list[BaseException] = []
    t = threading.Thread(target=lambda: _capture(err, run_job, engine, ingested_settings, "embedder", cancel=cancel))
    t.start()
    _wait_for_child()
    cancel.set()
    t.join(60)
    assert isinstance(err[0], TrainCancelled)
    t = threading.Thread(target=lambda: _capture(err, run_job, engine, ingested_settings, "embedder"))
    t.start()
    pid = _wait_for_child()
    os.kill(pid, 9)  # a crash of the training process itself
    t.join(60)
    assert isinstance(err[1], TrainError) and "exited with -9" in str(err[1])
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM model_versions WHERE kind = 'embedder' AND version > 0")) == 0
    assert list(models.iterdir()) == []


def _capture(errors, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except BaseException as exc:
        errors.append(exc)


def _wait_for_child(timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"daemon.train\x00" in cmd:
                    time.sleep(2.0)  # let it get into model loading / training
                    return int(pid)
        time.sleep(0.1)
    raise AssertionError("the training child never started")


def test_bad_training_config_fails_before_any_work(tmp_path, db_url, engine):
    with pytest.raises(ConfigError) as exc:
        make_settings(tmp_path, db_url, train={"reranker": {"loss": "hinge"}, "embedder": {"batch_size": 1}})
    text = "\n".join(exc.value.problems)
    assert "train.reranker.loss" in text and "train.embedder.batch_size" in text
    s = make_settings(tmp_path, db_url, train={"reranker": {"base": str(tmp_path / "no-such-model"), "start_from": "base"}})
    t0 = time.monotonic()
    with pytest.raises(TrainError, match=r"train.reranker.base = .*no-such-model.* is not a folder"):
        run_job(engine, s, "reranker")
    assert time.monotonic() - t0 < 5
    assert not (s.models_dir / "reranker").exists()


def test_a_training_child_dies_with_a_sigkilled_daemon(tmp_path):
    """SIGKILL reaches only the daemon's process group; the child has its own session. Found by bench/live.py:
    an orphaned child trained on and wrote a model folder nobody registered. It now dies with its starter."""
    pid_file = tmp_path / "child.pid"
    child = _kill_the_parent_of(tmp_path, pid_file, (
        "import os, time\nfrom daemon.process import die_with_starter\ndie_with_starter()\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"))
    _wait_gone(child, 10, "the child outlived its SIGKILLed parent")


def test_a_training_child_started_as_its_daemon_is_killed_exits_too(tmp_path):
    """The window before the child's prctl: the daemon SIGKILLed while its child still imports torch. Found by
    bench/live.py (an orphan trained on beside the restarted daemon's own cycle); the child now exits at once."""
    pid_file, ready = tmp_path / "child.pid", tmp_path / "started"
    child = _kill_the_parent_of(tmp_path, pid_file, (
        "import os, time\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        f"while not os.path.exists({str(ready)!r}): time.sleep(0.05)\n"
        "time.sleep(1)  # the parent is dead by now: this child is still importing\n"
        "from daemon.process import die_with_starter\ndie_with_starter()\ntime.sleep(120)\n"))
    ready.write_text("")
    _wait_gone(child, 15, "the child outlived a parent killed while it started")


def _kill_the_parent_of(tmp_path, pid_file, child_code: str) -> int:
    """Run ``child_code`` as a daemon starts its training child (own session, `child_env`), wait for it to write
    its pid to ``pid_file``, SIGKILL the parent, and return the child's pid."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "child.py").write_text(child_code)
    (tmp_path / "parent.py").write_text(
        "import subprocess, sys, time\nfrom daemon.process import child_env\n"
        f"subprocess.Popen([sys.executable, {str(tmp_path / 'child.py')!r}], start_new_session=True, env=child_env())\n"
        "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return child


def _wait_gone(pid: int, seconds: float, why: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while _alive(pid):
        assert time.monotonic() < deadline, why
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "State:\tZ" not in fh.read()  # a zombie waiting for init to reap it is gone
    except FileNotFoundError:
        return False


def test_memory_freed_after_a_cycle_goes_back_to_the_os(tmp_path):
    """bench/live.py measured the daemon at 1.2 GB before its first cycle and 1.7 GB after it, for good: glibc
    keeps freed heap pages. The daemon trims its heap after each cycle (`release_memory`); here a freed 300 MB
    of heap, pinned by a few survivors, is held until the trim and returned by it."""
    import subprocess
    import sys

    script = (
        "from daemon.process import release_memory, rss_bytes\n"
        "blocks = [bytes(1500) for _ in range(200_000)]\n"
        "keep = blocks[::50]\n"
        "del blocks\n"
        "held = rss_bytes()\n"
        "trimmed = release_memory()\n"
        "print(held, rss_bytes(), trimmed)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    held, after, trimmed = out.stdout.split()
    assert trimmed == "True"
    assert int(held) > 250 * 2**20  # the freed blocks were still resident
    assert int(after) < int(held) - 200 * 2**20  # and the trim gave them back
