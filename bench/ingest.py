"""Ingest throughput: a full `ragloop` ingest into SQLite versus a bare `json.loads` of every line.

    python -m bench.ingest --events 500000

Generates a realistic v1 feedback log (Zipf-distributed repeat queries, 10 retrieved ids with
scores, ~25% misses), then times in one run (a) reading the file and `json.loads` of every line and
(b) `ingest_once` into a fresh SQLite store with a corpus of the referenced chunk ids loaded (with the
default settings, a log this size is read by one worker process per core, see daemon/ingest/workers.py).
The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from daemon.config import settings_from_dict
from daemon.data import upsert_chunks
from daemon.ingest import ingest_once
from daemon.store import open_store

WORDS = ("install package python debian error module import version kernel network file path class "
         "function list dict string thread process memory upgrade repository mirror security key "
         "boot disk user permission locale unicode encoding exception loop").split()


def make_log(path: Path, n_events: int, n_chunks: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(5, 11))).capitalize() + "?" for _ in range(max(n_events // 10, 1))]
    answers = [rng.randrange(n_chunks) for _ in queries]
    weights = [1 / (i + 1) ** 0.8 for i in range(len(queries))]  # Zipf-like: popular questions repeat
    t0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
    picks = rng.choices(range(len(queries)), weights=weights, k=n_events)
    with path.open("w") as fh:
        for i, qi in enumerate(picks):
            expected = f"c{answers[qi]}"
            retrieved = [f"c{rng.randrange(n_chunks)}" for _ in range(10)]
            if rng.random() < 0.75:
                retrieved[rng.randrange(10)] = expected
            ev = {
                "ts": (t0 + timedelta(seconds=i * 0.5)).isoformat().replace("+00:00", "Z"),
                "query": queries[qi],
                "expected_ids": [expected],
                "retrieved_ids": retrieved,
                "retrieved_scores": sorted((round(rng.random(), 4) for _ in range(10)), reverse=True),
                "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "source": "bench",
            }
            fh.write(json.dumps(ev) + "\n")


def bare_parse(path: Path) -> float:
    t = time.perf_counter()
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            json.loads(line)
            n += 1
    return n / (time.perf_counter() - t)


def full_ingest(path: Path, workdir: Path, n_chunks: int, ingest: dict) -> tuple[float, dict]:
    settings = settings_from_dict({"state_dir": str(workdir / "state"), "ingest": {"paths": [str(path)], **ingest}},
                                  "bench", base_dir=workdir)
    engine = open_store(settings.store_url)
    upsert_chunks(engine, [{"id": f"c{i}", "text": f"chunk {i}", "doc": None, "metadata": None}
                           for i in range(n_chunks)], mark_missing_removed=False)
    t = time.perf_counter()
    rep = ingest_once(engine, settings)
    dt = time.perf_counter() - t
    engine.dispose()
    return rep.lines / dt, rep.as_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--chunks", type=int, default=5_000)
    ap.add_argument("--batch-lines", type=int, default=None, help="override ingest.batch_lines")
    ap.add_argument("--workers", type=int, default=None, help="override ingest.workers (1: no parallel readers)")
    ap.add_argument("--pair-fold-lines", type=int, default=None, help="override ingest.pair_fold_lines")
    args = ap.parse_args()
    import logging

    import structlog  # noqa: E401 - keep per-file log events out of the timing output

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log_path = work / "feedback.jsonl"
        t = time.perf_counter()
        # In a child process, so this process's peak RSS measures ingestion, not log generation.
        gen = multiprocessing.get_context("fork").Process(target=make_log, args=(log_path, args.events, args.chunks))
        gen.start()
        gen.join()
        size_mb = log_path.stat().st_size / 1e6
        print(f"generated {args.events} events ({size_mb:.0f} MB) in {time.perf_counter() - t:.1f}s")
        bare = bare_parse(log_path)
        print(f"bare json.loads: {bare:,.0f} lines/s")
        overrides = {k: v for k, v in (("batch_lines", args.batch_lines), ("workers", args.workers),
                                       ("pair_fold_lines", args.pair_fold_lines)) if v is not None}
        ingest, rep = full_ingest(log_path, work, args.chunks, overrides)
        print(f"ragloop ingest:  {ingest:,.0f} lines/s  ({rep})")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # The log generator is a child too, so this is an upper bound for the largest ingest worker.
        worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS {rss_mb:.0f} MB, largest child {worker_mb:.0f} MB, for a {size_mb:.0f} MB log "
              "(bounded by the batch, not the file)")
        ratio = ingest / bare
        target = "met" if ratio >= 0.30 and ingest >= 50_000 else "NOT met"
        print(f"ratio {ratio:.2f} (target >= 0.30 and >= 50,000 lines/s: {target})")
        print(f"ingest_lines_per_s={ingest:.0f} bare_lines_per_s={bare:.0f} ratio={ratio:.2f} "
              f"events={args.events} peak_rss_mb={rss_mb:.0f} worker_rss_mb={worker_mb:.0f}")


if __name__ == "__main__":
    main()
