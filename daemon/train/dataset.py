"""Training data: pairs from the train split with hard negatives, for the embedder and the reranker.

Negatives for a query come in this order, up to `train.mining.num_negatives`:
  1. the chunks production itself returned for it (its logged top-k minus every expected id);
  2. chunks mined with the serving embedder over the whole corpus, from its cached corpus vectors (rank
     range, margin and a similarity cap to drop likely false negatives, from config: the filters of
     `sentence_transformers.util.mine_hard_negatives`);
  3. random chunks: hard negatives alone make a reranker worse on easy cases.
Every run replays all accumulated train pairs (newest and most frequent first, up to `train.max_pairs`),
not only new ones, to guard against forgetting.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.store.db import Chunk, TrainingPair

log = structlog.get_logger(__name__)
pairs_t, chunks_t = TrainingPair.__table__, Chunk.__table__


@dataclass
class Example:
    pair_id: int
    query: str
    positive_id: str
    negative_ids: list[str]
    origin: str
    count: int


@dataclass
class TrainingData:
    """What one training job learns from; serializable so a child process can run it."""

    examples: list[Example]
    texts: dict[str, str]  # chunk id -> text, for every id the examples mention
    counts: dict[str, int] = field(default_factory=dict)

    def data_hash(self) -> str:
        h = hashlib.sha256()
        for e in self.examples:
            h.update(json.dumps([e.query, e.positive_id, e.negative_ids], sort_keys=True).encode())
            h.update(self.texts[e.positive_id].encode())
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"examples": [e.__dict__ for e in self.examples], "texts": self.texts, "counts": self.counts}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainingData":
        return cls([Example(**e) for e in d["examples"]], d["texts"], d.get("counts", {}))


def select_pairs(engine: Engine, settings: Settings, splits: tuple[str, ...] = ("train",),
                 replay: float | None = None) -> list[dict[str, Any]]:
    """Pairs to replay from ``splits`` (the train split; a refit after promotion adds "heldout"): newest and
    most frequent first, bounded by `train.max_pairs`, with the synthetic share capped at
    `train.max_synthetic_share`. With ``replay`` (a refit that continues from the gated candidate), every
    held-out pair and a seeded sample of ``replay`` train pairs per held-out pair."""
    t = settings.train
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(pairs_t).join(chunks_t, chunks_t.c.id == pairs_t.c.chunk_id)
            .where(pairs_t.c.split.in_(splits), chunks_t.c.removed_at.is_(None))
            .order_by(pairs_t.c.last_seen.desc(), pairs_t.c.count.desc(), pairs_t.c.id)
        ).mappings().all()
    if replay is not None:
        train = [r["id"] for r in rows if r["split"] != "heldout"]
        k = min(len(train), round(replay * (len(rows) - len(train))))
        kept = set(random.Random(t.seed).sample(train, k))
        rows = [r for r in rows if r["split"] == "heldout" or r["id"] in kept]
    real = [dict(r) for r in rows if r["origin"] != "synthetic"]
    synthetic = [dict(r) for r in rows if r["origin"] == "synthetic"]
    share = t.max_synthetic_share
    cap = int(share / (1 - share) * len(real)) if share < 1 else len(synthetic)
    if len(synthetic) > cap:
        synthetic = sorted(random.Random(t.seed).sample(synthetic, cap), key=lambda r: r["id"])
    chosen = (real + synthetic)[: t.max_pairs]
    return [r for r in chosen if t.weights.get(r["origin"], 1) > 0]


def assemble(engine: Engine, settings: Settings, model=None, key: str = "embedder-v0",
             splits: tuple[str, ...] = ("train",), replay: float | None = None) -> TrainingData:
    """Examples with negatives for every selected pair of ``splits`` (``replay``: see `select_pairs`). ``model``
    (the serving embedder, cache key ``key``) mines negatives; without it only production and random negatives
    are used."""
    pairs = select_pairs(engine, settings, splits, replay)
    with engine.connect() as conn:
        corpus = dict(conn.execute(sa.select(chunks_t.c.id, chunks_t.c.text).where(chunks_t.c.removed_at.is_(None))).all())
        # every expected id of a query, so no chunk that answers it becomes its negative
        expected: dict[str, set[str]] = {}
        for qn, cid in conn.execute(sa.select(pairs_t.c.query_norm, pairs_t.c.chunk_id)):
            expected.setdefault(qn, set()).add(cid)
    m = settings.train.mining
    rng = random.Random(settings.train.seed)
    mined = mine_negatives(pairs, engine, model, settings, key) if model is not None and m.mine else {}
    ids = sorted(corpus)
    examples = []
    for p in pairs:
        skip = expected.get(p["query_norm"], set()) | {p["chunk_id"]}
        negs = _dedup([c for c in as_id_list(p["hard_negative_ids"]) if c in corpus and c not in skip], m.num_negatives)
        negs += [c for c in mined.get(p["query"], []) if c not in skip and c not in negs][: m.num_negatives - len(negs)]
        while len(negs) < m.num_negatives + m.random_negatives and len(ids) > len(skip) + len(negs):
            c = rng.choice(ids)
            if c not in skip and c not in negs:
                negs.append(c)
        for _ in range(settings.train.weights.get(p["origin"], 1)):
            examples.append(Example(p["id"], p["query"], p["chunk_id"], negs, p["origin"], p["count"]))
    texts = {c: corpus[c] for e in examples for c in (e.positive_id, *e.negative_ids)}
    counts = {o: sum(1 for e in examples if e.origin == o) for o in ("failure", "hit", "synthetic")}
    log.info("mining.assembled", pairs=len(pairs), examples=len(examples), mined_queries=len(mined), **counts)
    return TrainingData(examples, texts, counts)


def as_id_list(v) -> list[str]:
    return json.loads(v) if isinstance(v, str) else list(v or [])


def _dedup(items: list[str], limit: int) -> list[str]:
    out: list[str] = []
    for i in items:
        if i not in out:
            out.append(i)
    return out[:limit]


def mine_negatives(pairs: list[dict[str, Any]], engine: Engine, model, settings: Settings, key: str) -> dict[str, list[str]]:
    """query -> mined negative chunk ids: the serving embedder's top `range_max` chunks over the corpus,
    filtered as sentence-transformers' `mine_hard_negatives` filters them ("top" sampling, `range_min`,
    `max_score`, `relative_margin` below the positive's score).

    The corpus vectors are the serving model's, read from the embedding cache (daemon/models/vectors.py) that
    the index and the gate share, keyed by (model version ``key``, chunk text hash): a cycle embeds the
    corpus once per model version, not once more for mining (`mine_hard_negatives` would re-encode it).
    Only chunks not in the cache yet are encoded, and added to it.
    """
    from daemon.models.encoding import encode_queries
    from daemon.models.vectors import Corpus, cache_dir, corpus_embeddings

    m = settings.train.mining
    first: dict[str, str] = {}
    for p in pairs:
        first.setdefault(p["query"], p["chunk_id"])
    if not first:
        return {}
    corpus = Corpus(engine)
    emb = corpus_embeddings(model, corpus, cache_dir(settings), key, devices=settings.index.encode_devices)
    row_of = {cid: i for i, cid in enumerate(corpus.ids)}
    queries = [q for q in first if first[q] in row_of]
    qv = encode_queries(model, queries)  # as production ranks: through the serving model's query route
    depth = min(m.range_max + 1, len(corpus.ids))  # one more: the positive itself is among them
    mined: dict[str, list[str]] = {}
    for start in range(0, len(queries), 256):  # bounded memory: 256 x corpus similarities at a time
        sims = qv[start:start + 256] @ emb.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
        for i, q in enumerate(queries[start:start + 256]):
            pos = first[q]
            pos_score = float(sims[i, row_of[pos]])
            pos_text = corpus.text_of[pos]
            cap = pos_score - abs(pos_score) * m.relative_margin if m.relative_margin else np.inf
            # as mine_hard_negatives does: drop the positive and what the filters exclude, then skip range_min
            kept = [j for j in top[i][: m.range_max + 1] if corpus.ids[j] != pos and corpus.texts[j] != pos_text
                    and sims[i, j] <= min(m.max_score, cap)][: m.range_max]
            mined[q] = [corpus.ids[j] for j in kept[m.range_min:][: m.num_negatives]]
    return mined
