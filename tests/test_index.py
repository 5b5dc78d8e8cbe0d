import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa
from qdrant_client import QdrantClient
from structlog.testing import capture_logs

from daemon.cli import main
from daemon.data import upsert_chunks
from daemon.errors import CorpusError, LockedError, StartupError
from daemon.models import registry
from daemon.observe import collect_status
from daemon.serve import (IndexBuildError, build_index, open_vectors, publish, rollback_index, search,
                          sync_corpus_from_qdrant)
from daemon.store import open_store

from helpers import example_chunks, make_settings

N = 40


@pytest.fixture
def corpus(engine):
    rows = example_chunks(N)
    upsert_chunks(engine, rows, mark_missing_removed=False)
    return rows


def alias_target(settings) -> str | None:
    """Read the alias with a separate client, as production would."""
    client = QdrantClient(path=str(settings.qdrant_path))
    try:
        return next((a.collection_name for a in client.get_aliases().aliases if a.alias_name == "chunks"), None)
    finally:
        client.close()


def test_build_search_reindex_with_a_second_model_and_rollback(settings, engine, corpus, minilm, finetuned_minilm):
    r1 = build_index(engine, settings, model=minilm)
    assert (r1.collection, r1.previous, r1.chunks) == ("chunks__v1", None, N)
    assert alias_target(settings) == "chunks__v1"
    hits = search(engine, settings, corpus[7]["text"], k=3, model=minilm)
    assert hits[0][0] == corpus[7]["id"] and hits[0][2]["model_version"] == 0

    v1 = registry.register(engine, registry.EMBEDDER, finetuned_minilm, base="embedder v0")
    r2 = build_index(engine, settings, registry.get_version(engine, registry.EMBEDDER, v1))
    assert (r2.collection, r2.previous) == ("chunks__v2", "chunks__v1")
    assert alias_target(settings) == "chunks__v2"  # observed by a second client
    registry.set_serving(engine, registry.EMBEDDER, v1)
    hits = search(engine, settings, corpus[7]["text"], k=3)  # loads the fine-tuned embedder of the alias
    assert hits[0][0] == corpus[7]["id"] and hits[0][2]["model_version"] == v1
    manifest = json.loads(settings.manifest_path.read_text())
    assert manifest["collection"] == "chunks__v2"
    # a model outside the manifest's folder keeps its absolute path; the export inside it is relative
    assert manifest["embedder"] == {"version": v1, "path": finetuned_minilm, "documents_version": v1}
    assert manifest["qdrant"] == {"path": "serving/chunks__v2"}

    back = rollback_index(engine, settings)
    assert back == {"collection": "chunks__v1", "previous": "chunks__v2", "embedder_version": 0}
    assert alias_target(settings) == "chunks__v1"
    assert registry.serving(engine, registry.EMBEDDER)["version"] == 0
    assert json.loads(settings.manifest_path.read_text())["collection"] == "chunks__v1"
    s = collect_status(engine)["serving"]
    assert s["collection"] == "chunks__v1" and s["models"]["embedder"]["version"] == 0


def test_keep_versions_drops_only_old_collections_after_the_swap(settings, engine, corpus, minilm):
    settings.qdrant.keep_versions = 2
    for _ in range(3):
        build_index(engine, settings, model=minilm)
    with open_vectors(settings) as vs:
        assert [n for _, n in vs.versions()] == ["chunks__v2", "chunks__v3"]
        assert vs.alias_target() == "chunks__v3"
    with pytest.raises(IndexBuildError, match="no previous collection"):
        rollback_index(engine, settings)
        rollback_index(engine, settings)


def test_empty_corpus_is_a_clear_error(settings, engine, minilm):
    with pytest.raises(IndexBuildError, match="corpus is empty"):
        build_index(engine, settings, model=minilm)


def test_manifest_is_replaced_atomically(settings, engine, corpus, minilm):
    build_index(engine, settings, model=minilm)
    seen, stop, bad = [], threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                seen.append(json.loads(settings.manifest_path.read_text())["collection"])
            except json.JSONDecodeError as exc:
                bad.append(str(exc))

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(200):
        publish(engine, settings, "chunks__v1", 0)
    stop.set()
    t.join()
    assert bad == [] and len(seen) > 0
    assert [p.name for p in settings.manifest_path.parent.iterdir() if p.name.startswith(".serving")] == []


