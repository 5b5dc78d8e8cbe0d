"""Index: embed the corpus into a new Qdrant collection and swap the alias to it (blue/green).

`build_index` streams chunks from the store in batches, embeds batch i+1 while batch i is upserted,
verifies the new collection (point count, and sample chunks finding themselves at rank 1), then moves
the alias with one `update_collection_aliases` call. The alias is only ever moved to a complete,
verified collection: a crash or SIGKILL mid-build leaves it where it was, and the next build drops
the half-built collection. The newest `qdrant.keep_versions` collections are kept for rollback.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.data.corpus import upsert_chunks
from daemon.errors import CorpusError, RagloopError
from daemon.journal import Progress
from daemon.models import registry
from daemon.models.encoding import encode_documents, encode_pool, encode_queries
from daemon.models.load import load_embedder
from daemon.models.vectors import cache_dir, load_vectors, save_vectors
from daemon.serve.manifest import publish
from daemon.serve.vectorstore import QdrantStore, open_vectors
from daemon.store.db import (CORPUS_CHANGED, ENCODE_RATE, INDEX_REFRESH_FAILED, Chunk, IndexVersion, get_state,
                             put_state, utcnow, write_tx)

log = structlog.get_logger(__name__)
chunks_t = Chunk.__table__
iv_t = IndexVersion.__table__


class IndexBuildError(RagloopError):
    """The index cannot be built, verified or rolled back; the alias was not moved."""


@dataclass
class IndexReport:
    collection: str
    previous: str | None
    embedder_version: int
    chunks: int
    seconds: float
    chunks_per_s: float
    dropped: list[str]
    encoded: int = 0  # chunks encoded; the rest came from the embedding cache
    encode_s: float = 0.0  # seconds spent encoding them


def build_index(engine: Engine, settings: Settings, embedder: dict[str, Any] | None = None, *, model=None,
                serves: int | None = None) -> IndexReport:
    """Embed every chunk with ``embedder`` (default: the serving one) and point the alias at the result.
    ``serves``: the embedder version the manifest names, when it is not ``embedder`` (a query adapter on its
    document vectors).

    Raises:
        IndexBuildError: empty corpus or failed verification; the alias stays where it was.
    """
    embedder = embedder or registry.ensure_base_embedder(engine, settings)
    total = _count_chunks(engine)
    if total == 0:
        raise IndexBuildError("the corpus is empty: load chunks with `ragloop corpus load FILE.jsonl` first")
    model = model or load_embedder(registry.model_path(settings, embedder), settings.train.device, settings.train.trust_remote_code)
    with open_vectors(settings) as vs:
        _drop_unfinished(engine, vs)
        version = _next_version(engine, vs)
        name = f"{settings.qdrant.alias}__v{version}"
        _record(engine, name, settings.qdrant.alias, version, embedder, total)
        vs.create(name, model.get_embedding_dimension())
        prog = Progress("index.progress", total, unit="chunks", collection=name)
        with encode_pool(model, settings.index.encode_devices) as pool:
            encoded, encode_s = _fill(engine, vs, name, model, embedder, settings.qdrant.batch_size, prog,
                                      cache_dir(settings), pool)
        _verify(engine, vs, name, model, total, settings.qdrant.verify_sample, seed=version)
        previous = vs.alias_target()
        vs.swap_alias(name)
        _mark_swapped(engine, name, previous)
        dropped = _retain(engine, vs, settings.qdrant.keep_versions, keep=name)
    figures = prog.finish()
    publish(engine, settings, name, embedder["version"] if serves is None else serves)
    log.info("index.swapped", collection=name, previous=previous, embedder_version=embedder["version"],
             chunks=total, encoded=encoded, from_cache=total - encoded, dropped=dropped)
    if encoded >= MIN_RATE_SAMPLE:
        put_state(engine, ENCODE_RATE, {"chunks_per_s": round(encoded / max(encode_s, 1e-6), 2), "chunks": encoded,
                                        "devices": settings.index.encode_devices, "at": utcnow().isoformat()})
    return IndexReport(name, previous, embedder["version"], total, figures["elapsed_s"],
                       figures["chunks_per_s"], dropped, encoded, round(encode_s, 3))


# An encode of at least this many chunks measures the corpus encode rate the re-index estimate uses.
MIN_RATE_SAMPLE = 64


def reindex_estimate_s(engine: Engine, settings: Settings) -> float | None:
    """Seconds a full fine-tune's promotion would cost in corpus encoding: active chunks / the encode rate
    the last index build measured (None before any build encoded MIN_RATE_SAMPLE chunks)."""
    rate = (get_state(engine, ENCODE_RATE) or {}).get("chunks_per_s")
    return round(_count_chunks(engine) / rate, 1) if rate else None


def _count_chunks(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).where(chunks_t.c.removed_at.is_(None)))


def iter_chunks(engine: Engine, batch: int) -> Iterator[list[dict[str, Any]]]:
    """Active chunks in id order, ``batch`` at a time (keyset pagination: bounded memory)."""
    last = ""
    cols = (chunks_t.c.id, chunks_t.c.text, chunks_t.c.text_hash, chunks_t.c.doc, chunks_t.c.metadata)
    while True:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(*cols).where(chunks_t.c.removed_at.is_(None), chunks_t.c.id > last)
                                .order_by(chunks_t.c.id).limit(batch)).mappings().all()
        if not rows:
            return
        last = rows[-1]["id"]
        yield [dict(r) for r in rows]


# Chunks embedded per encode call: sentence-transformers sorts a call's texts by length, so a window of
# several batches pads far less than one batch in id order (0.88x -> 0.9x+ of bare encode on CPU).
WINDOW_BATCHES = 8


def _fill(engine: Engine, vs: QdrantStore, name: str, model, embedder: dict[str, Any], batch: int, prog: Progress,
          cache: Path, encoder_pool: dict[str, Any] | None = None) -> int:
    """Embed window i+1 while window i is upserted on a worker thread (torch releases the GIL).

    Vectors this model version already has in the embedding cache (the gate computed them for the
    candidate it promoted) are upserted as they are; only the rest is encoded, and added to the cache.
    Each window's encode runs over ``encoder_pool`` (index.encode_devices) when there is one.
    Returns how many chunks were encoded, and the seconds their encoding took."""
    key, embedder_version = registry.vector_key(embedder), embedder["version"]
    cached = load_vectors(cache, key)
    seen: set[str] = set()
    encoded, encode_s = 0, 0.0
    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragloop-upsert") as pool:
        for rows in iter_chunks(engine, batch * WINDOW_BATCHES):
            todo = [r for r in rows if r["text_hash"] not in cached]
            if todo:
                t = time.monotonic()
                fresh = encode_documents(model, [r["text"] for r in todo], batch, encoder_pool)
                encode_s += time.monotonic() - t
                cached.update(zip((r["text_hash"] for r in todo), fresh))
                encoded += len(todo)
            seen.update(r["text_hash"] for r in rows)
            vectors = np.stack([cached[r["text_hash"]] for r in rows])
            if pending is not None:
                pending.result()
                _set_points(engine, name, prog.done)
            pending = pool.submit(_upsert_window, vs, name, rows, vectors, embedder_version, batch)
            prog.advance(len(rows))
        if pending is not None:
            pending.result()
    _set_points(engine, name, prog.done)
    if encoded:
        save_vectors(cache, key, cached, seen)
    return encoded, encode_s


def _upsert_window(vs: QdrantStore, name: str, rows, vectors, embedder_version: int, batch: int) -> None:
    payloads = [{"chunk_id": r["id"], "text": r["text"], "doc": r["doc"], "metadata": r["metadata"],
                 "text_hash": r["text_hash"], "model_version": embedder_version} for r in rows]
    vs.upload(name, [r["id"] for r in rows], vectors, payloads, batch)


def _verify(engine: Engine, vs: QdrantStore, name: str, model, total: int, sample: int, seed: int) -> None:
    points = vs.count(name)
    problems = []
    if points != total:
        problems.append(f"{points} points for {total} chunks")
    with engine.connect() as conn:
        ids = list(conn.scalars(sa.select(chunks_t.c.id).where(chunks_t.c.removed_at.is_(None)).order_by(chunks_t.c.id)))
        picked = random.Random(seed).sample(ids, min(sample, len(ids)))
        rows = conn.execute(sa.select(chunks_t.c.id, chunks_t.c.text, chunks_t.c.text_hash)
                            .where(chunks_t.c.id.in_(picked))).all() if picked else []
    if rows:
        vecs = encode_documents(model, [r.text for r in rows])
        # A chunk with the same text as another may be beaten by its twin: same hash counts as found.
        lost = [r.id for r, v in zip(rows, vecs)
                if (top := vs.search(name, v, 1)) and top[0][0] != r.id and top[0][2].get("text_hash") != r.text_hash]
        if lost:
            problems.append(f"{len(lost)} of {len(rows)} sample chunks not at rank 1 (e.g. {lost[:3]})")
    if problems:
        _set_status(engine, name, "failed")
        vs.drop(name)
        raise IndexBuildError(f"verification of {name} failed: {'; '.join(problems)}; the alias was not moved")
    log.info("index.verified", collection=name, points=points, sample=len(rows))


def _next_version(engine: Engine, vs: QdrantStore) -> int:
    with engine.connect() as conn:
        known = conn.scalar(sa.select(sa.func.max(iv_t.c.version))) or 0
    existing = max((n for n, _ in vs.versions()), default=0)
    return max(known, existing) + 1


def _record(engine: Engine, name: str, alias: str, version: int, embedder: dict[str, Any], total: int) -> None:
    with write_tx(engine) as conn:
        conn.execute(iv_t.insert().values(collection=name, alias=alias, version=version, status="building",
                                          embedder_version=embedder["version"], embedder_path=embedder["path"],
                                          chunks=total, points=0, created_at=utcnow()))


def _set_points(engine: Engine, name: str, points: int) -> None:
    with write_tx(engine) as conn:
        conn.execute(iv_t.update().where(iv_t.c.collection == name).values(points=points))


def _set_status(engine: Engine, name: str, status: str, **values: Any) -> None:
    with write_tx(engine) as conn:
        conn.execute(iv_t.update().where(iv_t.c.collection == name).values(status=status, **values))


def _mark_swapped(engine: Engine, name: str, previous: str | None) -> None:
    with write_tx(engine) as conn:
        now = utcnow()
        conn.execute(iv_t.update().where(iv_t.c.status == "serving").values(status="retired"))
        conn.execute(iv_t.update().where(iv_t.c.collection == name)
                     .values(status="serving", finished_at=now, swapped_at=now))


def _drop_unfinished(engine: Engine, vs: QdrantStore) -> None:
    """Collections a crashed or failed build left behind: never the alias target."""
    target = vs.alias_target()
    with engine.connect() as conn:
        stale = list(conn.scalars(sa.select(iv_t.c.collection).where(iv_t.c.status.in_(("building", "failed")))))
    for name in stale:
        if name != target and vs.exists(name):
            vs.drop(name)
        _set_status(engine, name, "deleted")
        log.warning("index.dropped_unfinished", collection=name)


def _retain(engine: Engine, vs: QdrantStore, keep_versions: int, keep: str) -> list[str]:
    """Drop collections beyond the newest ``keep_versions`` (only after a successful swap)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(iv_t.c.collection).where(iv_t.c.status.in_(("serving", "retired")))
                            .order_by(iv_t.c.version.desc())).all()
    dropped = []
    for (name,) in rows[keep_versions:]:
        if name == keep:
            continue
        if vs.exists(name):
            vs.drop(name)
        _set_status(engine, name, "deleted")
        dropped.append(name)
    return dropped


