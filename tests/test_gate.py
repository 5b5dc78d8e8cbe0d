import json

import numpy as np
import pytest
import sqlalchemy as sa
from qdrant_client import QdrantClient
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.data import split_position
from daemon.gate import decide, gate, queries_needed, rebalance_heldout, sign_flip_test
from daemon.models import Scores, query_metrics, registry
from daemon.observe import collect_status, render_status
from daemon.serve import build_index, promotion
from daemon.store import open_store
from daemon.train import run_job

from helpers import make_settings, small_feedback_store


def _alias(settings):
    c = QdrantClient(path=str(settings.qdrant_path))
    try:
        return next(a.collection_name for a in c.get_aliases().aliases if a.alias_name == "chunks")
    finally:
        c.close()


def _scores(ranks: list[int]) -> Scores:
    """Per-query metrics of a ranking that puts each query's answer at ``rank`` (0-based; >= 10: missed)."""
    ids = [f"c{i}" for i in range(10)]
    return Scores([query_metrics(ids, {f"c{r}" if r < 10 else "elsewhere"}) for r in ranks])


def _decide(cand_ranks, serv_ranks, guard_cand, guard_serv, settings, kind="embedder"):
    cand = {"heldout": _scores(cand_ranks), "guard": _scores(guard_cand)}
    serv = {"heldout": _scores(serv_ranks), "guard": _scores(guard_serv)}
    return decide(kind, cand, serv, settings, [f"q{i}" for i in range(len(cand_ranks))])


def test_one_query_moving_one_rank_on_the_guard_never_vetoes(settings):
    # 40 held-out queries: 12 move up to rank 1, the rest stay; on the 24 guard queries one moves 3 -> 4,
    # the drop that vetoed a real +7-point candidate under the old rule.
    serv = [2] * 12 + [0] * 28
    cand = [0] * 12 + [0] * 28
    guard_serv = [2] + [0] * 23
    for guard_cand in ([3] + [0] * 23, [12] + [0] * 23):  # one rank down; or out of the top 10 entirely
        outcome, reason, figures, fixed, broken = _decide(cand, serv, guard_cand, guard_serv, settings)
        assert outcome == "promote", reason
        assert figures["guard"]["hit@10"]["p_value"] >= figures["alpha"]
    assert len(fixed) == 12 and broken == []


def test_guard_vetoes_a_regression_the_data_show(settings):
    serv, cand = [2] * 12 + [0] * 28, [0] * 40
    guard_serv, guard_cand = [0] * 40, [12] * 10 + [0] * 30  # a quarter of what worked is lost
    outcome, reason, figures, _, _ = _decide(cand, serv, guard_cand, guard_serv, settings)
    assert outcome == "reject" and reason.startswith("guard ") and "beyond gate.guard_margin 0.02" in reason
    assert figures["guard"]["hit@10"]["p_value"] < 0.05 and figures["guard"]["hit@10"]["mean"] == 0.25


def test_a_small_unproven_gain_is_undecided_and_says_how_many_queries_it_needs(settings):
    serv, cand = [1] * 3 + [0] * 27, [0] * 2 + [1] + [0] * 27  # +0.033 MRR on 30: two queries moved 2 -> 1
    outcome, reason, figures, _, _ = _decide(cand, serv, [], [], settings)
    assert outcome == "undecided" and figures["test"]["p_value"] == 0.25, reason  # exact: 1 of 4 sign vectors
    assert figures["queries_needed"] > 30 and f"~{figures['queries_needed']} held-out queries" in reason


def test_hit_at_k_stays_selectable_and_a_saturated_one_cannot_promote(settings):
    settings.gate.embedder_metric = "hit@10"
    outcome, reason, figures, _, _ = _decide([0] * 30, [2] * 30, [], [], settings)
    assert figures["metric"] == "heldout hit@10" and outcome == "reject" and "below gate.min_gain" in reason
    assert figures["candidate"]["heldout"]["mrr@10"] == 1.0  # every hit@k and MRR is in the report


def test_sign_flip_test_is_exact_when_small_and_seeded_when_large():
    assert sign_flip_test(np.ones(5)).p_value == 1 / 32  # only the observed signs reach the observed sum
    assert sign_flip_test(np.zeros(30)).p_value == 1.0  # no difference is never evidence
    assert sign_flip_test(-np.ones(5)).p_value == 1.0
    rng = np.random.default_rng(1)
    d = rng.normal(0.05, 0.3, 80)
    a, b = sign_flip_test(d, seed=7), sign_flip_test(d, seed=7)
    assert a == b and 0 < a.p_value < 1 and sign_flip_test(d, seed=8).p_value != a.p_value
    assert sign_flip_test(d, shift=0.2).p_value > 0.99  # H0: mean <= 0.2 is not rejected by a mean of ~0.05
    assert queries_needed(0.05, 0.3, 0.05) == 223 and queries_needed(-0.01, 0.3, 0.05) is None


