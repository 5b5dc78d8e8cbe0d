"""Retriever: production's search, ranked exactly as ragloop's gate scored what serves, swapped atomically on
every promotion.

One manifest version is one `Pipeline`: its query encoder, its collection (by name, never the alias: between
the daemon's alias swap and its manifest rewrite the alias already points at vectors the old encoder did not
make) and its reranker at the fusion weight and depth the gate used. A new manifest is loaded beside the one
serving, then swapped in with one reference assignment; searches in flight finish on the pipeline they
started with, and a retired pipeline is closed when its last search ends. So every answer comes from
exactly one manifest version, and says which (`SearchResult.version`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragloop_client.fusion import minmax, pipeline_order
from ragloop_client.manifest import Manifest, read_manifest

log = logging.getLogger("ragloop_client")


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    text: str
    score: float  # the fused score in [0, 1] when a reranker ranks (below 0 past its depth), else the similarity
    similarity: float  # the first-stage (embedder) cosine similarity
    payload: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class SearchResult:
    query: str
    hits: list[Hit]
    version: str  # the manifest version that ranked it (Manifest.version)

    @property
    def ids(self) -> list[str]:
        return [h.chunk_id for h in self.hits]

    @property
    def scores(self) -> list[float]:
        return [h.score for h in self.hits]


class Pipeline:
    """The models and vectors of one manifest version, loaded whole before it serves."""

    def __init__(self, manifest: Manifest, device: str | None = None):
        self.manifest = manifest
        self.refs, self.retired = 0, False
        self._tmp: str | None = None
        _quiet_loading()
        from sentence_transformers import CrossEncoder, SentenceTransformer

        kw = {"device": device, "model_kwargs": {"use_safetensors": True}}
        self.embedder = SentenceTransformer(str(manifest.embedder.path), **kw)
        rr = manifest.reranker
        self.reranker = CrossEncoder(str(rr.path), **kw) if rr and rr.fusion_weight > 0 else None
        self.qdrant = self._open_qdrant()

    def _open_qdrant(self):
        from qdrant_client import QdrantClient

        m = self.manifest
        if m.qdrant_url:
            key = os.environ.get(m.api_key_env) if m.api_key_env else None
            return QdrantClient(url=m.qdrant_url, api_key=key or None, check_compatibility=False)
        # Embedded Qdrant opens a folder in one process only: ragloop writes each serving collection into a
        # store of its own and never writes it again; every reader opens a private copy of it.
        self._tmp = tempfile.mkdtemp(prefix="ragloop-client-")
        try:
            shutil.copytree(m.qdrant_path, Path(self._tmp) / "store")
            return QdrantClient(path=str(Path(self._tmp) / "store"))
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    def search(self, query: str, k: int) -> SearchResult:
        m = self.manifest
        depth = m.reranker.rerank_depth if self.reranker is not None else 0
        vector = self.embedder.encode_query([query], normalize_embeddings=True, convert_to_numpy=True,
                                            show_progress_bar=False)[0]
        points = self.qdrant.query_points(m.collection, query=vector.tolist(), limit=max(k, depth),
                                          with_payload=True).points
        first = [(p.payload["chunk_id"], p.payload.get("text", ""), float(p.score), p.payload) for p in points]
        if self.reranker is not None and first:
            head, tail = first[:depth], first[depth:]
            cross = self.reranker.predict([(query, h[1]) for h in head], show_progress_bar=False)
            order = pipeline_order(np.array([h[2] for h in head]), np.asarray(cross), m.reranker.fusion_weight)
            fused = _fused_scores([h[2] for h in head], cross, m.reranker.fusion_weight)
            # past the rerank depth: first-stage order, scored below every reranked hit
            ranked = [(head[i], float(fused[i])) for i in order] + [(h, h[2] - 2.0) for h in tail]
        else:
            ranked = [(h, h[2]) for h in first]
        hits = [Hit(h[0], h[1], s, h[2], h[3]) for h, s in ranked[:k]]
        return SearchResult(query, hits, m.version)

    def close(self) -> None:
        self.qdrant.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _fused_scores(first, cross, weight: float) -> np.ndarray:
    """Each candidate's fused score in [0, 1] (at weight 1 the reranker's, min-max scaled)."""
    return (1.0 - min(weight, 1.0)) * minmax(first) + min(weight, 1.0) * minmax(cross)


def _quiet_loading() -> None:
    """No weight-loading progress bars in a service's log."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
        pass


