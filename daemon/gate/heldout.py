"""The gate's held-out set over time: how large a share of real queries it keeps, and which it retires.

Queries only ever move held-out -> train, so no model is ever tested on a query it (or what serves)
trained on. The split itself (a query's fixed position by hash) is daemon/data/pairs.py's.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.data.pairs import split_key, split_position
from daemon.models import registry
from daemon.store.db import TrainingPair, write_tx

log = structlog.get_logger(__name__)
pairs_t = TrainingPair.__table__


def retire_heldout(engine: Engine) -> int:
    """Move to train every held-out pair whose query (split key) a serving model trained on; returns how many.

    Only a refit after promotion (daemon/train/refit.py) trains on held-out queries. Once it serves, they can
    test nothing: a gate comparing a candidate with it on them would favour what serves. Later candidates
    are gated on queries that arrived since (and train on these, as the refit did).
    """
    lineage = (registry.serving(engine, registry.EMBEDDER) or {}).get("lineage") or {}
    if lineage.get("refit_of") is None:  # anything else serving passed the leak check: nothing to retire
        return 0
    trained = set(lineage.get("pair_ids", []))
    with engine.connect() as conn:
        rows = conn.execute(sa.select(pairs_t.c.id, pairs_t.c.query_norm, pairs_t.c.split)).all()
    keys = {split_key(r.query_norm) for r in rows if r.id in trained}
    move = [r.id for r in rows if r.split == "heldout" and split_key(r.query_norm) in keys]
    if move:
        _to_train(engine, move)
        log.info("gate.heldout_retired", pairs=len(move), reason="the serving model trained on them (a refit)")
    return len(move)


def rebalance_heldout(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Return the held-out surplus to train, for the share this much traffic calls for.

    New queries are held out provisionally at gate.heldout_max_fraction. While traffic is small the gate
    keeps up to that share, to reach gate.heldout_target queries (bench/gate_power.py: more held-out
    queries buy more power than the training queries they cost); as traffic grows the share falls towards
    gate.heldout_fraction and the surplus, which no model has seen, becomes training data. Queries only
    ever move held-out -> train, so no model is ever tested on a query it (or what serves) trained on; the
    queries a serving refit trained on retire first (`retire_heldout`).
    """
    g = settings.gate
    retired = retire_heldout(engine)
    real = pairs_t.c.origin != "synthetic"
    with engine.connect() as conn:
        queries = conn.scalar(sa.select(sa.func.count(sa.distinct(pairs_t.c.query_norm))).where(real)) or 0
        held = conn.execute(sa.select(pairs_t.c.id, pairs_t.c.query_norm).where(real, pairs_t.c.split == "heldout")).all()
    share = g.effective_fraction(queries)
    stays = {qn: split_position(qn) < share for qn in {r.query_norm for r in held}}
    move = [r.id for r in held if not stays[r.query_norm]]
    if move:  # most cycles of a settled deployment move nothing: no write lock for them
        _to_train(engine, move)
    kept = sum(stays.values())
    out = {"queries": queries, "share": round(share, 4), "heldout_queries": kept, "pairs_moved_to_train": len(move),
           "pairs_retired": retired}
    log.info("gate.heldout", **out)
    return out


def _to_train(engine: Engine, ids: list[int]) -> None:
    """Move the pairs ``ids`` from held-out to train, in one transaction (500 ids per statement)."""
    with write_tx(engine) as conn:
        for i in range(0, len(ids), 500):
            conn.execute(pairs_t.update().where(pairs_t.c.id.in_(ids[i : i + 500])).values(split="train"))
