import gzip
import json
import os
import random
import shutil
import threading
import time

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

import daemon.ingest.reader as ingest_reader
from daemon.ingest import ingest_once, retry_quarantine
from daemon.observe import collect_status

from helpers import event_line, stored_request_ids, write_corpus

IDS = [f"c{i}" for i in range(100)]


@pytest.fixture
def logs(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    return d


@pytest.fixture
def corpus(engine):
    write_corpus(engine, IDS)


def append(path, lines):
    with open(path, "a") as fh:
        fh.write("".join(line + "\n" for line in lines))


def count(engine, table):
    with engine.connect() as conn:
        return conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))


def test_ingest_classifies_dedups_and_is_idempotent(settings, engine, corpus, logs):
    lines = [event_line(i, hit=i % 3 == 0) for i in range(90)]
    lines += [event_line(i, hit=False) for i in range(10)]  # repeats of queries 0..9
    append(logs / "feedback.jsonl", lines)
    with capture_logs() as cap:
        rep = ingest_once(engine, settings)
    assert (rep.lines, rep.events, rep.hits, rep.misses, rep.quarantined) == (100, 100, 30, 70, 0)
    assert any(e["event"] == "ingest.pass" and e["events"] == 100 for e in cap)
    assert count(engine, "training_pairs") == 90  # ten repeated (query, chunk) pairs merged
    with engine.connect() as conn:
        cnt, miss, hit, origin = conn.execute(sa.text(
            "SELECT count, miss_count, hit_count, origin FROM training_pairs WHERE query = :q"),
            {"q": "question number 0 about things"}).one()
    assert (cnt, miss, hit, origin) == (2, 1, 1, "failure")
    assert ingest_once(engine, settings).lines == 0
    s = collect_status(engine)
    assert (s["events"], s["misses"], s["hits"]) == (100, 70, 30)
    assert sum(sum(o.values()) for o in s["pairs"].values()) == 90


def test_partial_last_line_waits_for_its_newline(settings, engine, corpus, logs):
    f = logs / "feedback.jsonl"
    full = event_line(1)
    f.write_text(event_line(0) + "\n" + full[:40])
    assert ingest_once(engine, settings).events == 1
    with open(f, "a") as fh:
        fh.write(full[40:] + "\n")
    assert ingest_once(engine, settings).events == 1
    assert stored_request_ids(engine) == ["r0", "r1"]


def test_rename_rotation_while_appending(settings, engine, corpus, logs):
    f = logs / "feedback.jsonl"
    written, done = [], threading.Event()

    def writer():
        rng = random.Random(1)
        for i in range(3000):
            append(f, [event_line(i)])
            written.append(f"r{i}")
            if i in (700, 1500, 2400):  # logrotate "create": rename, then a fresh file
                n = len(list(logs.glob("feedback.jsonl.*"))) + 1
                os.rename(f, logs / f"feedback.jsonl.{n}")
            if rng.random() < 0.01:
                time.sleep(0.005)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        ingest_once(engine, settings)
    t.join()
    ingest_once(engine, settings)
    assert sorted(stored_request_ids(engine)) == sorted(written)
    assert len(stored_request_ids(engine)) == 3000


def test_copytruncate_while_appending(settings, engine, corpus, logs):
    f = logs / "feedback.jsonl"
    lock, written, done = threading.Lock(), [], threading.Event()

    def writer():
        for i in range(2000):
            with lock:
                append(f, [event_line(i)])
                written.append(f"r{i}")
            if i in (500, 1200):
                # logrotate copytruncate. The writer pauses only for the copy+truncate instant; lines
                # written inside that window would be lost by copytruncate itself, whatever the reader.
                with lock:
                    shutil.copyfile(f, logs / f"feedback.jsonl.{i}")
                    os.truncate(f, 0)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    while not done.is_set():
        ingest_once(engine, settings)
    t.join()
    ingest_once(engine, settings)
    got = stored_request_ids(engine)
    assert len(got) == 2000 and sorted(got) == sorted(written)