def test_damaged_candidate_is_rejected_with_figures(ingested_settings, engine, damaged_minilm):
    v = registry.register(engine, "embedder", damaged_minilm, base="embedder v0")
    with capture_logs() as cap:
        d = gate(engine, ingested_settings, "embedder", v)
    assert d.outcome == "reject" and ("guard" in d.reason or "gain" in d.reason), d.reason
    cand, serv = d.figures["candidate"]["heldout"], d.figures["serving"]["heldout"]
    assert cand["hit@10"] < serv["hit@10"] - 0.3 and d.figures["gain"] < 0
    assert len(d.broken) > len(d.fixed)
    assert registry.get_version(engine, "embedder", v)["status"] == "rejected"
    event = next(e for e in cap if e["event"] == "gate.decision")
    assert event["outcome"] == "reject" and event["promoted"] is False and event["candidate_heldout"]["hit@10"] < 0.5
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT outcome, figures, eval_pair_ids FROM gate_decisions")).one()
    figures = row.figures if isinstance(row.figures, dict) else json.loads(row.figures)
    assert row.outcome == "reject" and figures["gain"] < 0 and figures["test"]["p_value"] > 0.5
    shown = collect_status(engine, ingested_settings)["decisions"][0]["heldout"]  # what `ragloop status` prints
    assert shown["candidate"]["hit@10"] == cand["hit@10"] and shown["serving"]["mrr@10"] == serv["mrr@10"]
    assert f"hit@10 {serv['hit@10']:.3f}->{cand['hit@10']:.3f}" in render_status(collect_status(engine, ingested_settings))


@pytest.mark.slow
def test_candidate_trained_on_heldout_queries_is_refused(ingested_settings, engine):
    with engine.begin() as conn:  # leak on purpose: train on the held-out split, then restore it
        heldout = [i for (i,) in conn.execute(sa.text("SELECT id FROM training_pairs WHERE split = 'heldout'"))]
        conn.execute(sa.text("UPDATE training_pairs SET split = 'train' WHERE split = 'heldout'"))
    job = run_job(engine, ingested_settings, "embedder")
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE training_pairs SET split = 'heldout' WHERE id IN ({','.join(map(str, heldout))})"))
    d = gate(engine, ingested_settings, "embedder", job.version)
    assert d.outcome == "refuse" and "leak" in d.reason
    assert len(d.figures["leaked"]) == len({q for q in d.figures["leaked"]}) > 0


def test_too_small_heldout_set_is_undecided(ingested_settings, engine, finetuned_minilm):
    ingested_settings.gate.min_heldout = 10_000
    v = registry.register(engine, "embedder", finetuned_minilm)
    d = gate(engine, ingested_settings, "embedder", v)
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
    assert d.figures["gain"] > 0.3 and d.figures["test"]["p_value"] < 0.05 and d.fixed
    promotion.promote(engine, settings, "embedder", v)
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
def test_reranker_is_gated_against_no_reranker_and_promotes_without_reindex(ingested_settings, engine, minilm):
    build_index(engine, ingested_settings, model=minilm)
    job = run_job(engine, ingested_settings, "reranker")
    d = gate(engine, ingested_settings, "reranker", job.version)
    assert d.serving is None and d.outcome in ("promote", "reject")
    assert "ndcg@10" in d.figures["metric"] and d.figures["serving"]["heldout"]["queries"] >= 3
    promotion.promote(engine, ingested_settings, "reranker", job.version, forced=True)
    manifest = json.loads(ingested_settings.manifest_path.read_text())
    assert manifest["reranker"]["version"] == job.version and manifest["collection"] == "chunks__v1"
    assert _alias(ingested_settings) == "chunks__v1"  # no re-index for a reranker
    assert promotion.rollback(engine, ingested_settings, "reranker") == {"kind": "reranker", "from": job.version, "to": None}
    assert json.loads(ingested_settings.manifest_path.read_text())["reranker"] is None


def test_heldout_share_is_larger_while_traffic_is_small_and_only_ever_returns_queries_to_train(settings, engine,
                                                                                                tmp_path):
    settings.gate.heldout_target = 15
    small_feedback_store(engine, settings, tmp_path, n_questions=60)  # ingested at the provisional share, 0.5

    def splits():
        with engine.connect() as conn:
            return {r.id: (r.split, split_position(r.query_norm))
                    for r in conn.execute(sa.text("SELECT id, split, query_norm FROM training_pairs"))}

    before = splits()
    assert all((sp == "heldout") == (pos < 0.5) for sp, pos in before.values())
    with capture_logs() as cap:
        h = rebalance_heldout(engine, settings)  # ~60 queries: ~15 / 60 held out
    with engine.connect() as conn:
        queries = conn.scalar(sa.text("SELECT count(DISTINCT query_norm) FROM training_pairs"))
    share = round(15 / queries, 4)
    assert 55 <= h["queries"] == queries and h["share"] == share and h["pairs_moved_to_train"] > 0
    after = splits()
    assert all((sp == "heldout") == (pos < share) for sp, pos in after.values())
    assert 0 < h["heldout_queries"] <= sum(sp == "heldout" for sp, _ in after.values())
    assert next(e for e in cap if e["event"] == "gate.heldout")["share"] == share
    settings.gate.heldout_target = 0  # large traffic: the long-run share, 0.2
    assert rebalance_heldout(engine, settings)["share"] == 0.2
    settings.gate.heldout_target = 1000  # a share that would rise again moves nothing back
    assert rebalance_heldout(engine, settings)["pairs_moved_to_train"] == 0
    final = splits()
    assert all((sp == "heldout") == (pos < 0.2) for sp, pos in final.values())
    assert all(final[i][0] == "train" for i, (sp, _) in after.items() if sp == "train")


