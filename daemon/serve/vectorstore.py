"""The vector store behind the alias: a narrow interface, implemented for Qdrant.

Local mode (``QdrantClient(path=...)``) allows one opener per folder, so ragloop opens the store for a
stage and closes it after; another ragloop process waiting for it retries for ``qdrant.lock_wait_s``,
then fails with an error that names the lock. Against a server, the first call is made at open, so an
unreachable URL fails at start with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import structlog

from daemon.config import Settings
from daemon.errors import LockedError, StartupError

log = structlog.get_logger(__name__)
POINT_NS = uuid.UUID("6f1c8f2e-1d2a-5b7e-9c55-2d7a2c9e4b10")


def point_id(chunk_id: str) -> str:
    """Qdrant ids must be ints or UUIDs: a stable uuid5 of the chunk id (kept in the payload too)."""
    return str(uuid.uuid5(POINT_NS, chunk_id))


class QdrantStore:
    """ensure collection, upsert batch, search, swap alias, list/drop versions."""

    def __init__(self, client, alias: str, is_server: bool, layout=None):
        self.client, self.alias, self.is_server = client, alias, is_server
        self.layout = layout  # QdrantSettings: shards, replicas, on-disk vectors, HNSW, upload parallelism

    def create(self, name: str, dim: int) -> None:
        from qdrant_client import models

        if self.client.collection_exists(name):
            self.client.delete_collection(name)
        q = self.layout
        extra: dict[str, Any] = {}
        if q is not None:
            extra = {"shard_number": q.shard_number, "replication_factor": q.replication_factor,
                     "hnsw_config": models.HnswConfigDiff(m=q.hnsw_m, ef_construct=q.hnsw_ef_construct)}
        self.client.create_collection(name, vectors_config=models.VectorParams(
            size=dim, distance=models.Distance.COSINE, on_disk=bool(q and q.on_disk)), **extra)
        if self.is_server:  # local mode ignores payload indexes
            self.client.create_payload_index(name, "chunk_id", models.PayloadSchemaType.KEYWORD)

    def upsert(self, name: str, chunk_ids: Sequence[str], vectors, payloads: Sequence[dict[str, Any]]) -> None:
        from qdrant_client import models

        self.client.upsert(name, models.Batch(ids=[point_id(c) for c in chunk_ids], vectors=vectors.tolist(),
                                              payloads=list(payloads)), wait=True)

    def upload(self, name: str, chunk_ids: Sequence[str], vectors, payloads: Sequence[dict[str, Any]], batch: int) -> None:
        """Upsert in batches of ``batch``; against a server with qdrant.upload_parallel > 1, with that many
        concurrent requests (qdrant-client's own parallel upload)."""
        parallel = self.layout.upload_parallel if self.layout is not None else 1
        if self.is_server and parallel > 1:
            self.client.upload_collection(name, vectors=vectors, payload=list(payloads),
                                          ids=[point_id(c) for c in chunk_ids], batch_size=batch, parallel=parallel,
                                          wait=True)
            return
        for i in range(0, len(chunk_ids), batch):
            self.upsert(name, chunk_ids[i : i + batch], vectors[i : i + batch], payloads[i : i + batch])

    def count(self, name: str) -> int:
        return self.client.count(name, exact=True).count

    def search(self, name: str, vector, k: int) -> list[tuple[str, float, dict[str, Any]]]:
        res = self.client.query_points(name, query=list(map(float, vector)), limit=k, with_payload=True)
        return [(p.payload["chunk_id"], p.score, p.payload) for p in res.points]

    def alias_target(self) -> str | None:
        for a in self.client.get_aliases().aliases:
            if a.alias_name == self.alias:
                return a.collection_name
        return None

    def swap_alias(self, collection: str) -> None:
        """Point the alias at ``collection`` in one call: readers never see it missing."""
        from qdrant_client import models

        ops: list[Any] = []
        if self.alias_target() is not None:
            ops.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias)))
        ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection,
                                                                               alias_name=self.alias)))
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def versions(self) -> list[tuple[int, str]]:
        """(N, name) of every ``<alias>__v<N>`` collection, oldest first."""
        pat = re.compile(rf"^{re.escape(self.alias)}__v(\d+)$")
        found = [(int(m.group(1)), c.name) for c in self.client.get_collections().collections
                 if (m := pat.match(c.name))]
        return sorted(found)

    def exists(self, name: str) -> bool:
        return self.client.collection_exists(name)

    def drop(self, name: str) -> None:
        self.client.delete_collection(name)

    def scroll_all(self, name: str, batch: int = 256) -> Iterator[dict[str, Any]]:
        offset = None
        while True:
            points, offset = self.client.scroll(name, limit=batch, offset=offset, with_payload=True)
            for p in points:
                yield {"id": p.id, "payload": p.payload or {}}
            if offset is None:
                return


