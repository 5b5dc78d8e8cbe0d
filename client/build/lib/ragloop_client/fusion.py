"""Fusion: the serving pipeline's final score combines the first-stage similarity and the cross-encoder score.

Per query, each score list is min-max normalized over that query's candidates, then
    final = (1 - w) * first_stage + w * cross_encoder.
w = 0 is the embedder alone, w = 1 the reranker alone. ragloop's gate scores candidates with these functions
and production ranks with them (`ragloop_client.Retriever`): one implementation, so what serves is what the
gate tested.
"""

from __future__ import annotations

import numpy as np


def minmax(x) -> np.ndarray:
    """Scores scaled to [0, 1] within one query's candidates (all zeros when they are all equal)."""
    x = np.asarray(x, dtype=np.float64)
    span = x.max() - x.min() if x.size else 0.0
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def fused_order(first, cross, weight: float) -> np.ndarray:
    """Candidate indices, best first, by the fused score (ties keep first-stage order)."""
    fused = (1.0 - weight) * minmax(first) + weight * minmax(cross)
    return np.argsort(-fused, kind="stable")


def pipeline_order(first, cross, weight: float) -> np.ndarray:
    """The order the serving pipeline gives one query's candidates: first-stage order at weight 0, the
    cross-encoder alone at 1 (or without first-stage scores), the fused score in between."""
    n = len(cross) if cross is not None else len(first)
    if weight <= 0 or cross is None:
        return np.arange(n)
    if first is None or weight >= 1:
        return np.argsort(-np.asarray(cross, dtype=np.float64), kind="stable")
    return fused_order(first, cross, weight)
