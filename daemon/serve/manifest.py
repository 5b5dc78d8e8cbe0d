"""Serving hand-off: after every swap, tell production which pipeline serves (ragloop_client reads it).

The manifest (format 2, ragloop_client.manifest) names the concrete collection, the query encoder, the reranker
at its fusion weight and depth, and where the vectors are: a Qdrant server's URL and the name of the
environment variable with its API key, or, for the embedded Qdrant that one process at a time may open, a
store holding only that collection, exported for readers and never written again. Paths inside the manifest's
folder are written relative to it, so the state directory can be moved or mounted elsewhere.

It is written atomically (temp file, fsync, rename), so a reader sees the old file or the new one, never half
of one, with the permissions of a normal file (0644 less the umask; the unit's UMask=0027 makes it 0640 for
group ``serving.manifest_group``). Then the optional ``serving.on_promote`` command runs, with
``$RAGLOOP_MANIFEST`` set and ``{manifest}`` in its arguments replaced by the path; its failure is logged and
kept for ``ragloop status``, never hidden.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog
from ragloop_client.manifest import FORMAT as MANIFEST_FORMAT
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.errors import RegistryError
from daemon.models.fusion import model_weight
from daemon.models import registry
from daemon.models.registry import EMBEDDER, RERANKER, documents_version, get_version, serving
from daemon.serve.vectorstore import export_collection, prune_exports
from daemon.store.db import HOOK_RESULT, IndexVersion, put_state, utcnow

QDRANT_KEY_ENV = "QDRANT_API_KEY"  # the manifest names the variable; the key itself is never written
iv_t = IndexVersion.__table__

log = structlog.get_logger(__name__)


def build_manifest(engine: Engine, settings: Settings, collection: str, embedder_version: int) -> dict[str, Any]:
    emb = get_version(engine, EMBEDDER, embedder_version)
    if emb is None:
        raise RegistryError(f"no embedder version {embedder_version} to publish")
    rr = serving(engine, RERANKER)
    root = settings.manifest_path.parent
    if settings.qdrant.url:
        qdrant = {"url": settings.qdrant.url, "api_key_env": QDRANT_KEY_ENV}
    else:
        with engine.connect() as conn:
            built = conn.scalar(sa.select(iv_t.c.created_at).where(iv_t.c.collection == collection))
        qdrant = {"path": relative_to(export_collection(settings, collection, str(built)), root)}
    return {
        "format": MANIFEST_FORMAT,
        "alias": settings.qdrant.alias,
        "collection": collection,
        "qdrant": qdrant,
        "embedder": {"version": embedder_version, "path": relative_to(registry.model_path(settings, emb), root),
                     "documents_version": documents_version(emb)},
        # production reranks as the gate scored it: the first stage's top rerank_depth, fused
        # (1 - w) * first stage + w * reranker, each min-max per query
        "reranker": {"version": rr["version"], "path": relative_to(registry.model_path(settings, rr), root),
                     "fusion_weight": model_weight(registry.model_path(settings, rr)), "rerank_depth": settings.gate.rerank_depth} if rr else None,
        "written_at": utcnow().isoformat(),
    }


def relative_to(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside it (a model under the state directory), else absolute
    (a base model in the daemon's environment, which a client on this machine can read where it is)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return str(p)


def write_atomic(path: Path, data: dict[str, Any], group: str = "") -> None:
    """Replace ``path`` with ``data`` as JSON, all or nothing, readable as a normal file is (0644 less the
    umask), and owned by ``group`` when one is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644 & ~_umask())  # mkstemp makes 0600: a service running as another user could not read it
        if group:
            os.fchown(fd, -1, grp.getgrnam(group).gr_gid)
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
    write_atomic(settings.manifest_path, manifest, settings.serving.manifest_group)
    if not settings.qdrant.url:
        prune_exports(settings, keep=_kept_collections(engine) | {collection})
    log.info("serving.manifest", path=str(settings.manifest_path), collection=collection,
             embedder_version=embedder_version, reranker=manifest["reranker"])
    run_hook(engine, settings)
    return manifest


def run_hook(engine: Engine, settings: Settings) -> dict[str, Any] | None:
    cmd = settings.serving.on_promote
    if not cmd:
        return None
    path = str(settings.manifest_path)
    argv = [arg.replace("{manifest}", path) for arg in cmd]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=settings.serving.on_promote_timeout_s,
                              env={**os.environ, "RAGLOOP_MANIFEST": path})
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


def republish_if_stale(engine: Engine, settings: Settings) -> bool:
    """At start: rewrite a manifest an older ragloop wrote (another format) for what serves, so clients of this
    release can read it. The hook does not run: what serves did not change."""
    path = settings.manifest_path
    try:
        fmt = json.loads(path.read_text()).get("format")
    except (OSError, ValueError):
        return False
    with engine.connect() as conn:
        cur = conn.execute(sa.select(iv_t).where(iv_t.c.status == "serving", iv_t.c.alias == settings.qdrant.alias)
                           ).mappings().first()
    if fmt == MANIFEST_FORMAT or cur is None:
        return False
    write_atomic(path, build_manifest(engine, settings, cur["collection"], cur["embedder_version"]),
                 settings.serving.manifest_group)
    log.info("serving.manifest_upgraded", path=str(path), old_format=fmt, format=MANIFEST_FORMAT)
    return True


def _kept_collections(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(sa.select(iv_t.c.collection).where(iv_t.c.status.in_(("serving", "retired")))))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