@contextlib.contextmanager
def open_vectors(settings: Settings) -> Iterator[QdrantStore]:
    """Open the configured Qdrant for one stage and close it afterwards."""
    client = _connect(settings)
    try:
        yield QdrantStore(client, settings.qdrant.alias, is_server=bool(settings.qdrant.url), layout=settings.qdrant)
    finally:
        client.close()


def _connect(settings: Settings):
    from qdrant_client import QdrantClient

    q = settings.qdrant
    if q.url:
        # check_compatibility would probe on a background thread; the explicit first call below is clearer.
        client = QdrantClient(url=q.url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=int(q.timeout_s),
                              check_compatibility=False)
        try:
            client.get_collections()
        except Exception as exc:
            client.close()
            raise StartupError(f"cannot reach Qdrant at {q.url}: {exc}; check qdrant.url and that the server runs") from None
        return client
    path = settings.qdrant_path
    path.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + q.lock_wait_s
    while True:
        try:
            return QdrantClient(path=str(path))
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"the embedded Qdrant at {path} is held by another ragloop process (lock file {path / '.lock'}); "
                    f"waited {q.lock_wait_s:.0f}s. Retry when its stage ends, or use a Qdrant server (qdrant.url) "
                    "for concurrent access"
                ) from None
            time.sleep(0.2)


def export_dir(settings: Settings) -> Path:
    """Where embedded collections are exported for readers: one Qdrant store per serving collection."""
    return settings.state_dir / "serving"


def export_collection(settings: Settings, collection: str, identity: str, batch: int = 512) -> Path:
    """Copy ``collection`` from the embedded Qdrant into a store of its own under `export_dir` (once; it is never
    written again), so a production process can read a private copy of it while ragloop holds its own store.
    Written into a temporary folder and renamed: a reader never sees half an export. ``identity`` (when the
    collection was built) is kept beside it: an export of an earlier collection of the same name (a store
    started afresh in the same state directory) is replaced, not served."""
    from qdrant_client import QdrantClient, models

    dest = export_dir(settings) / collection
    marker = dest.with_name(f"{collection}.json")
    if dest.is_dir() and marker.exists() and json.loads(marker.read_text()).get("identity") == identity:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    tmp = dest.with_name(f".{collection}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open_vectors(settings) as vs:
        params = vs.client.get_collection(collection).config.params.vectors
        out = QdrantClient(path=str(tmp))
        try:
            out.create_collection(collection, vectors_config=models.VectorParams(size=params.size,
                                                                                 distance=params.distance))
            offset = None
            while True:
                points, offset = vs.client.scroll(collection, limit=batch, offset=offset, with_payload=True,
                                                  with_vectors=True)
                if points:
                    out.upsert(collection, [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload)
                                            for p in points], wait=True)
                if offset is None:
                    break
        finally:
            out.close()
    os.replace(tmp, dest)
    marker.write_text(json.dumps({"collection": collection, "identity": identity}))
    log.info("serving.exported", collection=collection, path=str(dest))
    return dest


def prune_exports(settings: Settings, keep: set[str]) -> list[str]:
    """Delete exported stores of collections that are gone (neither serving nor kept for rollback)."""
    root = export_dir(settings)
    dropped = [p.name for p in root.iterdir() if p.is_dir() and p.name not in keep] if root.is_dir() else []
    for name in dropped:
        shutil.rmtree(root / name, ignore_errors=True)
        (root / f"{name}.json").unlink(missing_ok=True)
    if dropped:
        log.info("serving.exports_pruned", dropped=dropped)
    return dropped