def rollback_index(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Point the alias back at the previous collection and make its embedder serving again."""
    with open_vectors(settings) as vs:
        current = vs.alias_target()
        if current is None:
            raise IndexBuildError("nothing is indexed yet: run `ragloop index build`; there is nothing to roll back")
        with engine.connect() as conn:
            cur = conn.execute(sa.select(iv_t).where(iv_t.c.collection == current)).mappings().first()
            prev = conn.execute(sa.select(iv_t).where(iv_t.c.status == "retired",
                                                      iv_t.c.version < (cur["version"] if cur else 1 << 30))
                                .order_by(iv_t.c.version.desc())).mappings().first()
        if prev is None or not vs.exists(prev["collection"]):
            raise IndexBuildError(f"no previous collection to roll back to from {current!r} "
                                  f"(qdrant.keep_versions={settings.qdrant.keep_versions} keeps that many)")
        vs.swap_alias(prev["collection"])
        with write_tx(engine) as conn:
            conn.execute(iv_t.update().where(iv_t.c.collection == current).values(status="retired"))
            conn.execute(iv_t.update().where(iv_t.c.collection == prev["collection"])
                         .values(status="serving", swapped_at=utcnow()))
    registry.set_serving(engine, registry.EMBEDDER, prev["embedder_version"])
    publish(engine, settings, prev["collection"], prev["embedder_version"])
    log.info("index.rollback", collection=prev["collection"], previous=current,
             embedder_version=prev["embedder_version"])
    return {"collection": prev["collection"], "previous": current, "embedder_version": prev["embedder_version"]}


def serving_collection(engine: Engine, settings: Settings) -> dict[str, Any] | None:
    """The index_versions row the alias points at, as recorded by ragloop."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(iv_t).where(iv_t.c.status == "serving", iv_t.c.alias == settings.qdrant.alias)
                           ).mappings().first()
    return dict(row) if row else None


