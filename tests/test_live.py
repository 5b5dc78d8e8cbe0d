"""The live loop's short variant: bench/live.py over two days on a tiny corpus, every part real."""

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from qdrant_client import QdrantClient

from daemon.config import load_settings
from daemon.models import apply_retention, registry
from daemon.store import open_store

from helpers import EXAMPLES, REPO


def _tiny_benchmark(folder: Path) -> None:
    """80 questions of the examples benchmark, their answers and 60 other chunks."""
    rng = random.Random(0)
    questions = rng.sample([json.loads(x) for x in (EXAMPLES / "questions.jsonl").read_text().splitlines()], 80)
    chunks = [json.loads(x) for x in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    need = {i for q in questions for i in q["expected_ids"]}
    keep = [c for c in chunks if c["id"] in need] + rng.sample([c for c in chunks if c["id"] not in need], 60)
    folder.mkdir()
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in keep))
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))


@pytest.mark.slow
def test_two_live_days_with_a_service_beside_the_daemon(tmp_path):
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed (apt-get install logrotate)")
    _tiny_benchmark(tmp_path / "tiny")
    out, work = tmp_path / "out", tmp_path / "work"
    run = subprocess.run(
        [sys.executable, "-m", "bench.live", "--benchmark", str(tmp_path / "tiny"), "--days", "2", "--queries", "60",
         "--min-new-pairs", "10", "--force-promote-day", "2", "--kill-day", "0", "--rollback-day", "0", "--no-script",
         "--out", str(out), "--work", str(work), "--set", "train.embedder.max_steps=2", "--set", "train.embedder.batch_size=4", "--set", "gate.min_heldout=5",
         "--set", "gate.heldout_target=10"],
        capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    final = dict(kv.split("=", 1) for kv in run.stdout.strip().splitlines()[-1].split())
    days = json.loads((out / "days.json").read_text())
    assert int(final["failed_queries"]) == 0 and int(final["cycles"]) >= 2
    # every line the service wrote is stored once: its retrievals, its labels
    assert int(final["lines_written"]) == int(final["events_stored"]) + int(final["labels_stored"]) > 100
    assert int(final["quarantined"]) == 0
    # a promotion (the gate's, or the operator's on day 2) reached the service by its hot reload
    assert int(final["promotions"]) >= 1
    embedder = int(re.search(r"/e(\d+)/", days[-1]["service_version"]).group(1))
    assert embedder >= 1 and days[-1]["service_version"] == days[-1]["serving"]
    assert "<svg" in (out / "days.svg").read_text() and "ragloop report" in (out / "report.html").read_text()

    # retention on the run's store: a rejected candidate goes, what serves and what a rollback needs stay
    settings = load_settings(work / "config.toml")
    settings.retention.keep_rejected_days = 0
    # the corpus changed on day 1: the daemon re-indexed what serves then, not at the next promotion
    events = [json.loads(x) for x in (work / "daemon.log").read_text().splitlines() if x.startswith("{")]
    assert any(e["event"] == "index.refreshed" for e in events), "the corpus change never reached the index"
    engine = open_store(settings.store_url)
    try:
        with engine.connect() as conn:
            active = set(conn.scalars(sa.text("SELECT id FROM chunks WHERE removed_at IS NULL")))
        collection = json.loads(settings.manifest_path.read_text())["collection"]
        client = QdrantClient(path=str(settings.qdrant_path))
        try:
            points, _ = client.scroll(collection, limit=10_000)
        finally:
            client.close()
        assert {p.payload["chunk_id"] for p in points} == active  # what serves is the corpus as it is now
        serving = registry.serving(engine, "embedder")
        previous = registry.last_retired(engine, "embedder")
        rejected = [v for v in range(1, embedder + 2) if (registry.get_version(engine, "embedder", v) or {}).get(
            "status") == "rejected"]
        assert rejected, "no rejected candidate to delete"
        deleted = apply_retention(engine, settings)
        assert {d["version"] for d in deleted if d["kind"] == "embedder"} == set(rejected)
        for v in rejected:
            assert not Path(registry.model_path(settings, registry.get_version(engine, "embedder", v))).exists()
        assert Path(registry.model_path(settings, serving)).exists()
        assert Path(registry.model_path(settings, previous)).exists()
    finally:
        engine.dispose()
