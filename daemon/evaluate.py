"""Evaluate: retrieval quality of an embedder, and of embedder + reranker, on fixed query sets.

Retrieval is exact search over the whole corpus (normalized embeddings, one matrix product), scored
per query with hit@1/3/5/10, MRR@10 and nDCG@10 (binary relevance; every expected chunk of a query is
relevant). This is an exact equivalent of sentence-transformers' InformationRetrievalEvaluator for
these metrics, written here because the gate needs the per-query figures (for its paired tests and
for the lists of queries fixed and broken), which the evaluator only reports as means.

Corpus embeddings are cached per (model version, chunk text hash), so a gate embeds only what changed.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.encoding import encode_documents, encode_queries
from daemon.fusion import WEIGHTS, fused_order
from daemon.store import Chunk, TrainingPair

log = structlog.get_logger(__name__)
pairs_t, chunks_t = TrainingPair.__table__, Chunk.__table__
METRICS = ("hit@1", "hit@3", "hit@5", "hit@10", "mrr@10", "ndcg@10")


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


class Corpus:
    """Active chunk ids, texts and hashes, loaded once per gate."""

    def __init__(self, engine: Engine | None = None, rows: list | None = None):
        if engine is not None:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(chunks_t.c.id, chunks_t.c.text, chunks_t.c.text_hash)
                                    .where(chunks_t.c.removed_at.is_(None)).order_by(chunks_t.c.id)).all()
        rows = rows or []  # or (id, text, text_hash) rows given directly (benchmarks without a store)
        self.ids = [r[0] for r in rows]
        self.texts = [r[1] for r in rows]
        self.hashes = [r[2] for r in rows]
        self.text_of = dict(zip(self.ids, self.texts))


def cache_dir(settings: Settings) -> Path:
    """Where corpus vectors are cached, one file per model version: shared by the index, mining and the gate."""
    return settings.state_dir / "cache" / "embeddings"


def load_vectors(cache: Path | None, key: str) -> dict[str, np.ndarray]:
    """The cached vectors of model version ``key``, by chunk text hash (empty when none)."""
    path = cache / f"{key}.npz" if cache else None
    if path is None or not path.exists():
        return {}
    with np.load(path) as z:
        return dict(zip(z["hashes"].tolist(), z["vectors"]))


def save_vectors(cache: Path, key: str, vectors: dict[str, np.ndarray], keep: set[str]) -> None:
    """Write the vectors of the hashes in ``keep`` (the active corpus) for ``key``, atomically."""
    cache.mkdir(parents=True, exist_ok=True)
    hashes = sorted(h for h in keep if h in vectors)
    tmp = cache / f".{key}.{os.getpid()}.tmp.npz"  # one per process: DDP ranks may write the same key
    np.savez(tmp, hashes=np.array(hashes), vectors=np.stack([vectors[h] for h in hashes]))
    tmp.replace(cache / f"{key}.npz")


def prune_vectors(cache: Path, keep_keys: set[str]) -> list[str]:
    """Delete cached vectors of every model version not in ``keep_keys``; returns the keys removed."""
    removed = []
    for path in sorted(cache.glob("*.npz")) if cache.exists() else []:
        if path.stem not in keep_keys and not path.name.startswith("."):
            path.unlink(missing_ok=True)
            removed.append(path.stem)
    return removed


def corpus_embeddings(model, corpus: Corpus, cache: Path | None, key: str, batch_size: int = 64,
                      devices: list[str] | None = None) -> np.ndarray:
    """Normalized document vectors of the corpus, reusing those cached for ``key`` (the model version whose
    document vectors they are: an adapter shares its base's) by text hash. What is missing is encoded, over
    one process per device in ``devices`` when it names two or more (index.encode_devices)."""
    from daemon.encoding import encode_pool

    cached = load_vectors(cache, key)
    missing = sorted({h for h in corpus.hashes if h not in cached})
    if missing:
        text_by_hash = dict(zip(corpus.hashes, corpus.texts))
        with encode_pool(model, devices or []) as pool:
            vecs = encode_documents(model, [text_by_hash[h] for h in missing], batch_size, pool)
        cached.update(zip(missing, vecs))
        if cache is not None:
            save_vectors(cache, key, cached, set(corpus.hashes))
    log.debug("evaluate.embeddings", key=key, cached=len(corpus.hashes) - len(missing), embedded=len(missing))
    return np.stack([cached[h] for h in corpus.hashes])


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
    similarities ``first`` at ``weight`` (daemon/fusion.py; 0 keeps the first-stage order unscored)."""
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
    alone = first is None or weight >= 1
    orders = [np.argsort(-c, kind="stable") if alone else fused_order(f, c, weight)
              for f, c in zip(first or [None] * len(cross), cross)]
    return [[cands[j] for j in order] for cands, order in zip(candidates, orders)]


def fused_by_weight(candidates: list[list[str]], first: list[np.ndarray], cross: list[np.ndarray],
                    relevant: list[set[str]]) -> dict[float, dict[str, float]]:
    """Mean metrics of the fused pipeline at every fusion weight (daemon/fusion.py WEIGHTS)."""
    return {w: score(fuse_rankings(candidates, first, cross, w), relevant).mean() for w in WEIGHTS}


def score(ranked: list[list[str]], relevant: list[set[str]]) -> Scores:
    return Scores([query_metrics(r, rel) for r, rel in zip(ranked, relevant)])


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
