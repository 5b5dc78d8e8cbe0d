"""Model registry: versions per kind and which one is serving.

Status flow: candidate -> serving | rejected; serving -> retired when another takes its place.
Version 0 of the embedder is the configured base, registered as serving on first use.
An embedder version is either a full model or a query adapter on another version (daemon/train/adapter.py): its
lineage's "documents" names the version whose document vectors it uses, and so the index it needs.
Plain data: making a version serve in production (re-index, swap, publish) is daemon/serve/promotion.py's.

A model folder under the state directory is stored relative to it ("./models/embedder/v3"), so the state
directory can move or be mounted elsewhere: `model_path` resolves a row's path against ``settings.state_dir``
(anything else, a base model's folder or a Hugging Face id, is stored as configured). `relativize_paths`
rewrites the absolute paths an older release stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.errors import RegistryError
from daemon.models.load import base_embedder_path
from daemon.store.db import ModelVersion, utcnow, write_tx

log = structlog.get_logger(__name__)
versions_t = ModelVersion.__table__
Kind = Literal["embedder", "reranker"]
EMBEDDER: Kind = "embedder"
RERANKER: Kind = "reranker"
KINDS: tuple[Kind, ...] = (EMBEDDER, RERANKER)


STATE_RELATIVE = "./"  # a stored path relative to the state directory (a hub id never starts so)


def model_path(settings: Settings, row: dict[str, Any] | str) -> str:
    """The folder (or hub id) of a registry row, or of a stored path: state-relative ones resolved."""
    path = row if isinstance(row, str) else row["path"]
    return str(settings.state_dir / path[len(STATE_RELATIVE):]) if path.startswith(STATE_RELATIVE) else path


def stored_path(settings: Settings, path: str | Path) -> str:
    """How ``path`` is stored: relative to the state directory when under it, else as given."""
    p = Path(path)
    if p.is_absolute():
        try:
            return STATE_RELATIVE + p.relative_to(settings.state_dir).as_posix()
        except ValueError:
            pass
    return str(path)


def relativize_paths(engine: Engine, settings: Settings) -> int:
    """Store the absolute model paths of an older release relative to the state directory. Returns how many.

    A path under ``state_dir`` is rewritten as it is; one that no longer exists (the state directory moved
    before this release ran) is found by its place under ``models_dir`` (``<kind>/v<N>``) when that exists.
    Run at every start: cheap, and a no-op once done.
    """
    moved = []
    with engine.connect() as conn:
        rows = conn.execute(sa.select(versions_t.c.id, versions_t.c.path)
                            .where(versions_t.c.path.like("/%"))).all()
    for row_id, path in rows:
        new = stored_path(settings, path)
        if new == path and not Path(path).exists():
            p = Path(path)
            here = settings.models_dir / p.parent.name / p.name
            if here.is_dir():
                new = stored_path(settings, here)
        if new != path:
            moved.append({"i": row_id, "p": new})
    if moved:
        with write_tx(engine) as conn:
            conn.execute(versions_t.update().where(versions_t.c.id == sa.bindparam("i")).values(path=sa.bindparam("p")),
                         moved)
        log.info("registry.paths_relativized", versions=len(moved), state_dir=str(settings.state_dir))
    return len(moved)


def serving(engine: Engine, kind: str) -> dict[str, Any] | None:
    """The serving version of ``kind``, or None (a valid state for the reranker)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(versions_t).where(versions_t.c.kind == kind, versions_t.c.status == "serving")
                           ).mappings().first()
    return dict(row) if row else None


def documents_version(row: dict[str, Any]) -> int:
    """The embedder version whose document vectors ``row`` uses: its own, or, for a query adapter, those of
    the model it adapts (the index built for that model serves it as it is)."""
    return int((row.get("lineage") or {}).get("documents", row["version"]))


def vector_key(row: dict[str, Any]) -> str:
    """The embedding cache's key of ``row``'s corpus vectors: one per document model, shared by its adapters."""
    return f"{EMBEDDER}-v{documents_version(row)}"


def is_adapter(row: dict[str, Any]) -> bool:
    return documents_version(row) != row["version"]


def get_version(engine: Engine, kind: str, version: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(versions_t).where(versions_t.c.kind == kind, versions_t.c.version == version)
                           ).mappings().first()
    return dict(row) if row else None


def ensure_base_embedder(engine: Engine, settings: Settings) -> dict[str, Any]:
    """The serving embedder, registering the configured base as version 0 the first time."""
    current = serving(engine, EMBEDDER)
    if current is not None:
        return current
    with write_tx(engine) as conn:
        exists = conn.scalar(sa.select(sa.func.count()).where(versions_t.c.kind == EMBEDDER, versions_t.c.version == 0))
        if not exists:
            path = base_embedder_path(settings.train.embedder.base)
            conn.execute(versions_t.insert().values(kind=EMBEDDER, version=0, path=path, status="serving", base=None,
                                                    created_at=utcnow(), status_at=utcnow()))
            log.info("registry.base_registered", kind=EMBEDDER, version=0, path=path)
    current = serving(engine, EMBEDDER)
    if current is None:
        raise RegistryError("no serving embedder: every version is retired or rejected; make one serve with "
                            "`ragloop promote embedder VERSION`")
    return current


def next_version(engine: Engine, kind: str) -> int:
    with engine.connect() as conn:
        return (conn.scalar(sa.select(sa.func.max(versions_t.c.version)).where(versions_t.c.kind == kind)) or 0) + 1


def register(engine: Engine, kind: str, path: str, *, version: int | None = None, status: str = "candidate",
             base: str | None = None, lineage: dict[str, Any] | None = None) -> int:
    """Add a version of ``kind`` (by default the next number) and return its number."""
    with write_tx(engine) as conn:
        if version is None:
            version = (conn.scalar(sa.select(sa.func.max(versions_t.c.version))
                                   .where(versions_t.c.kind == kind)) or 0) + 1
        conn.execute(versions_t.insert().values(kind=kind, version=version, path=path, status=status, base=base,
                                                lineage=lineage, created_at=utcnow(), status_at=utcnow()))
    return version


def set_serving(engine: Engine, kind: str, version: int) -> None:
    """Make ``version`` the serving one; the previous serving version becomes retired."""
    with write_tx(engine) as conn:
        now = utcnow()
        conn.execute(versions_t.update().where(versions_t.c.kind == kind, versions_t.c.status == "serving")
                     .values(status="retired", status_at=now))
        n = conn.execute(versions_t.update().where(versions_t.c.kind == kind, versions_t.c.version == version)
                         .values(status="serving", status_at=now)).rowcount
        if n != 1:
            raise RegistryError(f"no {kind} version {version}; `ragloop models` lists the versions there are")
    log.info("registry.serving", kind=kind, version=version)



def set_status(engine: Engine, kind: str, version: int, status: str) -> None:
    with write_tx(engine) as conn:
        conn.execute(versions_t.update().where(versions_t.c.kind == kind, versions_t.c.version == version)
                     .values(status=status, status_at=utcnow()))


def set_metrics(engine: Engine, kind: str, version: int, metrics: dict[str, Any]) -> None:
    with write_tx(engine) as conn:
        conn.execute(versions_t.update().where(versions_t.c.kind == kind, versions_t.c.version == version)
                     .values(metrics=metrics))


def last_retired(engine: Engine, kind: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(versions_t).where(versions_t.c.kind == kind, versions_t.c.status == "retired")
                           .order_by(versions_t.c.status_at.desc(), versions_t.c.version.desc())).mappings().first()
    return dict(row) if row else None
