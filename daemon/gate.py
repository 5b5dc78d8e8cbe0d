"""Gate: promote a candidate only if it is better than what serves, and breaks nothing that worked.

The candidate is compared with the **serving** model, not the last candidate: a chain of candidates
that each beat their predecessor by noise could otherwise drift below what production has. Both are
scored on the same query sets in the same run. A candidate is promoted only if
  - it was not trained on any held-out query (a leak makes every figure meaningless: refused);
  - the held-out set is large enough to decide (`gate.min_heldout`; otherwise undecided);
  - its primary metric rises by at least `gate.min_gain`;
  - no guard metric drops by more than `gate.max_guard_drop`;
  - a paired bootstrap over queries puts the lower confidence bound of the gain above zero.
Every decision is stored and logged with all figures, its reason and the queries fixed and broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon import registry
from daemon.config import Settings
from daemon.evaluate import METRICS, Evaluator, Scores, summary
from daemon.models import load_embedder
from daemon.pairs import split_key
from daemon.store import GateDecision, TrainingPair, utcnow, write_tx

log = structlog.get_logger(__name__)
pairs_t, decisions_t = TrainingPair.__table__, GateDecision.__table__


@dataclass
class Decision:
    kind: str
    candidate: int
    serving: int | None
    outcome: str  # "promote" | "reject" | "refuse" | "undecided"
    reason: str
    figures: dict[str, Any]
    fixed: list[str]
    broken: list[str]
    id: int | None = None

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"


def leaked_pairs(engine: Engine, lineage: dict[str, Any] | None) -> list[str]:
    """Held-out queries a candidate was trained on: by pair id, or by the split key of its queries."""
    trained = set((lineage or {}).get("pair_ids", []))
    if not trained:
        return []
    with engine.connect() as conn:
        rows = conn.execute(sa.select(pairs_t.c.id, pairs_t.c.query, pairs_t.c.query_norm, pairs_t.c.split)).all()
    heldout_keys = {split_key(r.query_norm): r.query for r in rows if r.split == "heldout"}
    leaks = [r.query for r in rows if r.id in trained and r.split == "heldout"]
    leaks += [heldout_keys[k] for r in rows if r.id in trained and r.split != "heldout"
              and (k := split_key(r.query_norm)) in heldout_keys]
    return sorted(set(leaks))


def bootstrap_lower_bound(cand: np.ndarray, serv: np.ndarray, samples: int, confidence: float, seed: int) -> dict[str, float]:
    """Paired bootstrap over queries of the mean gain; returns the mean and the confidence interval."""
    diff = cand - serv
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(samples, len(diff)))
    means = diff[idx].mean(axis=1)
    alpha = 1 - confidence
    return {"mean_gain": round(float(diff.mean()), 4), "lower": round(float(np.quantile(means, alpha)), 4),
            "upper": round(float(np.quantile(means, 1 - alpha)), 4), "samples": samples, "confidence": confidence}


def decide(kind: str, cand: dict[str, Scores], serv: dict[str, Scores], settings: Settings, queries: list[str]
           ) -> tuple[str, str, dict[str, Any], list[str], list[str]]:
    """Outcome, reason, figures, fixed and broken queries for scored candidate vs serving."""
    g = settings.gate
    metric = g.embedder_metric if kind == registry.EMBEDDER else g.reranker_metric
    c, s = cand["heldout"].column(metric), serv["heldout"].column(metric)
    fixed = [q for q, a, b in zip(queries, c, s) if a > b]
    broken = [q for q, a, b in zip(queries, c, s) if a < b]
    boot = bootstrap_lower_bound(c, s, g.bootstrap_samples, g.confidence, g.seed)
    gain = round(float(c.mean() - s.mean()), 4)
    drops = {f"guard {m}": round(serv["guard"].mean()[m] - cand["guard"].mean()[m], 4)
             for m in METRICS if len(cand["guard"].per_query)}
    worst = max(drops.items(), key=lambda kv: kv[1], default=("guard", 0.0))
    figures = {"metric": f"heldout {metric}", "gain": gain, "bootstrap": boot, "guard_drops": drops,
               "candidate": summary(cand), "serving": summary(serv)}
    if gain < g.min_gain:
        return "reject", f"heldout {metric} gain {gain:+.4f} < gate.min_gain {g.min_gain}", figures, fixed, broken
    if worst[1] > g.max_guard_drop:
        return "reject", f"{worst[0]} dropped {worst[1]:.4f} > gate.max_guard_drop {g.max_guard_drop}", figures, fixed, broken
    if boot["lower"] <= 0:
        return ("reject", f"heldout {metric} gain {gain:+.4f} is not significant: bootstrap lower bound "
                f"{boot['lower']:+.4f} <= 0", figures, fixed, broken)
    return ("promote", f"heldout {metric} {gain:+.4f} (bootstrap lower bound {boot['lower']:+.4f}), "
            f"worst guard drop {worst[1]:.4f}", figures, fixed, broken)


def gate(engine: Engine, settings: Settings, kind: str, version: int, *, evaluator: Evaluator | None = None) -> Decision:
    """Score candidate ``kind`` v``version`` against the serving model and record the decision."""
    cand_row = registry.get_version(engine, kind, version)
    if cand_row is None:
        raise KeyError(f"no {kind} version {version}")
    serving_emb = registry.ensure_base_embedder(engine, settings)
    serving_row = serving_emb if kind == registry.EMBEDDER else registry.serving(engine, kind)
    ev = evaluator or Evaluator(engine, settings)
    heldout = ev.sets["heldout"]
    leaks = leaked_pairs(engine, cand_row["lineage"])
    if leaks:
        return _record(engine, Decision(kind, version, _v(serving_row), "refuse",
                                        f"trained on {len(leaks)} held-out quer{'y' if len(leaks) == 1 else 'ies'} "
                                        f"(leak), e.g. {leaks[0]!r}", {"leaked": leaks[:20]}, [], []), ev)
    if len(heldout) < settings.gate.min_heldout:
        return _record(engine, Decision(kind, version, _v(serving_row), "undecided",
                                        f"held-out set has {len(heldout)} queries, gate.min_heldout is "
                                        f"{settings.gate.min_heldout}: not enough to decide", {}, [], []), ev)
    cand, serv = _score_both(ev, settings, kind, cand_row, serving_row, serving_emb)
    outcome, reason, figures, fixed, broken = decide(kind, cand, serv, settings, heldout.queries)
    return _record(engine, Decision(kind, version, _v(serving_row), outcome, reason, figures, fixed, broken), ev)


def _v(row: dict[str, Any] | None) -> int | None:
    return None if row is None else row["version"]


def _score_both(ev: Evaluator, settings: Settings, kind: str, cand_row, serving_row, serving_emb):
    t = settings.train
    emb_model = load_embedder(serving_emb["path"], t.device, t.trust_remote_code)
    emb_key = f"embedder-v{serving_emb['version']}"
    if kind == registry.EMBEDDER:
        cand_model = load_embedder(cand_row["path"], t.device, t.trust_remote_code)
        return (ev.embedder_scores(f"embedder-v{cand_row['version']}", cand_model),
                ev.embedder_scores(emb_key, emb_model))
    return (ev.pipeline_scores(emb_key, emb_model, load_reranker(cand_row["path"], settings)),
            ev.pipeline_scores(emb_key, emb_model, load_reranker(serving_row["path"], settings) if serving_row else None))


def load_reranker(path: str, settings: Settings):
    from sentence_transformers.cross_encoder import CrossEncoder

    from daemon.models import pick_device

    return CrossEncoder(path, device=pick_device(settings.train.device),
                        trust_remote_code=settings.train.trust_remote_code, model_kwargs={"use_safetensors": True})


def _record(engine: Engine, d: Decision, ev: Evaluator) -> Decision:
    with write_tx(engine) as conn:
        d.id = conn.execute(decisions_t.insert().values(
            kind=d.kind, candidate_version=d.candidate, serving_version=d.serving, outcome=d.outcome,
            reason=d.reason, figures=d.figures, fixed=d.fixed, broken=d.broken,
            eval_pair_ids={n: s.pair_ids for n, s in ev.sets.items()}, created_at=utcnow(),
        )).inserted_primary_key[0]
    log.info("gate.decision", kind=d.kind, candidate=d.candidate, serving=d.serving, outcome=d.outcome,
             reason=d.reason, promoted=d.promote, gain=d.figures.get("gain"),
             lower_bound=d.figures.get("bootstrap", {}).get("lower"), fixed=len(d.fixed), broken=len(d.broken),
             candidate_heldout=d.figures.get("candidate", {}).get("heldout"),
             serving_heldout=d.figures.get("serving", {}).get("heldout"))
    if d.outcome in ("reject", "refuse"):
        registry.set_status(engine, d.kind, d.candidate, "rejected")
    return d