def test_failing_on_promote_is_logged_and_reported(settings, engine, corpus, minilm):
    settings.serving.on_promote = ["sh", "-c", 'echo "reload refused for $RAGLOOP_MANIFEST ($0)" >&2; exit 3',
                                   "{manifest}"]
    with capture_logs() as cap:
        build_index(engine, settings, model=minilm)
    failed = [e for e in cap if e["event"] == "serving.on_promote_failed"]
    assert len(failed) == 1 and failed[0]["returncode"] == 3
    hook = collect_status(engine)["serving"]["on_promote"]
    assert hook["ok"] is False and hook["returncode"] == 3
    # the path reaches the hook in $RAGLOOP_MANIFEST and where "{manifest}" stands, and is not appended
    assert f"for {settings.manifest_path} ({settings.manifest_path})" in hook["stderr"]
    assert hook["command"][-1] == str(settings.manifest_path) and len(hook["command"]) == 4
    settings.serving.on_promote = ["true"]
    build_index(engine, settings, model=minilm)
    assert collect_status(engine)["serving"]["on_promote"]["ok"] is True


def test_embedded_store_held_by_another_process_is_a_clear_error(settings, engine, corpus, minilm, capsys):
    build_index(engine, settings, model=minilm)
    settings.qdrant.lock_wait_s = 0.5
    holder = QdrantClient(path=str(settings.qdrant_path))
    try:
        with pytest.raises(LockedError, match=r"held by another ragloop process \(lock file .*\.lock\)"):
            search(engine, settings, "anything", model=minilm)
    finally:
        holder.close()
    assert search(engine, settings, corpus[0]["text"], model=minilm)[0][0] == corpus[0]["id"]


def test_unreachable_qdrant_server_fails_at_start(tmp_path, db_url):
    settings = make_settings(tmp_path, db_url, qdrant={"url": "http://127.0.0.1:9", "timeout_s": 2})
    with pytest.raises(StartupError, match=r"cannot reach Qdrant at http://127.0.0.1:9"):
        with open_vectors(settings):
            pass


