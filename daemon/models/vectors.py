"""Vectors: the corpus as the retriever sees it, and its document vectors cached per model version.

Corpus embeddings are cached per (model version, chunk text hash), so the index, mining, validation and
the gate embed only what changed. Shared by the stages that encode the corpus; the files live under
``state_dir/cache/embeddings``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.models.encoding import encode_documents, encode_pool
from daemon.store.db import Chunk

log = structlog.get_logger(__name__)
chunks_t = Chunk.__table__


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
