"""Serving hand-off: after every swap, tell production which query encoder matches the alias.

The manifest is written atomically (temp file, fsync, rename), so a reader sees the old file or the
new one, never half of one. Then the optional ``serving.on_promote`` command runs with the manifest
path as its last argument; its failure is logged and kept for ``ragloop status``, never hidden.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.models.fusion import model_weight
from daemon.models.registry import EMBEDDER, RERANKER, get_version, serving
from daemon.store.db import HOOK_RESULT, put_state, utcnow

log = structlog.get_logger(__name__)


def build_manifest(engine: Engine, settings: Settings, collection: str, embedder_version: int) -> dict[str, Any]:
    emb = get_version(engine, EMBEDDER, embedder_version)
    rr = serving(engine, RERANKER)
    return {
        "format": 1,
        "alias": settings.qdrant.alias,
        "collection": collection,
        "qdrant": {"url": settings.qdrant.url} if settings.qdrant.url else {"path": str(settings.qdrant_path)},
        "embedder": {"version": embedder_version, "path": emb["path"] if emb else None},
        # production reranks as the gate scored it: the first stage's top rerank_depth, fused
        # (1 - w) * first stage + w * reranker, each min-max per query
        "reranker": {"version": rr["version"], "path": rr["path"], "fusion_weight": model_weight(rr["path"]),
                     "rerank_depth": settings.gate.rerank_depth} if rr else None,
        "written_at": utcnow().isoformat(),
    }


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself survives a power cut
    finally:
        os.close(dfd)


def publish(engine: Engine, settings: Settings, collection: str, embedder_version: int) -> dict[str, Any]:
    """Write the manifest for what the alias now serves and run the on_promote hook."""
    manifest = build_manifest(engine, settings, collection, embedder_version)
    write_atomic(settings.manifest_path, manifest)
    log.info("serving.manifest", path=str(settings.manifest_path), collection=collection,
             embedder_version=embedder_version, reranker=manifest["reranker"])
    run_hook(engine, settings)
    return manifest


def run_hook(engine: Engine, settings: Settings) -> dict[str, Any] | None:
    cmd = settings.serving.on_promote
    if not cmd:
        return None
    argv = [*cmd, str(settings.manifest_path)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=settings.serving.on_promote_timeout_s)
        result = {"ok": proc.returncode == 0, "returncode": proc.returncode, "stderr": proc.stderr[-500:]}
    except (OSError, subprocess.TimeoutExpired) as exc:
        result = {"ok": False, "returncode": None, "stderr": str(exc)[-500:]}
    result.update(command=argv, at=utcnow().isoformat())
    put_state(engine, HOOK_RESULT, result)
    if result["ok"]:
        log.info("serving.on_promote", command=argv, returncode=0)
    else:
        log.error("serving.on_promote_failed", command=argv, returncode=result["returncode"], stderr=result["stderr"])
    return result
