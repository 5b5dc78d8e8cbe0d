import json

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import make_settings, small_feedback_store
from qdrant_client import QdrantClient
from structlog.testing import capture_logs

from daemon import registry
from daemon.cli import main
from daemon.gate import bootstrap_lower_bound, gate
from daemon.index import build_index
from daemon.store import open_store
from daemon.train import run_job


@pytest.fixture
def store(settings, engine, tmp_path):
    settings.gate.min_heldout = 3
    settings.train.device = "cpu"
    for kind in ("embedder", "reranker"):
        getattr(settings.train, kind).max_steps = 2
        getattr(settings.train, kind).batch_size = 4
    small_feedback_store(engine, settings, tmp_path, n_questions=60)
    return settings


def _alias(settings):
    c = QdrantClient(path=str(settings.qdrant_path))
    try:
        return next(a.collection_name for a in c.get_aliases().aliases if a.alias_name == "chunks")
    finally:
        c.close()


def test_bootstrap_is_seeded_and_reproducible():
    rng = np.random.default_rng(1)
    a, b = rng.random(50), rng.random(50)
    assert bootstrap_lower_bound(a, b, 1000, 0.95, 7) == bootstrap_lower_bound(a, b, 1000, 0.95, 7)
    assert bootstrap_lower_bound(a, b, 1000, 0.95, 7) != bootstrap_lower_bound(a, b, 1000, 0.95, 8)
    sure = bootstrap_lower_bound(np.ones(30), np.zeros(30), 500, 0.95, 0)
    assert sure["lower"] == 1.0 and sure["mean_gain"] == 1.0


def test_damaged_candidate_is_rejected_with_figures(store, engine, damaged_minilm):
    v = registry.register(engine, "embedder", damaged_minilm, base="embedder v0")
    with capture_logs() as cap:
        d = gate(engine, store, "embedder", v)
    assert d.outcome == "reject" and "gain" in d.reason
    cand, serv = d.figures["candidate"]["heldout"], d.figures["serving"]["heldout"]
    assert cand["hit@10"] < serv["hit@10"] - 0.3 and d.figures["gain"] < 0
    assert len(d.broken) > len(d.fixed)
    assert registry.get_version(engine, "embedder", v)["status"] == "rejected"
    event = next(e for e in cap if e["event"] == "gate.decision")
    assert event["outcome"] == "reject" and event["promoted"] is False and event["candidate_heldout"]["hit@10"] < 0.5
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT outcome, figures, eval_pair_ids FROM gate_decisions")).one()
    figures = row.figures if isinstance(row.figures, dict) else json.loads(row.figures)
    assert row.outcome == "reject" and figures["bootstrap"]["lower"] < 0


@pytest.mark.slow
def test_candidate_trained_on_heldout_queries_is_refused(store, engine):
    with engine.begin() as conn:  # leak on purpose: train on the held-out split, then restore it
        heldout = [i for (i,) in conn.execute(sa.text("SELECT id FROM training_pairs WHERE split = 'heldout'"))]
        conn.execute(sa.text("UPDATE training_pairs SET split = 'train' WHERE split = 'heldout'"))
    job = run_job(engine, store, "embedder")
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE training_pairs SET split = 'heldout' WHERE id IN ({','.join(map(str, heldout))})"))
    d = gate(engine, store, "embedder", job.version)
    assert d.outcome == "refuse" and "leak" in d.reason
    assert len(d.figures["leaked"]) == len({q for q in d.figures["leaked"]}) > 0


def test_too_small_heldout_set_is_undecided(store, engine, finetuned_minilm):
    store.gate.min_heldout = 10_000
    v = registry.register(engine, "embedder", finetuned_minilm)
    d = gate(engine, store, "embedder", v)
    assert d.outcome == "undecided" and "gate.min_heldout is 10000" in d.reason
    assert registry.get_version(engine, "embedder", v)["status"] == "candidate"


@pytest.mark.slow
def test_good_candidate_on_a_planted_case_is_promoted_and_rollback_restores(tmp_path, db_url, damaged_minilm,
                                                                            finetuned_minilm):
    # Planted: production serves a broken embedder; a real fine-tuned MiniLM must win and be promoted.
    settings = make_settings(tmp_path, db_url, train={"embedder": {"base": damaged_minilm}, "device": "cpu"},
                             gate={"min_heldout": 3}, qdrant={"verify_sample": 5})
    engine = open_store(settings.store_url)
    small_feedback_store(engine, settings, tmp_path, n_questions=60)
    build_index(engine, settings)
    assert _alias(settings) == "chunks__v1"
    v = registry.register(engine, "embedder", finetuned_minilm, base="packaged MiniLM + 2 steps")
    d = gate(engine, settings, "embedder", v)
    assert d.outcome == "promote", d.reason
    assert d.figures["gain"] > 0.3 and d.figures["bootstrap"]["lower"] > 0 and d.fixed
    registry.promote(engine, settings, "embedder", v)
    assert _alias(settings) == "chunks__v2"
    assert registry.serving(engine, "embedder")["version"] == v
    assert json.loads(settings.manifest_path.read_text())["embedder"]["path"] == finetuned_minilm
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{settings.state_dir}"\n[store]\nurl = "{db_url}"\n')
    assert main(["-c", str(cfg), "rollback", "embedder"]) == 0
    assert _alias(settings) == "chunks__v1"
    assert registry.serving(engine, "embedder")["version"] == 0
    assert registry.get_version(engine, "embedder", v)["status"] == "retired"
    engine.dispose()


@pytest.mark.slow
def test_reranker_is_gated_against_no_reranker_and_promotes_without_reindex(store, engine, minilm):
    build_index(engine, store, model=minilm)
    job = run_job(engine, store, "reranker")
    d = gate(engine, store, "reranker", job.version)
    assert d.serving is None and d.outcome in ("promote", "reject")
    assert "hit@1" in d.figures["metric"] and d.figures["serving"]["heldout"]["queries"] >= 3
    registry.promote(engine, store, "reranker", job.version, forced=True)
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["reranker"]["version"] == job.version and manifest["collection"] == "chunks__v1"
    assert _alias(store) == "chunks__v1"  # no re-index for a reranker
    assert registry.rollback(engine, store, "reranker") == {"kind": "reranker", "from": job.version, "to": None}
    assert json.loads(store.manifest_path.read_text())["reranker"] is None
