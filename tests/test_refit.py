"""Refit after promotion: the promoted recipe retrained on all traffic serves, and what it learned retires."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from daemon.gate import eval_sets, leaked_pairs, retire_heldout
from daemon.models import Scores, query_metrics, registry
from daemon.observe import collect_status, render_status
from daemon.serve import rollback, serving_collection
from daemon.service import run_cycle
from daemon.store import GateDecision, TrainingPair
from daemon.train import check_refit

pairs_t = TrainingPair.__table__


def _scores(ranks: list[int]) -> Scores:
    """Per-query metrics of a ranking that puts each query's answer at ``rank`` (0-based; >= 10: missed)."""
    ids = [f"c{i}" for i in range(10)]
    return Scores([query_metrics(ids, {f"c{r}" if r < 10 else "elsewhere"}) for r in ranks])


def _check(refit_held, gated_held, refit_guard, gated_guard, settings):
    gated = {"heldout": _scores(gated_held), "guard": _scores(gated_guard)}
    refitted = {"heldout": _scores(refit_held), "guard": _scores(refit_guard)}
    return check_refit(gated, refitted, settings)


def test_the_refit_check_passes_a_sound_refit_and_catches_a_broken_one(settings):
    held, guard = [0] * 30 + [2] * 10, [0] * 30 + [1] * 10
    ok, why, figures = _check(held, held, guard, guard, settings)  # level with the gated candidate
    assert ok and "serves in its place" in why and figures["metric"] == "heldout ndcg@10"
    ok, why, _ = _check([0] * 29 + [1] + [2] * 10, held, guard, guard, settings)  # one query one rank lower
    assert ok, why
    ok, why, _ = _check([12] * 40, held, guard, guard, settings)  # lost what the candidate answers
    assert not ok and "the refit broke" in why and "gate.guard_margin 0.02" in why
    ok, why, figures = _check(held, held, [12] * 15 + [0] * 25, guard, settings)  # guard set harmed
    assert not ok and why.startswith("guard ") and figures["guard"]["hit@10"]["p_value"] < 0.05


def _heldout_pair_ids(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.select(pairs_t.c.id).where(pairs_t.c.split == "heldout")))


def _planted(ingested_settings, engine, damaged_minilm, refit: bool, refit_from: str = "start",
             on_stage=lambda stage: None):
    """Production serves a broken embedder (v0); a 2-step fine-tune of the packaged MiniLM must beat it."""
    registry.register(engine, registry.EMBEDDER, damaged_minilm, version=0, status="serving")
    ingested_settings.train.embedder.start_from = "base"
    ingested_settings.train.embedder.refit = refit
    ingested_settings.train.embedder.refit_from = refit_from
    ingested_settings.qdrant.verify_sample = 5
    return run_cycle(engine, ingested_settings, kinds=(registry.EMBEDDER,), on_stage=on_stage)


