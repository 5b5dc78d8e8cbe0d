"""Encoding: queries and documents each through the model's own route, in process or over several processes.

An embedder with a query adapter (daemon/train/adapter.py) encodes a query differently from a document, so every
caller says which one it encodes (`encode_query` / `encode_document`, sentence-transformers' own calls; for a
plain model both are `encode`, plus the model's query/document prompts where it has them).

Corpus-sized encodes (the re-index, a gate's or mining's first encode of a model version) can run in one
process per device (`index.encode_devices`) with sentence-transformers' multi-process pool: one process per
GPU, or per CPU core.
"""

from __future__ import annotations

import os
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
def encode_pool(model, devices: list[str], min_devices: int = 2) -> Iterator[dict[str, Any] | None]:
    """A multi-process pool over ``devices`` when they are at least ``min_devices``, else None (encode in this
    process). The pool's processes are stopped on exit, also when the encode fails."""
    if len(devices) < max(1, min_devices):
        yield None
        return
    home = model.device  # starting a pool moves the model to the CPU; it goes back afterwards
    # CPU workers share the cores: each gets its share of threads (torch reads OMP_NUM_THREADS as a spawned
    # worker imports it), else N workers x all cores oversubscribe the machine and encode slower than one
    cpu_workers = sum(1 for d in devices if str(d).startswith("cpu"))
    threads = str(max(1, (os.cpu_count() or 1) // cpu_workers)) if cpu_workers else None
    before = os.environ.get("OMP_NUM_THREADS")
    if threads:
        os.environ["OMP_NUM_THREADS"] = threads
    try:
        pool = model.start_multi_process_pool(list(devices))
    finally:
        if threads:
            os.environ.pop("OMP_NUM_THREADS") if before is None else os.environ.update(OMP_NUM_THREADS=before)
    log.info("encode.pool", devices=list(devices))
    try:
        yield pool
    finally:
        model.stop_multi_process_pool(pool)
        model.to(home)
