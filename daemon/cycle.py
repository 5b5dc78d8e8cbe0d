"""One pass of the loop: train embedder and reranker, gate each, promote the winners, publish.

held-out share -> mine -> train embedder -> gate -> (promote: blue/green re-index + manifest)
     -> train reranker -> gate against the now-serving embedder -> (promote: manifest)

The corpus is embedded once per model version: mining reads the serving embedder's cached vectors, the
gate adds the candidate's, and a promotion's re-index upserts those (daemon/evaluate.py, the cache).

A cold-start reranker (no configured base, none serving) is not trained below train.reranker.min_pairs
train pairs: it cannot win there, and would cost minutes of every cycle. The cycle logs `train.skipped`
and records why in its report, which `ragloop status` shows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon import registry
from daemon.config import Settings
from daemon.evaluate import Evaluator, cache_dir, prune_vectors
from daemon.gate import Decision, gate, rebalance_heldout
from daemon.index import build_index, serving_collection
from daemon.store import LAST_CYCLE, TrainingPair, put_state, utcnow
from daemon.train import cold_start_skip, run_job

log = structlog.get_logger(__name__)


@dataclass
class CycleReport:
    started_at: str
    duration_s: float = 0.0
    train_pairs: int = 0
    heldout: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    # wall time of each stage: {"stage": "mining" | "training" | "gate" | "reindex" | "cycle", "kind", "seconds"}
    stages: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    # kinds this cycle chose not to train, with why: {"kind", "reason"}
    not_trained: list[dict[str, str]] = field(default_factory=list)

    def timed(self, stage: str, kind: str | None, t0: float) -> None:
        self.stages.append({"stage": stage, "kind": kind, "seconds": round(time.monotonic() - t0, 3)})

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_cycle(engine: Engine, settings: Settings, *, cancel: threading.Event | None = None,
              kinds: tuple[str, ...] = (registry.EMBEDDER, registry.RERANKER),
              on_stage: Callable[[str], None] = lambda stage: None) -> CycleReport:
    """Train, gate and promote each kind once. Returns what happened, also stored as `cycle.last`.

    ``cancel`` stops a training child (nothing registered) and skips what has not started; a promotion
    in progress (re-index and alias swap) always runs to its end.
    """
    t0 = time.monotonic()
    report = CycleReport(started_at=utcnow().isoformat())
    report.heldout = rebalance_heldout(engine, settings)  # before training: the surplus is training data
    report.train_pairs = train_pair_count(engine)
    if report.train_pairs == 0:
        report.skipped = "no train pairs yet: ingest feedback first"
        log.info("cycle.skipped", reason=report.skipped)
        return _finish(engine, report, t0)
    registry.ensure_base_embedder(engine, settings)
    if serving_collection(engine, settings) is None:
        on_stage("building the first index")
        build_index(engine, settings)  # production needs an index before anything can be promoted into it
    for kind in kinds:
        if cancel is not None and cancel.is_set():
            report.skipped = "cancelled"
            break
        why_not = cold_start_skip(engine, settings, kind, report.train_pairs)
        if why_not:
            log.info("train.skipped", kind=kind, reason=why_not, train_pairs=report.train_pairs)
            report.not_trained.append({"kind": kind, "reason": why_not})
            continue
        on_stage(f"training {kind}")
        t = time.monotonic()
        job = run_job(engine, settings, kind, cancel=cancel)
        mining_s = job.training.get("mining_s") or 0.0  # inside the training child, before its trainer
        report.stages += [{"stage": "mining", "kind": kind, "seconds": mining_s},
                          {"stage": "training", "kind": kind, "seconds": round(time.monotonic() - t - mining_s, 3)}]
        on_stage(f"gating {kind} v{job.version}")
        t = time.monotonic()
        decision = gate(engine, settings, kind, job.version, evaluator=Evaluator(engine, settings))
        report.timed("gate", kind, t)
        registry.set_metrics(engine, kind, job.version, decision.figures.get("candidate", {}))
        if decision.promote:
            on_stage(f"promoting {kind} v{job.version}" + (" (re-indexing)" if kind == registry.EMBEDDER else ""))
            t = time.monotonic()
            _promote(engine, settings, decision)
            if kind == registry.EMBEDDER:
                report.timed("reindex", kind, t)
        report.decisions.append({"kind": kind, "version": job.version, "outcome": decision.outcome,
                                 "reason": decision.reason, "decision_id": decision.id})
    # corpus vectors of a rejected candidate or a replaced model are never read again; the serving
    # embedder's are what the next cycle's mining and gate start from
    serving = registry.serving(engine, registry.EMBEDDER)
    prune_vectors(cache_dir(settings), {"embedder-v0", f"embedder-v{serving['version']}"})
    return _finish(engine, report, t0)


def _promote(engine: Engine, settings: Settings, d: Decision) -> None:
    try:
        registry.promote(engine, settings, d.kind, d.candidate)
    except Exception as exc:  # a failed re-index leaves the old model serving; say so and go on
        log.error("cycle.promote_failed", kind=d.kind, version=d.candidate, error=str(exc))
        d.outcome, d.reason = "reject", f"promotion failed: {exc}"


def train_pair_count(engine: Engine) -> int:
    t = TrainingPair.__table__
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).where(t.c.split == "train"))


def _finish(engine: Engine, report: CycleReport, t0: float) -> CycleReport:
    report.duration_s = round(time.monotonic() - t0, 1)
    report.timed("cycle", None, t0)
    put_state(engine, LAST_CYCLE, report.as_dict())
    log.info("cycle.done", duration_s=report.duration_s, train_pairs=report.train_pairs,
             decisions=[f"{d['kind']} v{d['version']}: {d['outcome']}" for d in report.decisions],
             not_trained=[d["kind"] for d in report.not_trained], skipped=report.skipped)
    return report
