"""Encoding: queries and documents each through the model's own route, in process or over several processes.

An embedder with a query adapter (daemon/adapter.py) encodes a query differently from a document, so every
caller says which one it encodes (`encode_query` / `encode_document`, sentence-transformers' own calls; for a
plain model both are `encode`, plus the model's query/document prompts where it has them).

Corpus-sized encodes (the re-index, a gate's or mining's first encode of a model version) can run in one
process per device (`index.encode_devices`) with sentence-transformers' multi-process pool: one process per
GPU, or per CPU core.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import structlog

log = structlog.get_logger(__name__)


def encode_documents(model, texts: list[str], batch_size: int = 64, pool: dict[str, Any] | None = None) -> np.ndarray:
    """Normalized document vectors (the vectors the index holds)."""
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    return model.encode_document(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False, pool=pool)


def encode_queries(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Normalized query vectors (what production sends to the index)."""
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    return model.encode_query(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)


@contextmanager
def encode_pool(model, devices: list[str]) -> Iterator[dict[str, Any] | None]:
    """A multi-process pool over ``devices`` (two or more), else None (encode in this process).

    The pool's processes are stopped on exit, also when the encode fails."""
    if len(devices) < 2:
        yield None
        return
    home = model.device  # starting a pool moves the model to the CPU; it goes back afterwards
    pool = model.start_multi_process_pool(list(devices))
    log.info("encode.pool", devices=list(devices))
    try:
        yield pool
    finally:
        model.stop_multi_process_pool(pool)
        model.to(home)