@pytest.mark.slow
def test_a_promoted_embedder_is_refit_on_all_traffic_and_its_heldout_queries_retire(ingested_settings, engine, damaged_minilm):
    heldout = _heldout_pair_ids(engine)
    assert len(heldout) >= 3
    serving_during_refit = []

    def on_stage(stage: str) -> None:  # what production reads while the refit trains
        if stage.startswith("refitting"):
            serving_during_refit.append((registry.serving(engine, registry.EMBEDDER)["version"],
                                         serving_collection(engine, ingested_settings)["embedder_version"]))

    report = _planted(ingested_settings, engine, damaged_minilm, refit=True, on_stage=on_stage)
    gated, refitted = report.decisions
    assert (gated["mode"], gated["version"], gated["outcome"]) == ("full", 1, "promote")
    assert (refitted["mode"], refitted["version"]) == ("refit", 2)
    assert refitted["outcome"] == "refit", refitted["reason"]  # a 2-step refit is level with the candidate
    assert "refit of v1 on" in refitted["reason"]
    # the gated candidate served (index and all) while its refit trained; then the refit replaced it
    assert serving_during_refit == [(1, 1)]
    assert registry.serving(engine, registry.EMBEDDER)["version"] == 2
    assert serving_collection(engine, ingested_settings)["embedder_version"] == 2
    assert registry.get_version(engine, registry.EMBEDDER, 1)["status"] == "retired"
    stages = [(s["stage"], s.get("mode")) for s in report.stages if s["stage"] in ("reindex", "refit")]
    assert stages == [("reindex", "full"), ("refit", "full"), ("reindex", "refit")]
    first, second = (s["serving_after_s"] for s in report.stages if s["stage"] == "reindex")
    assert 0 < first < second <= next(s["seconds"] for s in report.stages if s["stage"] == "cycle")
    # the refit learned from the held-out queries as well as the train split, and says so
    row = registry.get_version(engine, registry.EMBEDDER, 2)
    training = json.loads((ingested_settings.models_dir / "embedder" / "v2" / "training.json").read_text())
    assert training["refit_of"] == 1 and training["pairs"]["splits"] == ["train", "heldout"]
    # the same recipe beside the same model as its candidate: negatives mined with v0, which served when the
    # candidate trained, not with the candidate that served while the refit trained
    gated_training = json.loads((ingested_settings.models_dir / "embedder" / "v1" / "training.json").read_text())
    assert training["mined_with"] == gated_training["mined_with"]
    assert training["mined_with"]["vectors"] == "embedder-v0"
    assert training["base_path"] == gated_training["base_path"]
    assert heldout <= set(row["lineage"]["pair_ids"]) and row["lineage"]["refit_of"] == 1
    assert not heldout & set(registry.get_version(engine, registry.EMBEDDER, 1)["lineage"]["pair_ids"])
    # ...so they retired to train: no later gate tests a candidate on them, and the refit is no leak
    assert _heldout_pair_ids(engine) == set() and eval_sets(engine)["heldout"].queries == []
    assert leaked_pairs(engine, row["lineage"]) == []
    assert retire_heldout(engine) == 0  # nothing left to retire
    retired = report.heldout["pairs_retired"]
    assert 0 < retired <= len(heldout) and report.heldout["heldout_queries"] == 0
    text = render_status(collect_status(engine, ingested_settings))
    assert f"{retired} pairs retired to train: the serving refit learned from them" in text
    assert "refit of v1 on" in text
    assert [s["stage"] for s in report.stages].count("refit") == 1
    with engine.connect() as conn:
        stored = conn.execute(sa.select(GateDecision.__table__).where(GateDecision.__table__.c.candidate_version == 2)
                              ).mappings().one()
    assert stored["outcome"] == "refit" and stored["figures"]["refit_of"] == 1
    assert stored["serving_version"] == 1  # checked against the gated candidate, which served then
    assert stored["figures"]["pairs"] > stored["figures"]["gated_pairs"]
    # a rollback goes back to the gated candidate, collection and all: it served, and the gate judged it
    assert rollback(engine, ingested_settings, registry.EMBEDDER)["embedder_version"] == 1
    assert registry.serving(engine, registry.EMBEDDER)["version"] == 1


@pytest.mark.slow
def test_without_refit_the_gated_candidate_serves_and_the_heldout_set_stays(ingested_settings, engine, damaged_minilm):
    heldout = _heldout_pair_ids(engine)
    report = _planted(ingested_settings, engine, damaged_minilm, refit=False)
    (gated,) = report.decisions
    assert gated["outcome"] == "promote" and registry.serving(engine, registry.EMBEDDER)["version"] == 1
    assert _heldout_pair_ids(engine) == heldout
    assert "refit" not in [s["stage"] for s in report.stages]


@pytest.mark.slow
def test_a_refit_from_the_candidate_continues_it_on_the_heldout_pairs_and_a_replay_sample(ingested_settings, engine,
                                                                                      damaged_minilm):
    heldout = _heldout_pair_ids(engine)
    ingested_settings.train.embedder.refit_replay = 0.5
    report = _planted(ingested_settings, engine, damaged_minilm, refit=True, refit_from="candidate")
    gated, refitted = report.decisions
    assert gated["outcome"] == "promote" and (refitted["mode"], refitted["version"]) == ("refit", 2)
    row = registry.get_version(engine, registry.EMBEDDER, 2)
    training = json.loads((ingested_settings.models_dir / "embedder" / "v2" / "training.json").read_text())
    # it starts from the gated candidate, not from the candidate's start, and says so in its lineage
    assert row["base"] == "embedder v1" and training["base_path"].endswith("/embedder/v1")
    trained = set(row["lineage"]["pair_ids"])
    gated_pairs = set(registry.get_version(engine, registry.EMBEDDER, 1)["lineage"]["pair_ids"])
    assert heldout <= trained  # every held-out pair...
    assert len(trained - heldout) == round(0.5 * len(heldout))  # ...and half as many train pairs, replayed
    assert trained - heldout <= gated_pairs
    assert training["hyperparameters"]["epochs"] == ingested_settings.train.embedder.refit_epochs
    assert _heldout_pair_ids(engine) == set()  # what it learned from retires, as with a refit from the start
