"""Evaluate: retrieval quality of an embedder, and of embedder + reranker, on the gate's query sets.

The held-out and guard sets are read from the store; every model is scored per query (daemon/models/metrics.py)
on one corpus snapshot, with rankings memoized per model so a pipeline reuses its embedder's first stage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.models.metrics import Scores, score
from daemon.models.retrieval import rerank, retrieve_scored
from daemon.models.vectors import Corpus, cache_dir, corpus_embeddings
from daemon.store.db import Chunk, TrainingPair

log = structlog.get_logger(__name__)
pairs_t, chunks_t = TrainingPair.__table__, Chunk.__table__


@dataclass
class EvalSet:
    name: str
    queries: list[str]
    relevant: list[set[str]]
    pair_ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)


def eval_sets(engine: Engine, max_guard_synthetic: int = 300) -> dict[str, EvalSet]:
    """The two sets the gate scores, read from the store (their pair ids go into each decision).

    held-out: every held-out real query (failure or hit pairs), never trained on.
    guard: queries the serving system already answers well (held-out hits) plus at most
    ``max_guard_synthetic`` synthetic questions: those whose pair id hashes lowest, so the sample is the
    same from cycle to cycle and only changes where new questions arrive. Without the cap, the reranker
    gate scored every synthetic question x gate.rerank_depth pairs (94,550 for the 1,891 questions of the
    examples) and took longer than training.
    """
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(pairs_t.c.id, pairs_t.c.query, pairs_t.c.query_norm, pairs_t.c.chunk_id, pairs_t.c.split,
                      pairs_t.c.origin, pairs_t.c.hit_count)
            .join(chunks_t, chunks_t.c.id == pairs_t.c.chunk_id)
            .where(chunks_t.c.removed_at.is_(None)).order_by(pairs_t.c.id)
        ).all()
    heldout = _group(r for r in rows if r.split == "heldout" and r.origin != "synthetic")
    synthetic = sorted((r for r in rows if r.origin == "synthetic"), key=lambda r: _stable_hash(r.id))
    kept = {r.id for r in synthetic[:max_guard_synthetic]}
    guard = _group(r for r in rows if (r.split == "heldout" and r.origin == "hit" and r.hit_count > 0)
                   or r.id in kept)
    return {"heldout": EvalSet("heldout", *heldout), "guard": EvalSet("guard", *guard)}


def _stable_hash(pair_id: int) -> bytes:
    return hashlib.blake2b(str(pair_id).encode(), digest_size=8).digest()


def _group(rows) -> tuple[list[str], list[set[str]], list[int]]:
    by_norm: dict[str, tuple[str, set[str]]] = {}
    ids: list[int] = []
    for r in rows:
        by_norm.setdefault(r.query_norm, (r.query, set()))[1].add(r.chunk_id)
        ids.append(r.id)
    return [q for q, _ in by_norm.values()], [rel for _, rel in by_norm.values()], ids


@dataclass
class Evaluator:
    """Scores models on the eval sets with one corpus snapshot and a shared embedding cache."""

    engine: Engine
    settings: Settings
    corpus: Corpus = field(init=False)
    sets: dict[str, EvalSet] = field(init=False)

    def __post_init__(self):
        self.corpus = Corpus(self.engine)
        self.sets = eval_sets(self.engine, self.settings.gate.max_guard_synthetic)
        self._ranked: dict[tuple[int, str, str], tuple[Any, tuple[list[list[str]], list[np.ndarray]]]] = {}

    @property
    def cache_dir(self) -> Path:
        return cache_dir(self.settings)

    def candidates(self, key: str, model, set_name: str) -> list[list[str]]:
        """First-stage ranking (top gate.rerank_depth) of ``set_name`` by embedder ``key``, memoized."""
        return self.scored_candidates(key, model, set_name)[0]

    def scored_candidates(self, key: str, model, set_name: str) -> tuple[list[list[str]], list[np.ndarray]]:
        """`candidates` with their first-stage similarities (what fusion combines with the reranker's)."""
        # by model too: a query adapter shares its serving model's corpus vectors (one key), not its ranking
        memo = (id(model), key, set_name)
        if memo not in self._ranked:
            emb = corpus_embeddings(model, self.corpus, self.cache_dir, key,
                                    devices=self.settings.index.encode_devices)
            self._ranked[memo] = (model, retrieve_scored(model, self.corpus, emb, self.sets[set_name].queries,
                                                         self.settings.gate.rerank_depth))
        return self._ranked[memo][1]

    def embedder_scores(self, key: str, model) -> dict[str, Scores]:
        return {name: score(self.candidates(key, model, name), s.relevant) for name, s in self.sets.items()}

    def pipeline_scores(self, key: str, model, reranker, weight: float = 1.0) -> dict[str, Scores]:
        """Embedder top-depth, reranked with fusion ``weight`` (or not, when ``reranker`` is None: "no
        reranker" is a valid state)."""
        out = {}
        for name, s in self.sets.items():
            cands, sims = self.scored_candidates(key, model, name)
            ranked = (rerank(reranker, self.corpus, s.queries, cands, first=sims, weight=weight)
                      if reranker is not None else cands)
            out[name] = score(ranked, s.relevant)
        return out


def summary(scores: dict[str, Scores]) -> dict[str, Any]:
    return {name: {**s.mean(), "queries": len(s.per_query)} for name, s in scores.items()}
