"""Fusion of first-stage and reranker scores: the rule, the weight chosen on validation, and production's copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from daemon.gate import gate
from daemon.models import (WEIGHTS, Corpus, choose_weight, corpus_embeddings, fused_order, load_reranker, minmax,
                           model_weight, rerank, retrieve_scored)
from daemon.serve import build_index, promotion
from daemon.train import run_job

from ragloop_client import Retriever


def test_weight_zero_is_the_first_stage_and_one_the_reranker_alone():
    first, cross = np.array([0.9, 0.8, 0.7, 0.1]), np.array([-3.0, 5.0, 1.0, 4.0])
    assert list(fused_order(first, cross, 0.0)) == [0, 1, 2, 3]
    assert list(fused_order(first, cross, 1.0)) == [1, 3, 2, 0]
    assert list(fused_order(first, cross, 0.5)) == [1, 2, 0, 3]  # 0.5*(1,.875,.75,0) + 0.5*(0,1,.5,.875)
    assert list(minmax([2.0, 2.0])) == [0.0, 0.0]  # equal scores carry no order
    assert 0.0 in WEIGHTS and 1.0 in WEIGHTS


def test_the_chosen_weight_is_the_best_on_validation_and_the_smallest_on_a_tie():
    assert choose_weight({0.0: 0.5, 0.3: 0.61, 0.6: 0.61, 1.0: 0.2}) == 0.3
    assert choose_weight({0.0: 0.7, 0.5: 0.7, 1.0: 0.1}) == 0.0  # a reranker that adds nothing gets no weight


@pytest.mark.slow
def test_the_weight_is_chosen_on_validation_gated_published_and_served_by_the_client(ingested_settings, engine, minilm):
    build_index(engine, ingested_settings, model=minilm)
    ingested_settings.train.reranker.min_validation = 3
    job = run_job(engine, ingested_settings, "reranker")
    training_json = Path(job.path) / "training.json"
    training = json.loads(training_json.read_text())
    fusion = training["fusion"]
    assert fusion["weight"] in WEIGHTS and fusion["validation_queries"] >= 3 and "0.0" in fusion["by_weight"]
    assert fusion["by_weight"][str(fusion["weight"])] == max(fusion["by_weight"].values())
    with engine.connect() as conn:
        queries = dict(conn.execute(sa.text("SELECT id, query FROM training_pairs")).all())
        heldout = set(conn.scalars(sa.text("SELECT query FROM training_pairs WHERE split = 'heldout'")))
    trained = {queries[i] for i in training["pairs"]["ids"]}
    assert len(trained) + fusion["validation_queries"] <= len(set(queries.values()) - heldout)  # carved from train
    assert not trained & heldout
    assert model_weight(job.path) == fusion["weight"]

    d = gate(engine, ingested_settings, "reranker", job.version)
    assert d.outcome in ("promote", "reject", "undecided") and d.figures["candidate"]["heldout"]["queries"] >= 3
    promotion.promote(engine, ingested_settings, "reranker", job.version, forced=True)
    manifest = json.loads(ingested_settings.manifest_path.read_text())
    assert manifest["reranker"]["fusion_weight"] == fusion["weight"]

    # A weight strictly between the ends, so the check exercises the fusion itself, not one of its ends.
    w = 0.4
    training["fusion"]["weight"] = w
    training_json.write_text(json.dumps(training))
    ingested_settings.gate.rerank_depth = 20  # the manifest carries the depth the gate reranks at; production reads it
    promotion.promote(engine, ingested_settings, "reranker", job.version, forced=True)
    corpus = Corpus(engine)
    emb = corpus_embeddings(minilm, corpus, None, "test")
    qs = sorted(heldout)[:5]
    cands, sims = retrieve_scored(minilm, corpus, emb, qs, 20)
    reranker = load_reranker(job.path, ingested_settings.train.device, ingested_settings.train.trust_remote_code)
    gate_ranked = rerank(reranker, corpus, qs, cands, first=sims, weight=w)
    # production's client, from the manifest alone, through the real embedded Qdrant collection it names
    with Retriever(ingested_settings.manifest_path, device="cpu", watch=False) as client:
        assert (client.manifest.reranker.fusion_weight, client.manifest.reranker.rerank_depth) == (w, 20)
        assert [client.search(q, k=10).ids for q in qs] == [g[:10] for g in gate_ranked]
