"""The cycle: which kinds it trains, and what it records when it chooses not to train one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.models import packaged_minilm, registry
from daemon.service import run_cycle
from daemon.store import LAST_CYCLE, get_state
from daemon.train import cold_start_skip


def _status_text(settings, tmp_path: Path) -> str:
    cfg = tmp_path / "status.toml"
    cfg.write_text(f'state_dir = "{settings.state_dir}"\n[store]\nurl = "{settings.store.url}"\n')
    return subprocess.run([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "status"], capture_output=True,
                          text=True, check=True).stdout


def test_a_cold_start_reranker_below_min_pairs_is_not_trained_and_the_cycle_says_why(ingested_settings, engine, tmp_path):
    with capture_logs() as cap:
        report = run_cycle(engine, ingested_settings, kinds=(registry.RERANKER,))
    assert 0 < report.train_pairs < ingested_settings.train.reranker.min_pairs
    assert report.decisions == [] and registry.serving(engine, registry.RERANKER) is None
    assert not (ingested_settings.models_dir / "reranker").exists()  # no child ran, nothing registered
    (skip,) = report.not_trained
    assert skip["kind"] == "reranker"
    assert f"{report.train_pairs} train pairs < train.reranker.min_pairs 10000" in skip["reason"]
    assert "train.reranker.base" in skip["reason"]  # what to do about it
    event = next(e for e in cap if e["event"] == "train.skipped")
    assert event["kind"] == "reranker" and event["train_pairs"] == report.train_pairs
    assert get_state(engine, LAST_CYCLE)["not_trained"] == report.not_trained
    assert f"reranker: cold-start reranker not trained: {report.train_pairs} train pairs" in _status_text(ingested_settings, tmp_path)


def test_what_makes_a_reranker_worth_training(ingested_settings, engine, tmp_path):
    n = 500
    assert "500 train pairs < train.reranker.min_pairs 10000" in cold_start_skip(engine, ingested_settings, "reranker", n)
    assert cold_start_skip(engine, ingested_settings, "embedder", n) is None  # the embedder always has a pretrained base
    ingested_settings.train.reranker.min_pairs = n
    assert cold_start_skip(engine, ingested_settings, "reranker", n) is None  # enough pairs
    ingested_settings.train.reranker.min_pairs = 10_000
    ingested_settings.train.reranker.base = str(tmp_path / "some-cross-encoder")
    assert cold_start_skip(engine, ingested_settings, "reranker", n) is None  # a pretrained base trains from the first cycle
    ingested_settings.train.reranker.base = ""
    registry.register(engine, "reranker", packaged_minilm(), status="serving")
    assert cold_start_skip(engine, ingested_settings, "reranker", n) is None  # a serving reranker is continued, not cold
    ingested_settings.train.reranker.start_from = "base"
    assert cold_start_skip(engine, ingested_settings, "reranker", n) is not None  # ...unless it restarts cold


@pytest.mark.slow
def test_a_configured_reranker_base_trains_and_is_gated_in_the_first_cycle(ingested_settings, engine, tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoder

    base = tmp_path / "pretrained-reranker"
    CrossEncoder(packaged_minilm(), num_labels=1, device="cpu").save_pretrained(str(base))
    ingested_settings.train.reranker.base = str(base)
    ingested_settings.train.reranker.start_from = "base"
    ingested_settings.gate.rerank_depth = 10
    report = run_cycle(engine, ingested_settings, kinds=(registry.RERANKER,))
    assert report.not_trained == []
    (d,) = report.decisions
    assert d["kind"] == "reranker" and d["version"] == 1 and d["outcome"] in ("promote", "reject", "undecided")
    training = json.loads((ingested_settings.models_dir / "reranker" / "v1" / "training.json").read_text())
    assert training["steps"] == 2
    assert registry.get_version(engine, "reranker", 1)["base"] == str(base)


def test_below_min_heldout_a_cycle_trains_no_candidate_and_says_how_many_queries_it_waits_for(
        ingested_settings, engine, tmp_path):
    ingested_settings.gate.min_heldout = 1000
    with capture_logs() as cap:
        report = run_cycle(engine, ingested_settings)
    have = report.heldout["heldout_queries"]
    assert 0 < have < 1000 and report.waiting_for == 1000 - have
    assert report.decisions == [] and not (ingested_settings.models_dir / "embedder").exists()  # no child ran
    (wait,) = report.not_trained
    assert wait["reason"].startswith(f"waiting for {1000 - have} more held-out queries: the held-out set has {have}")
    event = next(e for e in cap if e["event"] == "cycle.waiting")
    assert (event["heldout_queries"], event["needed"]) == (have, 1000 - have)
    assert f"candidates: waiting for {1000 - have} more held-out queries" in _status_text(ingested_settings, tmp_path)
    from daemon.observe import render_metrics

    text = render_metrics(engine)
    assert f"ragloop_heldout_queries_needed {float(1000 - have)}" in text
    assert f"ragloop_heldout_queries {float(have)}" in text
    ingested_settings.gate.min_heldout = have  # enough now: the next cycle trains again
    assert run_cycle(engine, ingested_settings, kinds=()).waiting_for == 0