class Retriever:
    """Search what ragloop serves. Thread-safe; one instance per process.

    Args:
        manifest: path of ``serving.json`` (ragloop's ``serving.manifest_path``).
        root: folder that relative paths in the manifest resolve against (default: the manifest's folder;
            give it when the state directory is mounted elsewhere than the manifest).
        device: torch device for the models (default: sentence-transformers' choice, a GPU when there is one).
        watch: poll the manifest every ``poll_s`` seconds on a background thread and swap in a new version
            as soon as it is loaded; without it, call `reload` (e.g. from a SIGHUP handler or a webhook).
    """

    def __init__(self, manifest: str | Path, *, root: str | Path | None = None, device: str | None = None,
                 watch: bool = True, poll_s: float = 1.0):
        self.path, self.root, self.device = Path(manifest), root, device
        self._lock = threading.Lock()  # guards the current pipeline and reference counts
        self._reloading = threading.Lock()  # one load at a time
        self._signature = _signature(self.path)
        self._current = Pipeline(read_manifest(self.path, root), device)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._watcher = None
        if watch:
            self._watcher = threading.Thread(target=self._watch, args=(poll_s,), name="ragloop-client-watch",
                                             daemon=True)
            self._watcher.start()

    @property
    def version(self) -> str:
        """The manifest version serving now."""
        return self._current.manifest.version

    @property
    def manifest(self) -> Manifest:
        return self._current.manifest

    def search(self, query: str, k: int = 10) -> SearchResult:
        """The top ``k`` chunks for ``query``, ranked by the serving pipeline, with the version that ranked them."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock:
            pipe = self._current
            pipe.refs += 1
        try:
            return pipe.search(query, k)
        finally:
            self._let_go(pipe, search_ended=True)

    def reload(self, force: bool = False) -> bool:
        """Load the manifest if it changed (or ``force``) and swap it in. Returns whether the version changed.

        A manifest that cannot be loaded leaves the serving version serving; the error is logged and kept in
        ``last_error``.
        """
        with self._reloading:
            sig = _signature(self.path)
            if sig == self._signature and not force:
                return False
            try:
                manifest = read_manifest(self.path, self.root)
                if manifest.version == self.version and not force:
                    self._signature = sig
                    return False
                fresh = Pipeline(manifest, self.device)
            except Exception as exc:  # keep serving what loaded; say why the new one did not
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("ragloop_client: cannot load %s, still serving %s: %s", self.path, self.version, exc)
                self._signature = sig  # retried when the file changes again
                return False
            with self._lock:
                old, self._current = self._current, fresh
            self._signature, self.last_error = sig, None
            self._let_go(old)
            log.info("ragloop_client: serving %s (was %s)", fresh.manifest.version, old.manifest.version)
            return True

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._let_go(self._current)

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _let_go(self, pipe: Pipeline, search_ended: bool = False) -> None:
        """Retire ``pipe`` (or end one of its searches); it is closed once retired and no search uses it."""
        with self._lock:
            if search_ended:
                pipe.refs -= 1
            else:
                pipe.retired = True
            close_now = pipe.retired and pipe.refs == 0
        if close_now:
            pipe.close()

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.reload()
            except Exception:  # the watcher must outlive any one bad manifest
                log.exception("ragloop_client: manifest watch failed")
                time.sleep(poll_s)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