def test_corpus_sync_from_an_existing_collection(settings, engine, minilm):
    from qdrant_client import models

    client = QdrantClient(path=str(settings.qdrant_path))
    client.create_collection("prod_docs", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.upsert("prod_docs", [
        models.PointStruct(id=i, vector=[1, 0, 0, i], payload={"doc_id": f"p{i}", "body": f"text {i}", "lang": "en"})
        for i in range(1, 6)
    ])
    client.upsert("prod_docs", [models.PointStruct(id=99, vector=[0, 1, 0, 0], payload={"doc_id": "x"})])
    client.close()
    with pytest.raises(CorpusError, match="point 99: payload has no text under 'body'"):
        sync_corpus_from_qdrant(engine, settings, "prod_docs", id_key="doc_id", text_key="body")
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM chunks")) == 0
    client = QdrantClient(path=str(settings.qdrant_path))
    client.delete("prod_docs", points_selector=models.PointIdsList(points=[99]))
    client.close()
    r = sync_corpus_from_qdrant(engine, settings, "prod_docs", id_key="doc_id", text_key="body")
    assert r.added == 5
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT text, metadata FROM chunks WHERE id = 'p3'")).one()
    assert row.text == "text 3" and "en" in str(row.metadata)


@pytest.mark.slow
def test_sigkill_during_reindex_keeps_the_alias_on_the_complete_collection(tmp_path, db_url, minilm):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[store]\nurl = "{db_url}"\n[qdrant]\nbatch_size = 16\n')
    settings = make_settings(tmp_path, db_url, qdrant={"batch_size": 16})
    engine = open_store(settings.store_url)
    upsert_chunks(engine, example_chunks(48), mark_missing_removed=False)
    build_index(engine, settings, model=minilm)
    upsert_chunks(engine, example_chunks(400), mark_missing_removed=False)  # a bigger re-index, to kill midway
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "index", "build"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    points = 0
    while time.monotonic() < deadline and points < 32:
        time.sleep(0.2)
        with engine.connect() as conn:
            points = conn.scalar(sa.text("SELECT max(points) FROM index_versions WHERE status = 'building'")) or 0
    assert points >= 32, "the re-index never got going"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alias_target(settings) == "chunks__v1"
    with open_vectors(settings) as vs:
        assert vs.count("chunks__v1") == 48  # the old collection is complete and still serving
    assert main(["-c", str(cfg), "index", "build"]) == 0  # the next run cleans up and finishes
    assert alias_target(settings) == "chunks__v3"
    with open_vectors(settings) as vs:
        assert not vs.exists("chunks__v2") and vs.count("chunks__v3") == 400
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT status FROM index_versions WHERE collection = 'chunks__v2'")) == "deleted"
    engine.dispose()


class _Counting:
    """The real model, counting the texts it is asked to encode."""

    def __init__(self, model):
        self.model, self.texts = model, 0

    def encode_document(self, texts, **kw):
        self.texts += len(texts)
        return self.model.encode_document(texts, **kw)

    def encode_query(self, texts, **kw):
        self.texts += len(texts)
        return self.model.encode_query(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_a_model_version_embeds_each_chunk_text_once_across_index_and_gate(settings, engine, corpus, minilm):
    from daemon.models import Corpus, cache_dir, corpus_embeddings

    counting = _Counting(minilm)
    r1 = build_index(engine, settings, model=counting)
    assert r1.encoded == N and counting.texts >= N
    counting.texts = 0
    emb = corpus_embeddings(counting, Corpus(engine), cache_dir(settings), "embedder-v0")
    assert counting.texts == 0 and emb.shape == (N, 384)  # the gate reads what the index encoded
    changed = dict(corpus[3], text="Which editor should I use to write Python code on Debian?")
    upsert_chunks(engine, [changed], mark_missing_removed=False)
    r2 = build_index(engine, settings, model=counting)
    assert r2.encoded == 1 and r2.collection == "chunks__v2"  # only the changed chunk's new text
    hits = search(engine, settings, changed["text"], k=1, model=minilm)
    assert hits[0][0] == changed["id"]
    counting.texts = 0
    corpus_embeddings(counting, Corpus(engine), cache_dir(settings), "embedder-v0")
    assert counting.texts == 0


def test_new_collections_take_their_layout_from_config(settings, engine, corpus, minilm):
    settings.qdrant.on_disk = True
    settings.qdrant.hnsw_m, settings.qdrant.shard_number = 32, 2  # a server applies these; local mode keeps 1 shard
    r = build_index(engine, settings, model=minilm)
    client = QdrantClient(path=str(settings.qdrant_path))
    try:
        params = client.get_collection(r.collection).config.params
    finally:
        client.close()
    assert params.vectors.on_disk is True and params.vectors.size == 384
    hits = search(engine, settings, corpus[5]["text"], k=1, model=minilm)
    assert hits[0][0] == corpus[5]["id"]


def test_a_corpus_change_reaches_the_serving_index_without_a_promotion(settings, engine, corpus, minilm):
    """bench/live.py found production serving removed chunks and old texts for days after `ragloop corpus load`
    (only a promotion re-indexed). The daemon now re-indexes the serving collection when the corpus changed
    after it was built: removed chunks gone, added ones found, edited texts current, the manifest moved on."""
    from daemon.serve import refresh_serving_index, serving_index_stale

    build_index(engine, settings, model=minilm)
    assert serving_index_stale(engine, settings) is None and refresh_serving_index(engine, settings) is None
    rows = [dict(r) for r in corpus]
    removed, edited = rows.pop(3), rows[5]
    edited["text"] += " Revised: the answer now covers the newer release too."
    added = dict(rows[9], id="added-chunk", text="Ragloop re-indexes the corpus when it changes.")
    rep = upsert_chunks(engine, rows + [added], mark_missing_removed=True)
    assert (rep.added, rep.changed, rep.removed) == (1, 1, 1)
    assert "1 added, 1 changed, 1 removed" in serving_index_stale(engine, settings)

    r = refresh_serving_index(engine, settings)
    assert (r.collection, r.previous, r.chunks) == ("chunks__v2", "chunks__v1", N)
    assert r.encoded == 2  # the edited and the added chunk; the rest came from the vector cache
    assert alias_target(settings) == "chunks__v2"
    assert json.loads(settings.manifest_path.read_text())["collection"] == "chunks__v2"
    client = QdrantClient(path=str(settings.qdrant_path))
    try:
        points, _ = client.scroll("chunks__v2", limit=1000, with_payload=True)
    finally:
        client.close()
    served = {p.payload["chunk_id"]: p.payload["text"] for p in points}
    assert removed["id"] not in served and served["added-chunk"] == added["text"]
    assert served[edited["id"]] == edited["text"]
    assert search(engine, settings, added["text"], k=1)[0][0] == "added-chunk"
    assert serving_index_stale(engine, settings) is None  # once per change


def test_a_failed_refresh_is_not_retried_on_the_same_change(settings, engine, corpus, minilm):
    from daemon.serve import refresh_serving_index, serving_index_stale

    build_index(engine, settings, model=minilm)
    upsert_chunks(engine, [], mark_missing_removed=True)  # every chunk removed: nothing to index
    with pytest.raises(IndexBuildError, match="corpus is empty"):
        refresh_serving_index(engine, settings)
    assert alias_target(settings) == "chunks__v1"  # the old collection keeps serving
    assert serving_index_stale(engine, settings) is None  # not again at every check
    upsert_chunks(engine, corpus[:5], mark_missing_removed=True)  # the next change tries again
    assert serving_index_stale(engine, settings) is not None
    assert refresh_serving_index(engine, settings).chunks == 5