def serving_index_stale(engine: Engine, settings: Settings) -> str | None:
    """Why the serving collection no longer matches the corpus (chunks added, changed, removed or restored
    since it was built), or None when it does, when nothing serves yet, or when a refresh already failed on
    this very change (an operator's `ragloop index build`, or the next change, tries again)."""
    stale = _staleness(engine, settings)
    return stale[2] if stale else None


def _staleness(engine: Engine, settings: Settings) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """(the serving collection's row, the corpus change it predates, why) or None (see serving_index_stale)."""
    cur = serving_collection(engine, settings)
    changed = get_state(engine, CORPUS_CHANGED)
    if cur is None or changed is None:
        return None
    built = cur["created_at"] if cur["created_at"].tzinfo else cur["created_at"].replace(tzinfo=timezone.utc)
    if datetime.fromisoformat(changed["at"]) < built:
        return None
    if (get_state(engine, INDEX_REFRESH_FAILED) or {}).get("at") == changed["at"]:
        return None
    what = ", ".join(f"{changed[k]} {k}" for k in ("added", "changed", "removed", "restored") if changed.get(k))
    return cur, changed, f"the corpus changed at {changed['at']} ({what}) after {cur['collection']} was built"


def refresh_serving_index(engine: Engine, settings: Settings,
                          on_stage: Callable[[str], None] | None = None) -> IndexReport | None:
    """Re-index the corpus into a new collection with the model that built the serving one, when the corpus
    changed since (`ragloop corpus load` only writes the store): otherwise production keeps returning removed
    chunks and old texts, and never finds added ones, until the next promotion. Unchanged chunks come from the
    vector cache; the alias swap, the manifest and the hook are a promotion's, so clients hot-reload as after
    one. Returns the build's report, or None when nothing was stale (``on_stage`` is told only when it
    re-indexes)."""
    stale = _staleness(engine, settings)
    if stale is None:
        return None
    cur, changed, why = stale
    if on_stage is not None:
        on_stage("re-indexing: the corpus changed")
    builder = registry.get_version(engine, registry.EMBEDDER, cur["embedder_version"])
    serving = registry.serving(engine, registry.EMBEDDER)
    log.info("index.refresh", reason=why, collection=cur["collection"], embedder_version=cur["embedder_version"])
    try:
        return build_index(engine, settings, builder, serves=serving["version"] if serving else None)
    except Exception:
        put_state(engine, INDEX_REFRESH_FAILED, {"at": changed["at"]})  # not again every check on one change
        raise


