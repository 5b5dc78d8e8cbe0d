"""Retrieval: exact top-k over the whole corpus, and the reranker's reordering of it, fused or alone.

Retrieval is exact search (normalized embeddings, one matrix product); the reranker scores each query's
candidates and daemon/models/fusion.py combines both scores. The gate, mining, validation and the
training child's fusion-weight choice rank with these functions, so they all rank as production does.
"""

from __future__ import annotations

import numpy as np

from daemon.models.encoding import encode_queries
from daemon.models.fusion import WEIGHTS, pipeline_order
from daemon.models.metrics import score
from daemon.models.vectors import Corpus


def retrieve(model, corpus: Corpus, emb: np.ndarray, queries: list[str], depth: int) -> list[list[str]]:
    """Exact top-``depth`` chunk ids per query (cosine on normalized vectors)."""
    return retrieve_scored(model, corpus, emb, queries, depth)[0]


def retrieve_scored(model, corpus: Corpus, emb: np.ndarray, queries: list[str], depth: int
                    ) -> tuple[list[list[str]], list[np.ndarray]]:
    """Exact top-``depth`` chunk ids per query and their cosine similarities, best first."""
    if not queries:
        return [], []
    sims = encode_queries(model, queries) @ emb.T
    depth = min(depth, sims.shape[1])
    top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
    order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
    ranked = np.take_along_axis(top, order, axis=1)
    return [[corpus.ids[i] for i in row] for row in ranked], list(np.take_along_axis(sims, ranked, axis=1))


def rerank(reranker, corpus: Corpus, queries: list[str], candidates: list[list[str]], batch_size: int = 32,
           first: list[np.ndarray] | None = None, weight: float = 1.0) -> list[list[str]]:
    """Reorder each query's candidates by cross-encoder score, or by its fusion with the first-stage
    similarities ``first`` at ``weight`` (daemon/models/fusion.py; 0 keeps the first-stage order unscored)."""
    if weight <= 0:
        return candidates
    return fuse_rankings(candidates, first, cross_scores(reranker, corpus, queries, candidates, batch_size), weight)


def cross_scores(reranker, corpus: Corpus, queries: list[str], candidates: list[list[str]], batch_size: int = 32
                 ) -> list[np.ndarray]:
    """The cross-encoder's score of every (query, candidate), per query."""
    pairs = [(q, corpus.text_of[c]) for q, cands in zip(queries, candidates) for c in cands]
    flat = reranker.predict(pairs, batch_size=batch_size, show_progress_bar=False) if pairs else np.zeros(0)
    bounds = np.cumsum([0] + [len(c) for c in candidates])
    return [np.asarray(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def fuse_rankings(candidates: list[list[str]], first: list[np.ndarray] | None, cross: list[np.ndarray],
                  weight: float) -> list[list[str]]:
    """Candidates ordered by fused score: as they are at ``weight`` 0, by the cross-encoder alone at 1 or
    when ``first`` is None."""
    if weight <= 0:
        return candidates
    orders = [pipeline_order(f, c, weight) for f, c in zip(first or [None] * len(cross), cross)]
    return [[cands[j] for j in order] for cands, order in zip(candidates, orders)]


def fused_by_weight(candidates: list[list[str]], first: list[np.ndarray], cross: list[np.ndarray],
                    relevant: list[set[str]]) -> dict[float, dict[str, float]]:
    """Mean metrics of the fused pipeline at every fusion weight (daemon/models/fusion.py WEIGHTS)."""
    return {w: score(fuse_rankings(candidates, first, cross, w), relevant).mean() for w in WEIGHTS}
