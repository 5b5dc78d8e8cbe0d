"""Fusion: the pipeline's final score combines the first-stage similarity and the cross-encoder score.

Per query, each score list is min-max normalized over that query's candidates, then
    final = (1 - w) * first_stage + w * cross_encoder.
w = 0 is the embedder alone, w = 1 the reranker alone. A reranker's w is chosen after its training on
a validation split carved from the train split (never a held-out query), from WEIGHTS, which always
holds 0: so a promoted pipeline cannot be worse on validation than no reranker, and a weak reranker
gets a small weight instead of wrecking a good first stage. The gate scores the fused pipeline with
that w, the serving manifest carries it, and production ranks with the same functions (ragloop_client.fusion,
re-exported here).
"""

from __future__ import annotations

import json
from pathlib import Path

from ragloop_client.fusion import fused_order, minmax, pipeline_order

__all__ = ["WEIGHTS", "minmax", "fused_order", "pipeline_order", "choose_weight", "model_weight"]

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0


def choose_weight(metric_by_weight: dict[float, float]) -> float:
    """The weight with the best validation metric; on a tie the smallest (closest to the embedder alone)."""
    best = max(metric_by_weight.values())
    return min(w for w, m in metric_by_weight.items() if m >= best - 1e-12)


def model_weight(path: str | Path) -> float:
    """The fusion weight a reranker was trained with (its training.json), or 1.0 (the reranker alone) for
    one ragloop did not train and so has no validated weight."""
    f = Path(path) / "training.json"
    if not f.exists():
        return 1.0
    return float(json.loads(f.read_text()).get("fusion", {}).get("weight", 1.0))