def test_gz_rotated_file_is_finished_once(settings, engine, corpus, logs):
    f = logs / "feedback.jsonl"
    append(f, [event_line(i) for i in range(50)])
    assert ingest_once(engine, settings).events == 50
    append(f, [event_line(i) for i in range(50, 80)])  # written after the last pass...
    with open(f, "rb") as src, gzip.open(logs / "feedback.jsonl.1.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)  # ...then rotated and compressed
    f.unlink()
    append(f, [event_line(i) for i in range(80, 100)])
    rep = ingest_once(engine, settings)
    assert rep.events == 50  # the 30 unread lines of the old file, from the .gz, and 20 new ones
    assert sorted(stored_request_ids(engine), key=lambda r: int(r[1:])) == [f"r{i}" for i in range(100)]
    os.utime(logs / "feedback.jsonl.1.gz")
    assert ingest_once(engine, settings).events == 0


def test_gz_file_never_seen_before_is_read_completely(settings, engine, corpus, logs):
    with gzip.open(logs / "old.jsonl.gz", "wt") as fh:
        fh.write("".join(event_line(i) + "\n" for i in range(40)))
    assert ingest_once(engine, settings).events == 40
    assert ingest_once(engine, settings).events == 0


def test_missing_and_corrupt_files_are_skipped_not_fatal(settings, engine, corpus, logs):
    (logs / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00garbage" * 100)
    append(logs / "ok.jsonl", [event_line(1)])
    with capture_logs() as cap:
        rep = ingest_once(engine, settings, [str(logs / "gone.jsonl"), str(logs / "broken.jsonl.gz"),
                                             str(logs / "ok.jsonl")])
    assert rep.events == 1 and len(rep.skipped_files) == 2
    assert sum(e["event"] == "ingest.file_error" for e in cap) == 2


def test_oversized_line_is_quarantined_and_skipped(settings, engine, corpus, logs):
    settings.ingest.max_line_bytes = 1024
    append(logs / "feedback.jsonl", [event_line(0), json.dumps({"query": "x" * 5000}), event_line(1)])
    rep = ingest_once(engine, settings)
    assert (rep.events, rep.quarantined) == (2, 1)
    with engine.connect() as conn:
        reason, line_no, raw = conn.execute(sa.text("SELECT reason, line_no, raw FROM quarantine")).one()
    assert "max_line_bytes=1024" in reason and line_no == 2 and len(raw) <= 2000


def _malformed(rng: random.Random, i: int) -> str:
    good = json.loads(event_line(i))
    kind = rng.randrange(12)
    if kind == 0:
        return event_line(i)[: rng.randrange(1, 60)]  # truncated JSON
    if kind == 1:
        return rng.choice(["null", "[]", "42", '"str"', "{}", "{", "}{", "\x00\x01", "💥"])
    if kind == 2:
        key = rng.choice(["ts", "query", "expected_ids", "retrieved_ids"])
        del good[key]
        if key in ("query", "expected_ids"):  # with a request_id, a label line or a retrieval labelled later
            del good["request_id"]
    elif kind == 3:
        good[rng.choice(["ts", "query", "expected_ids", "retrieved_ids"])] = rng.choice([None, 7, 1.5, True, {}, [None]])
    elif kind == 4:
        good["expected_ids"] = []
    elif kind == 5:
        good["expected_ids"] = [f"unknown-{i}"]
    elif kind == 6:
        good["ts"] = rng.choice(["2026-13-45T00:00:00Z", "yesterday", "2026-11-01T00:00:00", ""])
    elif kind == 7:
        good["retrieved_scores"] = [0.5] * rng.randrange(0, 9)
    elif kind == 8:
        good["query"] = rng.choice(["", "   ", "q" * 5000])
    elif kind == 9:
        good["retrieved_ids"] = ["c1"] * 2000
    elif kind == 10:
        good["expected_ids"] = ["c1", ""]
    else:
        return json.dumps(good)[:-1] + ',"extra":}'
    return json.dumps(good)


@pytest.mark.slow
@pytest.mark.parametrize("parallel", [False, True], ids=["inline", "workers"])
def test_fuzz_10k_malformed_lines(settings, engine, corpus, logs, monkeypatch, parallel):
    if parallel:
        monkeypatch.setattr(ingest_reader, "PARALLEL_MIN_BYTES", 0)
    rng = random.Random(20261121)
    lines, good_ids, bad_line_nos = [], [], []
    for i in range(16000):
        if rng.random() < 0.65:
            lines.append(_malformed(rng, i))
            bad_line_nos.append(len(lines))
        else:
            lines.append(event_line(i))
            good_ids.append(f"r{i}")
    assert len(bad_line_nos) >= 10_000
    append(logs / "feedback.jsonl", lines)
    rep = ingest_once(engine, settings)
    assert (rep.lines, rep.events, rep.quarantined) == (len(lines), len(good_ids), len(bad_line_nos))
    assert stored_request_ids(engine) == good_ids
    with engine.connect() as conn:
        q = conn.execute(sa.text("SELECT line_no, reason FROM quarantine ORDER BY line_no")).all()
    assert [n for n, _ in q] == bad_line_nos
    assert all(reason for _, reason in q)


def test_quarantine_retry_after_loading_the_missing_chunk(settings, engine, corpus, logs):
    append(logs / "feedback.jsonl", [event_line(0, expected="new-chunk"), event_line(1), "garbage"])
    rep = ingest_once(engine, settings)
    assert (rep.events, rep.quarantined) == (1, 2)
    assert retry_quarantine(engine, settings) == {"resolved": 0, "still_bad": 2}
    write_corpus(engine, ["new-chunk"])
    assert retry_quarantine(engine, settings) == {"resolved": 1, "still_bad": 1}
    assert sorted(stored_request_ids(engine)) == ["r0", "r1"]
    s = collect_status(engine)
    assert s["events"] == 2 and s["quarantine"] == {"unresolved": 1, "resolved": 1}
    assert retry_quarantine(engine, settings) == {"resolved": 0, "still_bad": 1}


def test_two_ingesters_never_commit_the_same_lines(settings, engine, corpus, logs):
    settings.ingest.batch_lines, settings.ingest.pair_fold_lines = 50, 300
    append(logs / "feedback.jsonl", [event_line(i) for i in range(3000)])
    errors = []

    def run():
        try:
            for _ in range(3):
                ingest_once(engine, settings)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = stored_request_ids(engine)
    assert len(ids) == 3000 and len(set(ids)) == 3000
    with engine.connect() as conn:  # and every pair once, whichever ingester folded it
        assert conn.scalar(sa.text("SELECT sum(count) FROM training_pairs")) == 3000
