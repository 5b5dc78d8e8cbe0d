"""One pass of the loop: train embedder and reranker, gate each, promote the winners, publish.

held-out share -> mine -> train embedder -> gate -> (promote: blue/green re-index + manifest)
     -> train reranker -> gate against the now-serving embedder -> (promote: manifest)

train.embedder.mode picks the embedder candidate: "full" (a fine-tune; its promotion re-indexes), "adapter"
(a query-side adapter on the serving embedder; its promotion rewrites the manifest only), or "auto": the
adapter, then the full fine-tune unless its re-index would exceed index.max_reindex_s, both gated, and
the full one promoted only when it gains gate.min_gain more (daemon/gate/decision.py, choose_embedder).

A promoted full fine-tune serves at once, and is then refit (train.embedder.refit): the same recipe trained
again on the train and held-out splits together, which replaces it (a second re-index) if it passes a check
against it (daemon/train/refit.py). Production gains the gated candidate as soon as the gate has judged it,
not after the refit's minutes of training. The held-out queries the refit trained on then retire to train
(gate.retire_heldout); later gates test on newer queries.

The corpus is embedded once per model version: mining reads the serving embedder's cached vectors, the
gate adds the candidate's, and a promotion's re-index upserts those (daemon/models/vectors.py, the cache).

A cold-start reranker (no configured base, none serving) is not trained below train.reranker.min_pairs
train pairs: it cannot win there, and would cost minutes of every cycle. The cycle logs `train.skipped`
and records why in its report, which `ragloop status` shows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.gate.decision import Decision, choose_embedder, gate
from daemon.gate.evaluate import Evaluator
from daemon.gate.heldout import rebalance_heldout, retire_heldout
from daemon.models import apply_retention, registry
from daemon.models.vectors import cache_dir, prune_vectors
from daemon.serve import promotion
from daemon.serve.index import build_index, reindex_estimate_s, serving_collection
from daemon.store.db import LAST_CYCLE, TrainingPair, get_state, put_state, utcnow
from daemon.train.job import cold_start_skip, run_job
from daemon.train.refit import refit

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
    # held-out queries still missing before a candidate can be judged (gate.min_heldout); 0: none
    waiting_for: int = 0
    # model folders retention deleted at the end of the cycle: {"kind", "version", "reason", "freed_mb"}
    deleted: list[dict[str, Any]] = field(default_factory=list)

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
    report.waiting_for = _heldout_missing(settings, report)
    for kind in kinds if not report.waiting_for else ():
        if cancel is not None and cancel.is_set():
            report.skipped = "cancelled"
            break
        why_not = cold_start_skip(engine, settings, kind, report.train_pairs)
        if why_not:
            log.info("train.skipped", kind=kind, reason=why_not, train_pairs=report.train_pairs)
            report.not_trained.append({"kind": kind, "reason": why_not})
            continue
        if kind == registry.EMBEDDER:
            chosen, gated = _embedder_candidates(engine, settings, report, cancel, on_stage)
        else:
            chosen = _train_and_gate(engine, settings, kind, "full", report, cancel, on_stage)
            gated = [("full", chosen)]
        if chosen is not None and chosen.promote:
            mode = next(m for m, d in gated if d is chosen)
            _promote(engine, settings, chosen, mode, report, on_stage, t0)
            if kind == registry.EMBEDDER and mode == "full" and settings.train.embedder.refit and chosen.promote:
                refitted = _refit(engine, settings, chosen, report, cancel, on_stage, gated)
                if refitted is not None:
                    _promote(engine, settings, refitted, "refit", report, on_stage, t0)
        report.decisions += [{"kind": kind, "mode": m, "version": d.candidate, "outcome": d.outcome,
                              "reason": d.reason, "decision_id": d.id} for m, d in gated]
    retired = retire_heldout(engine)  # what a refit that now serves trained on tests nothing from here on
    if retired:
        report.heldout = rebalance_heldout(engine, settings) | {"pairs_retired": retired}
    # corpus vectors of a rejected candidate or a replaced model are never read again; the serving
    # embedder's are what the next cycle's mining and gate start from
    serving = registry.serving(engine, registry.EMBEDDER)
    prune_vectors(cache_dir(settings), {"embedder-v0", registry.vector_key(serving)})
    report.deleted = apply_retention(engine, settings)
    return _finish(engine, report, t0)


def _heldout_missing(settings: Settings, report: CycleReport) -> int:
    """Held-out queries the gate still lacks to judge a candidate: a cycle below gate.min_heldout trains none.

    Below it the gate can only answer "undecided" (and gate_power measured its power at n = 20 at 0.2-0.3 for a
    first cycle's gain), so training would spend the cycle's minutes on a candidate nobody can judge. This
    happens after a refit, whose held-out queries retire, until new traffic refills the held-out set.
    """
    have = report.heldout.get("heldout_queries", 0)
    need = max(0, settings.gate.min_heldout - have)
    if need:
        why = (f"waiting for {need} more held-out queries: the held-out set has {have}, gate.min_heldout is "
               f"{settings.gate.min_heldout}; new real traffic is held out at {report.heldout.get('share', 0):.0%}")
        report.not_trained.append({"kind": "candidates", "reason": why})
        log.info("cycle.waiting", heldout_queries=have, needed=need, reason=why)
    return need


def _train_and_gate(engine: Engine, settings: Settings, kind: str, mode: str, report: CycleReport,
                    cancel: threading.Event | None, on_stage: Callable[[str], None]) -> Decision:
    """Train one candidate (a ``mode`` job), gate it against what serves, and time both."""
    label = kind if mode == "full" else f"{kind} ({mode})"
    on_stage(f"training {label}")
    t = time.monotonic()
    job = run_job(engine, settings, kind, cancel=cancel, mode=mode)
    mining_s = job.training.get("mining_s") or 0.0  # inside the training child, before its trainer
    report.stages += [{"stage": "mining", "kind": kind, "mode": mode, "seconds": mining_s},
                      {"stage": "training", "kind": kind, "mode": mode,
                       "seconds": round(time.monotonic() - t - mining_s, 3)}]
    on_stage(f"gating {label} v{job.version}")
    t = time.monotonic()
    decision = gate(engine, settings, kind, job.version, evaluator=Evaluator(engine, settings))
    report.stages.append({"stage": "gate", "kind": kind, "mode": mode, "seconds": round(time.monotonic() - t, 3)})
    registry.set_metrics(engine, kind, job.version, decision.figures.get("candidate", {}))
    return decision


def _embedder_candidates(engine: Engine, settings: Settings, report: CycleReport, cancel: threading.Event | None,
                         on_stage: Callable[[str], None]) -> tuple[Decision | None, list[tuple[str, Decision]]]:
    """The embedder candidate(s) of train.embedder.mode, gated: (the one to promote, or None; all, by mode)."""
    mode = settings.train.embedder.mode
    if mode != "auto":
        d = _train_and_gate(engine, settings, registry.EMBEDDER, mode, report, cancel, on_stage)
        return d, [(mode, d)]
    adapter = _train_and_gate(engine, settings, registry.EMBEDDER, "adapter", report, cancel, on_stage)
    estimate = reindex_estimate_s(engine, settings)
    too_slow = estimate is not None and estimate > settings.index.max_reindex_s
    if too_slow:
        why = (f"full fine-tune not trained: its corpus encode would take ~{estimate:.0f} s at the measured rate, "
               f"over index.max_reindex_s {settings.index.max_reindex_s:.0f} s; the query adapter needs none")
        log.info("train.skipped", kind=registry.EMBEDDER, mode="full", reason=why, reindex_estimate_s=estimate)
        report.not_trained.append({"kind": "embedder (full)", "reason": why})
    if too_slow or (cancel is not None and cancel.is_set()):
        return (adapter if adapter.promote else None), [("adapter", adapter)]
    full = _train_and_gate(engine, settings, registry.EMBEDDER, "full", report, cancel, on_stage)
    return choose_embedder(engine, settings, adapter, full), [("adapter", adapter), ("full", full)]


def _refit(engine: Engine, settings: Settings, promoted: Decision, report: CycleReport,
           cancel: threading.Event | None, on_stage: Callable[[str], None], gated: list[tuple[str, Decision]]
           ) -> Decision | None:
    """The refit of ``promoted`` (now serving) on all traffic when it passed its check (daemon/train/refit.py),
    to serve in its place; else None. The refit's decision joins ``gated`` as mode "refit"."""
    on_stage(f"refitting embedder v{promoted.candidate} on all traffic")
    t = time.monotonic()
    d = refit(engine, settings, promoted, cancel=cancel)
    report.stages.append({"stage": "refit", "kind": registry.EMBEDDER, "mode": "full",
                          "seconds": round(time.monotonic() - t, 3)})
    if d is None:
        return None
    gated.append(("refit", d))
    return d if d.outcome == "refit" else None


def _promote(engine: Engine, settings: Settings, d: Decision, mode: str, report: CycleReport,
             on_stage: Callable[[str], None], t0: float) -> None:
    """Make ``d``'s candidate serve; an embedder's promotion is timed in the report (stage "reindex" for a full
    fine-tune or a refit, "promote" for an adapter) with ``serving_after_s``, when it served since the cycle began.
    A failed promotion leaves what served before serving: the decision says so and the cycle goes on."""
    reindex = d.kind == registry.EMBEDDER and mode in ("full", "refit")
    on_stage(f"promoting {d.kind} v{d.candidate}" + (" (re-indexing)" if reindex else ""))
    t = time.monotonic()
    try:
        promotion.promote(engine, settings, d.kind, d.candidate)
    except Exception as exc:
        log.error("cycle.promote_failed", kind=d.kind, version=d.candidate, error=str(exc))
        d.outcome, d.reason = "reject", f"promotion failed: {exc}"
    if d.kind == registry.EMBEDDER:
        now = time.monotonic()
        report.stages.append({"stage": "reindex" if reindex else "promote", "kind": d.kind, "mode": mode,
                              "seconds": round(now - t, 3), "serving_after_s": round(now - t0, 3)})


def cycle_due(engine: Engine, settings: Settings, force: bool = False) -> tuple[bool, str]:
    """(due, why): enough new train pairs since the last cycle, and not too soon after it.

    ``force`` (the cron trigger) skips the new-pairs minimum, not the minimum interval.
    """
    sc = settings.schedule
    last = get_state(engine, LAST_CYCLE)
    train = train_pair_count(engine)
    if train == 0:
        return False, "no train pairs yet"
    if last is not None:
        age = (utcnow() - _parse(last["started_at"])).total_seconds()
        if age < sc.min_cycle_interval_s:
            return False, f"last cycle {age:.0f}s ago < schedule.min_cycle_interval_s"
    new = train - (last or {}).get("train_pairs", 0)
    if force:
        return True, f"scheduled, {new} new train pairs"
    if new < sc.min_new_pairs:
        return False, f"{new} new train pairs < schedule.min_new_pairs={sc.min_new_pairs}"
    return True, f"{new} new train pairs"


def _parse(iso: str) -> datetime:
    ts = datetime.fromisoformat(iso)
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


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
