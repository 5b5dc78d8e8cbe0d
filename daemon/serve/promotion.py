"""Promotion: make a candidate serve, or go back to what served before, in one place.

The order is always the same (re-index -> alias swap -> mark serving -> publish the manifest), so that a
failure at any step leaves what served before serving: a failed re-index changes nothing, and a model is
marked serving only once production can find its vectors. The registry (daemon/models/registry.py) holds the
versions as plain data; the index (daemon/serve/index.py) builds and swaps collections; this module orders them.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.errors import RegistryError
from daemon.gate.decision import record_forced
from daemon.models.registry import (EMBEDDER, documents_version, get_version, last_retired, serving, set_serving,
                                    set_status)
from daemon.serve.index import build_index, rollback_index, serving_collection
from daemon.serve.manifest import publish

log = structlog.get_logger(__name__)


def promote(engine: Engine, settings: Settings, kind: str, version: int, *, forced: bool = False) -> None:
    """Make a candidate serve. An embedder is re-indexed (blue/green) first and marked serving only
    after the alias swapped: a failed re-index leaves the old embedder serving. A query adapter on the
    document model of the serving collection needs no re-index, nor does a reranker: the manifest is
    rewritten so production picks them up."""
    row = get_version(engine, kind, version)
    if row is None:
        raise RegistryError(f"no {kind} version {version}; `ragloop models` lists the versions there are")
    if row["status"] == "deleted":
        raise RegistryError(f"{kind} v{version} was deleted by retention (its folder is gone); raise "
                            "retention.keep_previous or retention.keep_rejected_days to keep versions longer")
    if kind == EMBEDDER:
        cur = serving_collection(engine, settings)
        builder = get_version(engine, EMBEDDER, cur["embedder_version"]) if cur else None
        if builder is not None and documents_version(builder) == documents_version(row):
            set_serving(engine, kind, version)  # the collection already holds this model's document vectors
            publish(engine, settings, cur["collection"], version)
            log.info("registry.promoted", kind=kind, version=version, forced=forced, reindexed=False)
            return
        build_index(engine, settings, row)  # raises on failure: nothing changes
        set_serving(engine, kind, version)
    else:
        set_serving(engine, kind, version)
        cur = serving_collection(engine, settings)
        if cur is not None:
            publish(engine, settings, cur["collection"], serving(engine, EMBEDDER)["version"])
    log.info("registry.promoted", kind=kind, version=version, forced=forced)


def force_promote(engine: Engine, settings: Settings, kind: str, version: int) -> None:
    """An operator's `ragloop promote`: make ``version`` serve whatever the gate said, and record the override
    beside the gate's decisions."""
    promote(engine, settings, kind, version, forced=True)
    record_forced(engine, kind, version)


def rollback(engine: Engine, settings: Settings, kind: str) -> dict[str, Any]:
    """Back to the previous serving model of ``kind`` (for the embedder: its collection too)."""
    current = serving(engine, kind)
    prev = last_retired(engine, kind)
    if kind == EMBEDDER:
        cur = serving_collection(engine, settings)
        if current is None or prev is None or cur is None or documents_version(prev) != documents_version(current):
            return rollback_index(engine, settings)
        # the previous embedder reads the same document vectors (one of them is a query adapter): no swap
        set_serving(engine, kind, prev["version"])
        publish(engine, settings, cur["collection"], prev["version"])
        result = {"collection": cur["collection"], "previous": cur["collection"], "embedder_version": prev["version"]}
        log.info("registry.rollback", kind=kind, **result)
        return result
    if current is None and prev is None:
        raise RegistryError(f"no {kind} to roll back: none is serving and none served before")
    if prev is not None:
        set_serving(engine, kind, prev["version"])
    else:
        set_status(engine, kind, current["version"], "retired")  # back to "no reranker"
    cur = serving_collection(engine, settings)
    if cur is not None:
        publish(engine, settings, cur["collection"], serving(engine, EMBEDDER)["version"])
    result = {"kind": kind, "from": current["version"] if current else None, "to": prev["version"] if prev else None}
    log.info("registry.rollback", **result)
    return result