def search(engine: Engine, settings: Settings, query: str, k: int = 10, model=None) -> list[tuple[str, float, dict]]:
    """Embed ``query`` with the serving embedder (its query route, as production does) and search the alias."""
    if serving_collection(engine, settings) is None:
        raise IndexBuildError("nothing is indexed yet: run `ragloop index build`")
    emb = registry.ensure_base_embedder(engine, settings)
    model = model or load_embedder(registry.model_path(settings, emb), settings.train.device, settings.train.trust_remote_code)
    vec = encode_queries(model, [query])[0]
    with open_vectors(settings) as vs:
        return vs.search(settings.qdrant.alias, vec, k)


def sync_corpus_from_qdrant(engine: Engine, settings: Settings, collection: str, *, id_key: str = "chunk_id",
                            text_key: str = "text", doc_key: str = "doc", merge: bool = False):
    """Read chunk texts from an existing collection's payloads into the store (all or nothing)."""
    records, problems = [], []
    with open_vectors(settings) as vs:
        if not vs.exists(collection):
            raise IndexBuildError(f"no collection {collection!r} in Qdrant")
        for n, p in enumerate(vs.scroll_all(collection), start=1):
            payload = p["payload"]
            text = payload.get(text_key)
            if not isinstance(text, str) or not text.strip():
                problems.append((n, f"point {p['id']}: payload has no text under {text_key!r}"))
                continue
            cid = payload.get(id_key, p["id"])
            meta = {k: v for k, v in payload.items() if k not in (id_key, text_key, doc_key)}
            records.append({"id": str(cid), "text": text, "doc": payload.get(doc_key), "metadata": meta or None})
    if problems:
        raise CorpusError(f"qdrant:{collection}", problems)
    report = upsert_chunks(engine, records, mark_missing_removed=not merge)
    log.info("corpus.sync", collection=collection, **report.as_dict())
    return report
