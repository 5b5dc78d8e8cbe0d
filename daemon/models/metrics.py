"""Metrics: hit@k, MRR@10 and nDCG@10 of ranked chunk ids, per query and as means.

Binary relevance: every expected chunk of a query is relevant. An exact equivalent of sentence-transformers'
InformationRetrievalEvaluator for these metrics, written here because the gate needs the per-query figures
(for its paired tests and for the lists of queries fixed and broken), which the evaluator only reports as
means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS = ("hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10")


def query_metrics(ranked: list[str], relevant: set[str]) -> dict[str, float]:
    """The six metrics for one query's ranked ids."""
    first = next((i for i, c in enumerate(ranked[:10]) if c in relevant), None)
    dcg = sum(1 / math.log2(i + 2) for i, c in enumerate(ranked[:10]) if c in relevant)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), 10)))
    out = {f"hit@{k}": float(first is not None and first < k) for k in (1, 3, 5, 10)}
    out["mrr@10"] = 0.0 if first is None else 1 / (first + 1)
    out["ndcg@10"] = dcg / idcg if idcg else 0.0
    return out


@dataclass
class Scores:
    """Per-query metrics for one model (or pipeline) on one set, and their means."""

    per_query: list[dict[str, float]]

    def mean(self) -> dict[str, float]:
        n = len(self.per_query)
        return {m: round(sum(q[m] for q in self.per_query) / n, 4) if n else 0.0 for m in METRICS}

    def column(self, metric: str) -> np.ndarray:
        return np.array([q[metric] for q in self.per_query])


def score(ranked: list[list[str]], relevant: list[set[str]]) -> Scores:
    return Scores([query_metrics(r, rel) for r, rel in zip(ranked, relevant)])
