"""Gate: promote a candidate only on evidence that it is better than what serves and breaks nothing.

The candidate is compared with the **serving** model, not the last candidate: a chain of candidates
that each beat their predecessor by noise could otherwise drift below what production has. Both are
scored on the same query sets in the same run, so every comparison is paired per query.

The rule (docs/architecture.md, "Gate"), each test one-sided at level a = 1 - gate.confidence (0.05), n = the set's size:
  1. refuse a candidate trained on any held-out query (a leak makes every figure meaningless);
  2. undecided below gate.min_heldout held-out queries;
  3. gain: d_i = candidate - serving on the primary metric (default nDCG@10: graded, so a move from rank
     3 to 1 counts, where hit@10 on FAQ-like traffic is saturated and has no power at small n).
     A reranker is scored as it would serve: fused with the first stage at its validated weight.
     Reject when the mean gain is below gate.min_gain; promote only when the paired sign-flip test of
     H0: mean(d) <= 0 has p < a; otherwise undecided, with the held-out size this effect would need;
  4. guard (non-inferiority, burden on the evidence of harm): for each guard metric, veto only when the
     test of H0: mean(serving - candidate) <= gate.guard_margin has p < a, i.e. the data show a drop
     beyond the margin. One query moving one rank is never such evidence.
Only real traffic decides: synthetic questions sit in the guard set, never in the held-out set.
Every decision is stored and logged with all figures, its reason and the queries fixed and broken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.data.pairs import split_key
from daemon.errors import RegistryError
from daemon.gate.evaluate import Evaluator, summary
from daemon.gate.significance import PairedTest, queries_needed, sign_flip_test
from daemon.models import registry
from daemon.models.fusion import model_weight
from daemon.models.load import load_embedder, load_reranker
from daemon.models.metrics import Scores
from daemon.store.db import GateDecision, TrainingPair, utcnow, write_tx

log = structlog.get_logger(__name__)
pairs_t, decisions_t = TrainingPair.__table__, GateDecision.__table__


@dataclass
class Decision:
    kind: str
    candidate: int
    serving: int | None
    outcome: str  # "promote" | "reject" | "refuse" | "undecided"; "refit" (daemon/train/refit.py): serves in place of the promoted one
    reason: str
    figures: dict[str, Any]
    fixed: list[str]
    broken: list[str]
    id: int | None = None

    @property
    def promote(self) -> bool:
        return self.outcome in ("promote", "refit")


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


def decide(kind: str, cand: dict[str, Scores], serv: dict[str, Scores], settings: Settings, queries: list[str]
           ) -> tuple[str, str, dict[str, Any], list[str], list[str]]:
    """Outcome, reason, figures, fixed and broken queries for a scored candidate vs serving (rule above)."""
    g = settings.gate
    metric = g.embedder_metric if kind == registry.EMBEDDER else g.reranker_metric
    c, s = cand["heldout"].column(metric), serv["heldout"].column(metric)
    fixed = [q for q, a, b in zip(queries, c, s) if a > b]
    broken = [q for q, a, b in zip(queries, c, s) if a < b]
    alpha = round(1 - g.confidence, 6)
    test = sign_flip_test(c - s, 0.0, g.permutation_samples, g.seed)
    needed = queries_needed(test.mean, test.sd, alpha)
    guard = guard_tests(cand["guard"], serv["guard"], g.guard_metrics, g.guard_margin, g.permutation_samples, g.seed)
    figures = {"metric": f"heldout {metric}", "gain": round(test.mean, 4), "alpha": alpha,
               "test": {**test.as_dict(), "name": "paired sign-flip, one-sided"}, "queries_needed": needed,
               "guard": {m: t.as_dict() for m, t in guard.items()}, "guard_margin": g.guard_margin,
               "candidate": summary(cand), "serving": summary(serv)}
    outcome, reason = _rule(metric, test, guard, needed, alpha, g.min_gain, g.guard_margin)
    return outcome, reason, figures, fixed, broken


def guard_tests(cand: Scores, serv: Scores, metrics: list[str], margin: float, samples: int, seed: int
                ) -> dict[str, PairedTest]:
    """Per guard metric, the test of H0: the drop (serving - candidate) is at most ``margin``."""
    if not cand.per_query:
        return {}
    return {m: sign_flip_test(serv.column(m) - cand.column(m), margin, samples, seed) for m in metrics}


def guard_veto(guard: dict[str, PairedTest], alpha: float) -> str | None:
    """Why the guard tests veto (the worst significant drop beyond the margin), or None."""
    harmed = [(m, t) for m, t in guard.items() if t.p_value < alpha]
    if not harmed:
        return None
    m, t = max(harmed, key=lambda mt: mt[1].mean)
    return f"guard {m} fell {t.mean:.4f} over {t.n} queries, beyond gate.guard_margin {t.shift} (p={t.p_value:.3f} < {alpha})"


def _rule(metric: str, test: PairedTest, guard: dict[str, PairedTest], needed: int | None, alpha: float,
          min_gain: float, margin: float) -> tuple[str, str]:
    gain = f"heldout {metric} {test.mean:+.4f} over {test.n} queries"
    veto = guard_veto(guard, alpha)
    if veto:
        return "reject", veto
    if test.mean < min_gain:
        return "reject", f"{gain}: below gate.min_gain {min_gain}, too small to be worth a promotion"
    if test.p_value >= alpha:
        more = f"~{needed} held-out queries ({needed - test.n} more)" if needed else "more held-out queries"
        return "undecided", (f"{gain} is not significant (p={test.p_value:.3f} >= {alpha}); an effect this size "
                             f"needs {more} at 80% power")
    shown = f"{margin} shown" if guard else "the margin (no guard queries)"
    return "promote", f"{gain} (p={test.p_value:.4f} < {alpha}); no guard drop beyond {shown}"


def gate(engine: Engine, settings: Settings, kind: str, version: int, *, evaluator: Evaluator | None = None) -> Decision:
    """Score candidate ``kind`` v``version`` against the serving model and record the decision."""
    cand_row = registry.get_version(engine, kind, version)
    if cand_row is None:
        raise RegistryError(f"no {kind} version {version}; `ragloop models` lists the versions there are")
    serving_emb = registry.ensure_base_embedder(engine, settings)
    serving_row = serving_emb if kind == registry.EMBEDDER else registry.serving(engine, kind)
    ev = evaluator or Evaluator(engine, settings)
    heldout = ev.sets["heldout"]
    leaks = leaked_pairs(engine, cand_row["lineage"])
    if leaks:
        return record(engine, Decision(kind, version, _v(serving_row), "refuse",
                                        f"trained on {len(leaks)} held-out quer{'y' if len(leaks) == 1 else 'ies'} "
                                        f"(leak), e.g. {leaks[0]!r}", {"leaked": leaks[:20]}, [], []), ev)
    if len(heldout) < settings.gate.min_heldout:
        return record(engine, Decision(kind, version, _v(serving_row), "undecided",
                                        f"held-out set has {len(heldout)} queries, gate.min_heldout is "
                                        f"{settings.gate.min_heldout}: not enough to decide; the held-out set "
                                        "grows with traffic", {}, [], []), ev)
    cand, serv = _score_both(ev, settings, kind, cand_row, serving_row, serving_emb)
    outcome, reason, figures, fixed, broken = decide(kind, cand, serv, settings, heldout.queries)
    return record(engine, Decision(kind, version, _v(serving_row), outcome, reason, figures, fixed, broken), ev)


def choose_embedder(engine: Engine, settings: Settings, adapter: Decision, full: Decision) -> Decision | None:
    """train.embedder.mode "auto": which of a query adapter and a full fine-tune gated in the same cycle to
    promote (None: neither). Both were tested against what serves on the same held-out queries. The full one
    must gain at least gate.min_gain more on the primary metric than the adapter, because its promotion
    re-indexes the corpus and the adapter's rewrites the manifest only; the other is overruled (rejected,
    with why), so one cycle never promotes two embedders."""
    if not (adapter.promote and full.promote):
        return adapter if adapter.promote else full if full.promote else None
    a, f, margin = adapter.figures["gain"], full.figures["gain"], settings.gate.min_gain
    if f >= a + margin:
        overrule(engine, adapter, f"the full fine-tune v{full.candidate} gained {f:+.4f}, at least gate.min_gain "
                                  f"{margin} more than this adapter's {a:+.4f}: worth its re-index")
        return full
    overrule(engine, full, f"the query adapter v{adapter.candidate} gained {a:+.4f}, within gate.min_gain {margin} "
                           f"of this fine-tune's {f:+.4f}, and needs no re-index")
    return adapter


def overrule(engine: Engine, d: Decision, reason: str) -> None:
    """Turn a promotable decision into a rejection (a better candidate of the same cycle won), stored."""
    d.outcome, d.reason = "reject", f"{reason} (the gate alone: {d.reason})"
    with write_tx(engine) as conn:
        conn.execute(decisions_t.update().where(decisions_t.c.id == d.id).values(outcome=d.outcome, reason=d.reason))
    registry.set_status(engine, d.kind, d.candidate, "rejected")
    log.info("gate.overruled", kind=d.kind, candidate=d.candidate, reason=reason)


def _v(row: dict[str, Any] | None) -> int | None:
    return None if row is None else row["version"]


def _score_both(ev: Evaluator, settings: Settings, kind: str, cand_row, serving_row, serving_emb):
    t = settings.train
    emb_model = load_embedder(registry.model_path(settings, serving_emb), t.device, t.trust_remote_code)
    emb_key = registry.vector_key(serving_emb)
    if kind == registry.EMBEDDER:
        # a query adapter's key is its base's: its corpus vectors are the cached ones, nothing is encoded
        cand_model = load_embedder(registry.model_path(settings, cand_row), t.device, t.trust_remote_code)
        return (ev.embedder_scores(registry.vector_key(cand_row), cand_model),
                ev.embedder_scores(emb_key, emb_model))
    # each reranker as it would serve: fused with the first stage at the weight chosen on its validation split
    def pipeline(row):
        return ev.pipeline_scores(emb_key, emb_model, load_reranker(registry.model_path(settings, row), t.device, t.trust_remote_code),
                                  model_weight(registry.model_path(settings, row)))

    serv = pipeline(serving_row) if serving_row else ev.pipeline_scores(emb_key, emb_model, None)
    return pipeline(cand_row), serv


def record_forced(engine: Engine, kind: str, version: int) -> None:
    """Store an operator's override (`ragloop promote`) with the gate's decisions: it is a decision too."""
    with write_tx(engine) as conn:
        conn.execute(decisions_t.insert().values(
            kind=kind, candidate_version=version, serving_version=None, outcome="forced",
            reason="operator override: ragloop promote --force", figures={}, fixed=[], broken=[],
            eval_pair_ids={}, created_at=utcnow()))


def record(engine: Engine, d: Decision, ev: Evaluator) -> Decision:
    """Store and log decision ``d`` (its eval sets by pair id); a reject or refuse marks the candidate rejected."""
    with write_tx(engine) as conn:
        d.id = conn.execute(decisions_t.insert().values(
            kind=d.kind, candidate_version=d.candidate, serving_version=d.serving, outcome=d.outcome,
            reason=d.reason, figures=d.figures, fixed=d.fixed, broken=d.broken,
            eval_pair_ids={n: s.pair_ids for n, s in ev.sets.items()}, created_at=utcnow(),
        )).inserted_primary_key[0]
    log.info("gate.decision", kind=d.kind, candidate=d.candidate, serving=d.serving, outcome=d.outcome,
             reason=d.reason, promoted=d.promote, metric=d.figures.get("metric"), gain=d.figures.get("gain"),
             p_value=d.figures.get("test", {}).get("p_value"), queries_needed=d.figures.get("queries_needed"),
             fixed=len(d.fixed), broken=len(d.broken),
             candidate_heldout=d.figures.get("candidate", {}).get("heldout"),
             serving_heldout=d.figures.get("serving", {}).get("heldout"))
    if d.outcome in ("reject", "refuse"):
        registry.set_status(engine, d.kind, d.candidate, "rejected")
    return d