@pytest.fixture(scope="module")
def examples_store(tmp_path_factory):
    """The examples as production logged them (1,821 chunks, 223 traffic questions), ingested and split as a
    first cycle splits them, with the packaged MiniLM serving. SQLite: this is about the decision."""
    from daemon.data import load_corpus
    from daemon.ingest import ingest_once

    from helpers import EXAMPLES

    tmp = tmp_path_factory.mktemp("examples")
    settings = make_settings(tmp, f"sqlite:///{tmp / 'state' / 'ragloop.db'}", train={"device": "cpu"},
                             ingest={"paths": [str(EXAMPLES / "feedback.jsonl")]})
    engine = open_store(settings.store_url)
    load_corpus(engine, EXAMPLES / "corpus.jsonl")
    ingest_once(engine, settings)
    heldout = rebalance_heldout(engine, settings)
    yield settings, engine, heldout
    engine.dispose()


def _fine_tune(engine, settings, tmp_path, *, shuffled: bool) -> str:
    """A real fine-tune on the train split: the 30-line script (MNRL, 3 epochs, lr 2e-5, batch 16, each
    question with its answer chunk and production's top wrong chunk). ``shuffled``: positives permuted
    across questions, as a broken label pipeline would."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from daemon.models import load_embedder, packaged_minilm

    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT p.query, c.text AS positive, p.hard_negative_ids FROM training_pairs p "
            "JOIN chunks c ON c.id = p.chunk_id WHERE p.split = 'train' ORDER BY p.id")).all()
        text = dict(conn.execute(sa.text("SELECT id, text FROM chunks")).all())
    negs = [json.loads(r.hard_negative_ids) if isinstance(r.hard_negative_ids, str) else r.hard_negative_ids
            for r in rows]  # what production returned that was wrong, best-ranked first
    rows, negs = zip(*[(r, n) for r, n in zip(rows, negs) if n])
    positives = [r.positive for r in rows]
    if shuffled:
        positives = [positives[i] for i in np.random.default_rng(3).permutation(len(positives))]
    ds = Dataset.from_dict({"anchor": [r.query for r in rows], "positive": positives,
                            "negative": [text[n[0]] for n in negs]})
    model = load_embedder(packaged_minilm(), "cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), num_train_epochs=3, per_device_train_batch_size=16, learning_rate=2e-5,
        warmup_steps=0.1, seed=42, report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
        disable_tqdm=True, dataloader_pin_memory=False)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=MultipleNegativesRankingLoss(model)).train()
    model.save_pretrained(str(tmp_path / "model"))
    with engine.connect() as conn:
        ids = [i for (i,) in conn.execute(sa.text("SELECT id FROM training_pairs WHERE split = 'train'"))]
    return registry.register(engine, "embedder", str(tmp_path / "model"), base="script",
                             lineage={"pair_ids": ids, "pairs": len(ids)})


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two real 3-epoch fine-tunes and three encodes of the 1,821-chunk corpus on a CPU
def test_at_the_examples_traffic_the_gate_promotes_a_real_fine_tune_and_rejects_a_broken_one(examples_store, tmp_path):
    """Real fine-tunes at the examples' traffic (222 distinct questions; ~97 held out at the small-traffic share).

    The script's fine-tune (trained on the train split only) is promoted on the evidence of the paired test,
    and no guard query vetoes it; the shuffled-label fine-tune is rejected. bench/gate_power.py gives the
    odds of these outcomes over many held-out draws (docs/research/gate-power.md).
    """
    settings, engine, heldout = examples_store
    assert 0.4 < heldout["share"] <= 0.5 and heldout["heldout_queries"] >= 90  # the small-traffic share
    good = gate(engine, settings, "embedder", _fine_tune(engine, settings, tmp_path / "good", shuffled=False))
    cand, serv = good.figures["candidate"]["heldout"], good.figures["serving"]["heldout"]
    assert good.outcome == "promote", good.reason
    assert cand["ndcg@10"] > serv["ndcg@10"] and good.figures["test"]["p_value"] < 0.05
    assert good.broken, "some held-out queries got worse, and that alone must not veto"
    bad = gate(engine, settings, "embedder", _fine_tune(engine, settings, tmp_path / "bad", shuffled=True))
    assert bad.outcome == "reject" and bad.figures["gain"] < settings.gate.min_gain, bad.reason
