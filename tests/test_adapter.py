"""The query adapter: built from sentence-transformers' Router and Dense, trained on cached vectors, gated
without encoding the corpus, promoted and rolled back without a re-index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from structlog.testing import capture_logs

from daemon.config import EmbedderTrainSettings
from daemon.gate import Decision, Evaluator, choose_embedder, gate, record
from daemon.models import Corpus, cache_dir, corpus_embeddings, load_embedder, load_vectors, registry
from daemon.observe import collect_status, render_status
from daemon.serve import build_index, promotion, search, serving_collection
from daemon.service import run_cycle
from daemon.store import GateDecision
from daemon.train import Example, TrainingData, adapter

from helpers import example_chunks, example_questions

TEXTS = ["How do I leave vim?", "Type :q! to quit without saving."]


def test_an_identity_adapter_is_the_serving_model_and_survives_a_reload(minilm, tmp_path):
    model = adapter.build(minilm, adapter.identity_dense(384))
    base = minilm.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(model.encode_query(TEXTS), base, atol=1e-6)
    np.testing.assert_allclose(model.encode_document(TEXTS), base, atol=1e-6)
    dense = adapter.identity_dense(384)
    with torch.no_grad():
        dense.linear.weight.add_(torch.randn(384, 384) * 0.05)
    model = adapter.build(minilm, dense)
    model.save_pretrained(str(tmp_path / "a"))
    again = load_embedder(str(tmp_path / "a"), "cpu")
    np.testing.assert_allclose(again.encode_document(TEXTS), base, atol=1e-6)  # documents: the serving vectors
    np.testing.assert_allclose(again.encode(TEXTS), base, atol=1e-6)  # a plain encode takes the document route
    q = again.encode_query(TEXTS)
    np.testing.assert_allclose(q, model.encode_query(TEXTS), atol=1e-6)
    assert np.abs(q - base).max() > 0.01 and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert adapter.query_adapter(again) is not None and adapter.query_adapter(minilm) is None


def _training_data(n: int = 40) -> tuple[TrainingData, dict[str, str]]:
    chunks = {c["id"]: c["text"] for c in example_chunks(10_000)}
    qs = [q for q in example_questions() if len(q["expected_ids"]) == 1][:n]
    ids = list(chunks)
    examples = [Example(i, q["query"], q["expected_ids"][0], [ids[(7 * i + k) % len(ids)] for k in range(2)
                                                                 if ids[(7 * i + k) % len(ids)] != q["expected_ids"][0]][:1],
                        "failure", 1) for i, q in enumerate(qs)]
    texts = {c: chunks[c] for e in examples for c in (e.positive_id, *e.negative_ids)}
    return TrainingData(examples, texts), chunks


@pytest.mark.parametrize("candidates", ["batch", "corpus"])
def test_the_adapter_learns_from_cached_vectors_and_leaves_documents_alone(minilm, candidates):
    data, chunks = _training_data()
    vectors = dict(zip(data.texts, minilm.encode(list(data.texts.values()), normalize_embeddings=True)))
    cfg = EmbedderTrainSettings(adapter_epochs=30, adapter_batch_size=16, negatives=1, adapter_identity_decay=0.0,
                                adapter_candidates=candidates)
    with capture_logs() as cap:
        model, state = adapter.fit_adapter(minilm, data, vectors, cfg, seed=1)
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    assert state.global_step == 30 * 3 and len(losses) == 90
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    ids = list(data.texts)
    docs = np.stack([vectors[c] for c in ids])

    def mrr(m) -> float:
        order = (-(m.encode_query([e.query for e in data.examples], normalize_embeddings=True) @ docs.T)).argsort(1)
        return float(np.mean([1 / (1 + [ids[j] for j in row].index(e.positive_id))
                              for row, e in zip(order, data.examples)]))

    assert mrr(model) > mrr(minilm) + 0.05  # it fits what it was trained on
    np.testing.assert_allclose(model.encode_document([data.texts[c] for c in ids[:5]], normalize_embeddings=True),
                               docs[:5], atol=1e-6)
    assert next(e for e in cap if e["event"] == "train.adapter")["steps"] == 90
    # the identity pull keeps the adapter nearer the serving model
    eye = torch.eye(384)
    pulled, _ = adapter.fit_adapter(minilm, data, vectors, cfg.model_copy(update={"adapter_identity_decay": 1.0}), seed=1)
    drift = [float((adapter.query_adapter(m).linear.weight.detach() - eye).norm()) for m in (model, pulled)]
    assert 0 < drift[1] < 0.5 * drift[0]


@pytest.fixture
def adapter_store(ingested_settings):
    ingested_settings.train.embedder.mode = "adapter"
    ingested_settings.train.embedder.adapter_epochs = 5
    return ingested_settings


def test_an_adapter_is_gated_on_cached_vectors_promoted_and_rolled_back_without_a_reindex(adapter_store, engine):
    from daemon.train import run_job

    first = build_index(engine, adapter_store)
    job = run_job(engine, adapter_store, "embedder", mode="adapter")
    row = registry.get_version(engine, "embedder", job.version)
    assert row["lineage"]["documents"] == 0 and registry.vector_key(row) == "embedder-v0"
    assert job.training["mode"] == "adapter" and job.training["documents"] == 0
    with capture_logs() as cap:
        d = gate(engine, adapter_store, "embedder", job.version, evaluator=Evaluator(engine, adapter_store))
    encodes = [e for e in cap if e["event"] == "evaluate.embeddings"]
    assert encodes and all(e["embedded"] == 0 and e["key"] == "embedder-v0" for e in encodes)  # no corpus encode
    assert not (cache_dir(adapter_store) / f"embedder-v{job.version}.npz").exists()
    assert d.figures["candidate"]["heldout"]["queries"] > 0

    promotion.promote(engine, adapter_store, "embedder", job.version, forced=True)
    cur = serving_collection(engine, adapter_store)
    assert cur["collection"] == first.collection  # the same collection: nothing re-indexed
    manifest = json.loads(adapter_store.manifest_path.read_text())
    assert manifest["collection"] == first.collection and manifest["embedder"]["version"] == job.version
    shown = render_status(collect_status(engine, adapter_store))
    assert f"v{job.version} (query adapter on v0's document vectors)" in shown
    model = load_embedder(registry.model_path(adapter_store, row), "cpu")
    query = "How do I exit the Python interpreter?"
    hits = search(engine, adapter_store, query, k=5)  # the serving adapter's query route, on the old vectors
    corpus = Corpus(engine)
    emb = corpus_embeddings(model, corpus, cache_dir(adapter_store), "embedder-v0")
    expected = [corpus.ids[i] for i in np.argsort(-(model.encode_query([query], normalize_embeddings=True) @ emb.T)[0])[:5]]
    assert [h[0] for h in hits] == expected

    back = promotion.rollback(engine, adapter_store, "embedder")
    assert back["embedder_version"] == 0 and back["collection"] == first.collection
    assert registry.serving(engine, "embedder")["version"] == 0
    assert json.loads(adapter_store.manifest_path.read_text())["embedder"]["version"] == 0


def test_auto_skips_a_full_fine_tune_whose_reindex_is_too_slow(adapter_store, engine):
    adapter_store.train.embedder.mode = "auto"
    adapter_store.index.max_reindex_s = 0.001
    report = run_cycle(engine, adapter_store, kinds=("embedder",))
    assert [(d["mode"], d["version"]) for d in report.decisions] == [("adapter", 1)]
    (skip,) = report.not_trained
    assert skip["kind"] == "embedder (full)" and "index.max_reindex_s" in skip["reason"]
    assert {s["mode"] for s in report.stages if s["stage"] == "training"} == {"adapter"}
    assert not (adapter_store.models_dir / "embedder" / "v2").exists()


def _decision(engine, settings, version: int, gain: float, mode: str) -> Decision:
    path = registry.serving(engine, "embedder")["path"]
    registry.register(engine, "embedder", path, version=version,
                      lineage={"pair_ids": [], "documents": 0 if mode == "adapter" else version})
    d = Decision("embedder", version, 0, "promote", "significant", {"gain": gain}, [], [])
    return record(engine, d, Evaluator(engine, settings))


@pytest.mark.parametrize("adapter_gain,full_gain,winner", [(0.03, 0.035, "adapter"), (0.02, 0.04, "full")])
def test_auto_promotes_the_full_fine_tune_only_for_min_gain_more(ingested_settings, engine, adapter_gain, full_gain, winner):
    registry.ensure_base_embedder(engine, ingested_settings)
    a = _decision(engine, ingested_settings, 1, adapter_gain, "adapter")
    f = _decision(engine, ingested_settings, 2, full_gain, "full")
    chosen = choose_embedder(engine, ingested_settings, a, f)
    loser = f if winner == "adapter" else a
    assert chosen is (a if winner == "adapter" else f) and chosen.promote
    assert loser.outcome == "reject" and "gate.min_gain" in loser.reason
    assert registry.get_version(engine, "embedder", loser.candidate)["status"] == "rejected"
    with engine.connect() as conn:
        stored = {r["id"]: r for r in conn.execute(sa.select(GateDecision.__table__)).mappings()}
    assert stored[loser.id]["outcome"] == "reject" and stored[chosen.id]["outcome"] == "promote"
    # one side not promotable: the other wins as it is, nothing is overruled
    a.outcome = "undecided"
    f.outcome = "promote"
    assert choose_embedder(engine, ingested_settings, a, f) is f


def test_a_cached_corpus_key_is_shared_by_a_model_and_its_adapters(ingested_settings, engine):
    build_index(engine, ingested_settings)
    assert set(load_vectors(cache_dir(ingested_settings), "embedder-v0")) == set(Corpus(engine).hashes)


def test_ragloop_train_adapter_registers_a_query_adapter(ingested_settings, engine, tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "train.toml"
    cfg.write_text(f'state_dir = "{ingested_settings.state_dir}"\n[store]\nurl = "{ingested_settings.store.url}"\n[train]\ndevice = "cpu"\n'
                   '[train.embedder]\nadapter_epochs = 2\n')
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "train", "--embedder", "--adapter"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    row = registry.get_version(engine, "embedder", 1)
    assert row["lineage"]["mode"] == "adapter" and registry.vector_key(row) == "embedder-v0"
    assert "embedder v1 (candidate)" in out.stdout
