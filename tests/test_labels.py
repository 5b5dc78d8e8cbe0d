"""Labels that arrive later: a label line completes the unlabeled retrieval with its request id, once."""

import json
import time

import sqlalchemy as sa

from daemon.ingest import ingest_once, retry_quarantine
from daemon.observe import collect_status, render_metrics
from daemon.store import open_store

from helpers import make_settings, write_corpus


def _retrieval(rid: str, retrieved: list[str], query: str | None = None, ts: str = "2026-11-21T10:00:00Z") -> str:
    return json.dumps({"ts": ts, "query": query or f"question {rid}", "retrieved_ids": retrieved, "request_id": rid})


def _label(rid: str, expected: list[str], ts: str = "2026-11-21T11:30:00Z") -> str:
    return json.dumps({"ts": ts, "request_id": rid, "expected_ids": expected})


def _append(path, *lines: str) -> None:
    with open(path, "a") as fh:
        fh.write("".join(line + "\n" for line in lines))


def _settings(tmp_path, db_url, **ingest):
    return make_settings(tmp_path, db_url, ingest={"paths": [str(tmp_path / "logs" / "*.jsonl")], **ingest})


def _events(engine) -> dict[str, tuple[str, int | None]]:
    with engine.connect() as conn:
        return {r: (k, rank) for r, k, rank in conn.execute(sa.text("SELECT request_id, kind, rank FROM feedback_events"))}


def _counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {k: int(n) for k, n in conn.execute(sa.text("SELECT kind, sum(count) FROM event_counts GROUP BY kind"))}


def _pairs(engine) -> dict[tuple[str, str], tuple[int, int, int | None]]:
    with engine.connect() as conn:
        return {(q, c): (n, m, r) for q, c, n, m, r in conn.execute(sa.text(
            "SELECT query, chunk_id, count, miss_count, last_rank FROM training_pairs"))}


def test_a_label_from_another_file_completes_its_retrieval_in_either_order(tmp_path, db_url):
    (tmp_path / "logs").mkdir()
    service, labels = tmp_path / "logs" / "service.jsonl", tmp_path / "logs" / "labels.jsonl"
    settings = _settings(tmp_path, db_url)
    engine = open_store(db_url)
    write_corpus(engine, [f"c{i}" for i in range(20)])
    # r1's label is read before its retrieval; r2's after; r3 is never labelled; r4 is labelled in its line.
    _append(labels, _label("r1", ["c3"]))
    _append(service, _retrieval("r1", ["c1", "c2", "c3"]), _retrieval("r2", ["c4", "c5"]), _retrieval("r3", ["c6"]),
            json.dumps({"ts": "2026-11-21T10:00:00Z", "query": "question r4", "expected_ids": ["c9"],
                        "retrieved_ids": ["c9"], "request_id": "r4"}))
    rep = ingest_once(engine, settings)
    assert (rep.events, rep.unlabeled, rep.labels, rep.hits, rep.misses) == (4, 3, 1, 1, 0)
    assert _events(engine) == {"r1": ("hit", 3), "r2": ("unlabeled", None), "r3": ("unlabeled", None),
                               "r4": ("hit", 1)}
    _append(labels, _label("r2", ["c7"]))  # a miss: c7 was not retrieved
    ingest_once(engine, settings)
    assert _events(engine)["r2"] == ("miss", None)
    assert _counts(engine) == {"hit": 2, "miss": 1, "unlabeled": 1}
    assert _pairs(engine) == {("question r1", "c3"): (1, 0, 3), ("question r2", "c7"): (1, 1, None),
                              ("question r4", "c9"): (1, 0, 1)}
    ingest_once(engine, settings)  # nothing new: nothing joined twice
    assert _counts(engine) == {"hit": 2, "miss": 1, "unlabeled": 1}
    assert sum(n for n, _, _ in _pairs(engine).values()) == 3
    with engine.connect() as conn:
        joined = dict(conn.execute(sa.text(
            "SELECT l.request_id, e.request_id FROM feedback_labels l JOIN feedback_events e ON e.id = l.event_id")).all())
        # the event's raw line stays as production wrote it; the label holds the ids
        raw = conn.scalar(sa.text("SELECT raw FROM feedback_events WHERE request_id = 'r1'"))
    assert joined == {"r1": "r1", "r2": "r2"}
    assert "expected_ids" not in (json.loads(raw) if isinstance(raw, str) else raw)
    status = collect_status(engine, settings)
    assert (status["events"], status["misses"], status["unlabeled"]) == (3, 1, 1)
    assert status["labels"] == {"waiting": 0, "joined": 2}
    metrics = render_metrics(engine)
    for line in ('ragloop_events_total{kind="hit"} 2.0', 'ragloop_events_total{kind="miss"} 1.0',
                 "ragloop_unlabeled_events 1.0", "ragloop_labels_waiting 0.0", "ragloop_labels_joined_total 2.0"):
        assert line in metrics.splitlines()
    engine.dispose()


def test_a_label_without_its_retrieval_is_quarantined_after_the_wait_and_retried(tmp_path, db_url):
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "feedback.jsonl"
    engine = open_store(db_url)
    write_corpus(engine, [f"c{i}" for i in range(20)])
    _append(log, _label("r9", ["c2"]), _retrieval("r1", ["c1"]), _label("r1", ["c1"]), _label("r1", ["c5"]))
    wait = _settings(tmp_path, db_url, label_wait_s=0.5)
    ingest_once(engine, wait)
    assert _events(engine) == {"r1": ("hit", 1)}  # the first label of r1 wins
    assert collect_status(engine, wait)["labels"] == {"waiting": 2, "joined": 1}
    time.sleep(0.6)
    ingest_once(engine, wait)
    with engine.connect() as conn:
        reasons = dict(conn.execute(sa.text("SELECT line_no, reason FROM quarantine")).all())
    assert sorted(reasons) == [1, 4]
    assert "label for request_id 'r9': no unlabeled retrieval with this request_id was read within " \
           "ingest.label_wait_s=0.5 s" in reasons[1]
    assert collect_status(engine, wait)["labels"] == {"waiting": 0, "joined": 1}
    # r9's retrieval turns up late; retrying the quarantined label joins it
    _append(log, _retrieval("r9", ["c2", "c3"]))
    ingest_once(engine, wait)
    assert _events(engine)["r9"] == ("unlabeled", None)
    assert retry_quarantine(engine, wait) == {"resolved": 2, "still_bad": 0}
    assert _events(engine)["r9"] == ("hit", 1)
    assert _counts(engine) == {"hit": 2, "unlabeled": 0}
    engine.dispose()


def test_an_unknown_chunk_in_a_label_is_quarantined_until_the_corpus_has_it(tmp_path, db_url):
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "feedback.jsonl"
    engine = open_store(db_url)
    write_corpus(engine, ["c1"])
    settings = _settings(tmp_path, db_url)
    _append(log, _retrieval("r1", ["c1"]), _label("r1", ["new-chunk"]))
    rep = ingest_once(engine, settings)
    assert (rep.unlabeled, rep.labels, rep.quarantined) == (1, 0, 1)
    write_corpus(engine, ["new-chunk"])
    assert retry_quarantine(engine, settings)["resolved"] == 1
    assert _events(engine) == {"r1": ("miss", None)}
    engine.dispose()
