"""Refit after promotion: the promoted recipe, trained again on every real query, is what serves.

The gate must test a candidate on queries it never trained on, so while traffic is small the candidate
learns from only about half of it (gate.heldout_target holds up to half out). Once the gate has shown on
those held-out queries that the candidate beats what serves, they have done their job: a one-shot script
would have trained on all of them. So, when train.embedder.refit is on (the default; the measured reason is
in config.toml and docs/research/loop-quality.md), after the gate promotes a full fine-tune, the same recipe
is trained again on the train and held-out splits together (the usual refit on all data once a model has
been selected: from the candidate's start, or, with train.embedder.refit_from = "candidate", continued from
the candidate on the held-out pairs and a replay sample of the train split). The gated candidate serves
meanwhile (daemon/service/cycle.py promotes it first), and the refit replaces it if it passes a check
against it:

  1. held-out {gate.embedder_metric}: refit >= candidate - gate.guard_margin. The refit has trained on these
     queries, so this is no evidence that it generalizes; it catches a refit that broke (falling short of
     a model that never saw them);
  2. the gate's guard test (daemon/gate/decision.py) on the guard set, which neither trained on: no guard metric of
     the refit below the candidate's beyond gate.guard_margin with p < 1 - gate.confidence.

A refit that fails the check, or whose training fails, is rejected, and the gated candidate goes on
serving. Either way the decision is stored with the gate's (outcome "refit" or "reject"), against the
gated candidate as the serving version it was checked against.

What the refit learned from can never test anything again: `gate.retire_heldout` moves the held-out
queries of what serves to train, so later candidates are gated on queries that arrived after this
promotion (test, then train on each query: prequential evaluation).
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.gate.decision import Decision, guard_tests, guard_veto, record
from daemon.gate.evaluate import Evaluator, summary
from daemon.models import registry
from daemon.models.load import load_embedder
from daemon.models.metrics import Scores
from daemon.train.job import TrainCancelled, TrainError, run_job

log = structlog.get_logger(__name__)


def refit(engine: Engine, settings: Settings, promoted: Decision, *, cancel: threading.Event | None = None
          ) -> Decision | None:
    """Train the refit of the embedder ``promoted`` by the gate, check it, and record the decision.

    Returns the refit's decision (outcome "refit": serve it instead; "reject": ``promoted`` serves on), or None
    when no refit was trained (cancelled, or the training child failed: logged).
    """
    try:
        # beside the embedder the candidate trained beside (start, mined negatives), not the candidate now serving
        job = run_job(engine, settings, registry.EMBEDDER, cancel=cancel, refit_of=promoted.candidate,
                      serving_version=promoted.serving)
    except TrainCancelled:
        return None
    except TrainError as exc:  # the gated candidate still serves: a refit is an improvement, not a need
        log.error("refit.failed", candidate=promoted.candidate, error=str(exc))
        return None
    ev = Evaluator(engine, settings)
    gated_row = registry.get_version(engine, registry.EMBEDDER, promoted.candidate)
    gated = _scores(ev, settings, gated_row)
    refitted = _scores(ev, settings, registry.get_version(engine, registry.EMBEDDER, job.version))
    passed, reason, figures = check_refit(gated, refitted, settings)
    figures.update(refit_of=promoted.candidate, pairs=job.training["pairs"]["total"],
                   gated_pairs=len((gated_row.get("lineage") or {}).get("pair_ids", [])))
    reason = (f"refit of v{promoted.candidate} on {figures['pairs']} pairs (the gated candidate: "
              f"{figures['gated_pairs']}): {reason}")
    d = record(engine, Decision(registry.EMBEDDER, job.version, promoted.candidate, "refit" if passed else "reject",
                                reason, figures, [], []), ev)
    return d  # no registry metrics: its held-out figures are on queries it trained on


def check_refit(gated: dict[str, Scores], refitted: dict[str, Scores], settings: Settings
          ) -> tuple[bool, str, dict[str, Any]]:
    """(passed, why, figures) of the refit's check against the gated candidate (module docstring)."""
    g = settings.gate
    metric = g.embedder_metric
    c, r = gated["heldout"].mean()[metric], refitted["heldout"].mean()[metric]
    guard = guard_tests(refitted["guard"], gated["guard"], g.guard_metrics, g.guard_margin, g.permutation_samples,
                        g.seed)
    alpha = round(1 - g.confidence, 6)
    figures = {"metric": f"heldout {metric}", "check": {"refit": summary(refitted), "gated": summary(gated)},
               "guard": {m: t.as_dict() for m, t in guard.items()}, "guard_margin": g.guard_margin}
    if r < c - g.guard_margin:
        return False, (f"held-out {metric} {r:.4f} < the gated candidate's {c:.4f} - gate.guard_margin "
                       f"{g.guard_margin}, on queries it trained on: the refit broke"), figures
    veto = guard_veto(guard, alpha)
    if veto:
        return False, f"{veto}, against the gated candidate", figures
    return True, (f"held-out {metric} {r:.4f} (trained on) vs the gated candidate's {c:.4f}; no guard drop "
                  f"beyond {g.guard_margin}: serves in its place"), figures


def _scores(ev: Evaluator, settings: Settings, row: dict[str, Any]) -> dict[str, Scores]:
    t = settings.train
    return ev.embedder_scores(registry.vector_key(row), load_embedder(registry.model_path(settings, row), t.device,
                                                                      t.trust_remote_code))
