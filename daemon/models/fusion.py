"""Fusion: the pipeline's final score combines the first-stage similarity and the cross-encoder score.

Per query, each score list is min-max normalized over that query's candidates, then
    final = (1 - w) * first_stage + w * cross_encoder.
w = 0 is the embedder alone, w = 1 the reranker alone. A reranker's w is chosen after its training on
a validation split carved from the train split (never a held-out query), from WEIGHTS, which always
holds 0: so a promoted pipeline cannot be worse on validation than no reranker, and a weak reranker
gets a small weight instead of wrecking a good first stage. The gate scores the fused pipeline with
that w, the serving manifest carries it, and README shows production the same few lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0


def minmax(x) -> np.ndarray:
    """Scores scaled to [0, 1] within one query's candidates (all zeros when they are all equal)."""
    x = np.asarray(x, dtype=np.float64)
    span = x.max() - x.min() if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def fused_order(first, cross, weight: float) -> np.ndarray:
    """Candidate indices, best first, by the fused score (ties keep first-stage order)."""
    fused = (1.0 - weight) * minmax(first) + weight * minmax(cross)
    return np.argsort(-fused, kind="stable")


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
