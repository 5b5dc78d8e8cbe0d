import math

import numpy as np
import pytest

from daemon.gate import Evaluator, eval_sets
from daemon.models import Corpus, corpus_embeddings, query_metrics

from helpers import small_feedback_store


def test_query_metrics_by_hand():
    m = query_metrics(["x", "a", "y", "b"], {"a", "b"})
    assert (m["hit@1"], m["hit@3"], m["hit@10"]) == (0.0, 1.0, 1.0)
    assert m["mrr@10"] == 0.5
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert m["ndcg@10"] == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    miss = query_metrics([f"n{i}" for i in range(10)] + ["a"], {"a"})
    assert (miss["hit@10"], miss["mrr@10"], miss["ndcg@10"]) == (0.0, 0.0, 0.0)


def test_eval_sets_are_held_out_only_and_guard_is_answered_hits(settings, engine, tmp_path):
    small_feedback_store(engine, settings, tmp_path, n_questions=60)
    sets = eval_sets(engine)
    import sqlalchemy as sa

    with engine.connect() as conn:
        splits = dict(conn.execute(sa.text("SELECT id, split FROM training_pairs")).all())
        hits = dict(conn.execute(sa.text("SELECT id, hit_count FROM training_pairs")).all())
    assert sets["heldout"].pair_ids and all(splits[i] == "heldout" for i in sets["heldout"].pair_ids)
    assert all(splits[i] == "heldout" and hits[i] > 0 for i in sets["guard"].pair_ids)
    assert len(sets["guard"]) < len(sets["heldout"])


def test_embeddings_are_cached_by_model_and_chunk_hash(settings, engine, tmp_path, minilm):
    small_feedback_store(engine, settings, tmp_path, n_questions=10, distractors=5)
    corpus = Corpus(engine)
    calls = []

    class Counting:
        def encode_document(self, texts, **kw):
            calls.append(len(texts))
            return minilm.encode_document(texts, **kw)

    cache = tmp_path / "cache"
    a = corpus_embeddings(Counting(), corpus, cache, "embedder-v0")
    b = corpus_embeddings(Counting(), corpus, cache, "embedder-v0")
    assert calls == [len(set(corpus.hashes))] and np.array_equal(a, b)
    corpus_embeddings(Counting(), corpus, cache, "embedder-v1")  # another model: embedded again
    assert calls[-1] == len(set(corpus.hashes))


def test_base_model_scores_are_high_on_faq_titles(settings, engine, tmp_path, minilm):
    small_feedback_store(engine, settings, tmp_path, n_questions=40)
    ev = Evaluator(engine, settings)
    held = ev.embedder_scores("embedder-v0", minilm)["heldout"].mean()
    assert held["hit@10"] >= 0.8 and held["hit@1"] <= held["hit@3"] <= held["hit@10"]


def _add_synthetic(engine, questions: list[str], chunk_id: str) -> None:
    from datetime import datetime, timezone

    from daemon.data import PairBatch, QueryKeys
    from daemon.store import write_tx

    batch = PairBatch(QueryKeys(0.2))
    for q in questions:
        batch.add_pair(q, chunk_id, datetime.now(timezone.utc), origin="synthetic", generator="test", split="train")
    with write_tx(engine) as conn:
        batch.write(conn)


def test_guard_keeps_a_stable_capped_sample_of_synthetic_questions(settings, engine, tmp_path):
    small_feedback_store(engine, settings, tmp_path, n_questions=60)
    import sqlalchemy as sa

    with engine.connect() as conn:
        chunk_id = conn.scalar(sa.text("SELECT id FROM chunks ORDER BY id LIMIT 1"))
        origin = lambda ids: {conn.scalar(sa.text("SELECT origin FROM training_pairs WHERE id = :i"), {"i": i})  # noqa: E731
                              for i in ids}
    real_guard = set(eval_sets(engine)["guard"].pair_ids)
    _add_synthetic(engine, [f"what is synthetic thing number {i}?" for i in range(40)], chunk_id)
    first = set(eval_sets(engine, max_guard_synthetic=10)["guard"].pair_ids)
    with engine.connect() as conn:
        old_max = conn.scalar(sa.text("SELECT max(id) FROM training_pairs"))
    assert real_guard < first and len(first - real_guard) == 10
    with engine.connect() as conn:
        assert origin(first - real_guard) == {"synthetic"}
    _add_synthetic(engine, [f"how does other synthetic thing {i} work?" for i in range(40)], chunk_id)
    second = set(eval_sets(engine, max_guard_synthetic=10)["guard"].pair_ids)
    assert len(second - real_guard) == 10
    # an older question leaves the sample only for a newer one that hashes lower; none comes back in
    assert all(i in first for i in second - real_guard if i <= old_max)
    assert set(eval_sets(engine, max_guard_synthetic=0)["guard"].pair_ids) == real_guard
