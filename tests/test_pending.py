"""Pairs merged over many batches (daemon/ingest/pending.py): the same pairs as batch by batch, exactly once
through a reader that dies, is stopped, or whose pending batches another process folds first."""

import os
import random
import threading
from contextlib import contextmanager
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

import daemon.ingest.reader as ingest_reader
from daemon.data import QueryKeys, known_chunk_ids
from daemon.ingest import Committer, ReadSpec, batches, claim_cursor, fingerprint, ingest_once, limits_from, pending

from helpers import event_line, write_corpus

IDS = [f"c{i}" for i in range(100)]
PAIR_FIELDS = ("query", "query_norm", "chunk_id", "hard_negative_ids", "count", "miss_count", "hit_count",
               "last_rank", "split", "origin", "first_seen", "last_seen")


def mixed_lines(n: int, seed: int = 3) -> list[str]:
    """Repeated questions (so pairs merge across batches), hits and misses, several expected ids."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = rng.randrange(40)
        exp = f"c{q % 50}"
        line = event_line(i, query=f"Question {q} about things?", expected=exp, hit=rng.random() < 0.6)
        if i % 17 == 0:  # two expected ids: one event, two pairs
            line = line.replace(f'"expected_ids": ["{exp}"]', f'"expected_ids": ["{exp}", "c{(q + 1) % 50}"]')
        out.append(line)
    return out


def pairs(engine) -> list[tuple]:
    """Every pair's fields, comparable across stores (times as naive UTC)."""
    from daemon.store import TrainingPair

    t = TrainingPair.__table__
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*(t.c[f] for f in PAIR_FIELDS)).order_by(t.c.query_norm, t.c.chunk_id))
        return [tuple(_naive(v) for v in r) for r in rows]


def _naive(v):
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(timezone.utc).replace(tzinfo=None)
    return v


def pending_count(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM pending_pairs"))


@pytest.fixture
def log(settings, engine, tmp_path):
    write_corpus(engine, IDS)
    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "feedback.jsonl"
    path.write_text("".join(line + "\n" for line in mixed_lines(1500)))
    return path


def reference_pairs(tmp_path, log) -> list[tuple]:
    """The pairs of the same log read as one batch, one fold: what any windowing must give."""
    from daemon.store import open_store

    from helpers import make_settings

    url = f"sqlite:///{tmp_path / 'reference.db'}"
    settings = make_settings(tmp_path, url, ingest={"paths": [str(log)], "batch_lines": 100_000, "workers": 1})
    engine = open_store(url)
    try:
        write_corpus(engine, IDS)
        ingest_once(engine, settings)
        return pairs(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("workers", [1, 3])
def test_small_windows_give_the_pairs_of_one_big_batch(settings, engine, log, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(ingest_reader, "PARALLEL_MIN_BYTES", 0)
    settings.ingest.batch_lines, settings.ingest.pair_fold_lines, settings.ingest.workers = 37, 120, workers
    assert ingest_once(engine, settings).events == 1500
    assert pending_count(engine) == 0
    assert pairs(engine) == reference_pairs(tmp_path, log)


@contextmanager
def reader(settings, engine, path, keys: QueryKeys):
    """A reader of ``path`` driven by hand: yields (its batches, commit) as ingest_once would use them."""
    with engine.connect() as conn:
        limits = limits_from(settings, known_chunk_ids(conn))
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        cursor = claim_cursor(engine, fingerprint(fh), str(path), st, False)
        fh.seek(0)
        yield batches(fh, 0, 0, ReadSpec.of(settings, cursor, limits, keys)), Committer(engine, cursor, st.st_size)


def _commit_without_folding(settings, engine, path, batches: int) -> None:
    """What a reader killed before its fold leaves: batches committed, their pairs only pending."""
    with reader(settings, engine, path, QueryKeys(settings.gate.ingest_fraction())) as (prepared, commit):
        for i, p in enumerate(prepared):
            if i == batches:
                break  # the reader dies here: its window (the pairs of the committed batches) is lost
            assert p.fold_rows is None
            assert commit(p) is not None


def test_pending_batches_of_a_dead_reader_are_recovered_once(settings, engine, log, tmp_path):
    settings.ingest.batch_lines, settings.ingest.pair_fold_lines = 100, 10_000
    _commit_without_folding(settings, engine, log, batches=6)
    assert pending_count(engine) == 6 and pairs(engine) == []
    from daemon.observe import collect_status, render_status

    status = collect_status(engine)
    assert status["pairs_pending"] == {"batches": 6, "events": 600}
    assert "the pairs of 600 events of 6 batches" in render_status(status)
    rep = ingest_once(engine, settings)  # recovers the 6 batches from their events, then reads on
    assert rep.lines == 900 and pending_count(engine) == 0
    assert pairs(engine) == reference_pairs(tmp_path, log)
    assert pending.recover(engine, QueryKeys(settings.gate.ingest_fraction())) == 0


def test_a_fold_after_another_process_recovered_its_batches_counts_nothing_twice(settings, engine, log, tmp_path):
    """Reader A commits batches; a second ingester's recovery folds them from their pending rows; A's own
    fold then conflicts, rolls back, and its batch is left pending too, so every pair counts once."""
    settings.ingest.batch_lines, settings.ingest.pair_fold_lines = 100, 450
    keys = QueryKeys(settings.gate.ingest_fraction())
    conflicts = 0
    with reader(settings, engine, log, keys) as (prepared, commit):
        for p in prepared:
            if p.fold_rows is not None and p.fold_ids:
                conflicts += 1
                # the other process, first: this window's batches, and the previous conflict's batch
                assert pending.recover(engine, keys) == len(p.fold_ids) + (conflicts > 1)
            assert commit(p) is not None
    assert conflicts >= 2
    pending.recover(engine, keys)  # what every pass ends with
    assert pending_count(engine) == 0
    assert pairs(engine) == reference_pairs(tmp_path, log)


def test_a_stopped_pass_leaves_no_pair_pending(settings, engine, log, tmp_path, monkeypatch):
    settings.ingest.batch_lines, settings.ingest.pair_fold_lines = 100, 10_000
    stop = threading.Event()
    stop.set()  # after the first batch
    assert ingest_once(engine, settings, stop=stop).lines == 0  # set before the pass: nothing read
    stop.clear()
    original = Committer.__call__

    def commit_then_stop(*a, **k):
        out = original(*a, **k)
        stop.set()
        return out

    monkeypatch.setattr(Committer, "__call__", commit_then_stop)  # the real commit; then a shutdown arrives
    first = ingest_once(engine, settings, stop=stop)
    monkeypatch.undo()
    assert first.lines == 100 and pending_count(engine) == 0  # the pass's end folded the stopped window
    assert ingest_once(engine, settings).lines == 1400
    assert pairs(engine) == reference_pairs(tmp_path, log)
