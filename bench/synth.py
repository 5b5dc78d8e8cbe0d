"""Synthesis throughput: chunks/s at concurrency 1 and 8 against a local Messages API server.

    python -m bench.synth [--chunks 200] [--latency-ms 200]

The real anthropic SDK talks to a local HTTP server (tests/fake_anthropic.py) that answers every
request with fixed questions after --latency-ms, standing in for the API's response time. With the
server's time known, the run shows what ragloop's own client side (SDK, parsing, storing pairs) costs
and that concurrency, not the client, decides throughput. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent

from daemon.config import settings_from_dict  # noqa: E402
from daemon.data import upsert_chunks  # noqa: E402
from daemon.ingest import run_synthesis  # noqa: E402
from daemon.store import open_store  # noqa: E402
from tests.fake_anthropic import FakeAnthropic


def run(concurrency: int, chunks: list[dict], url: str, work: Path) -> tuple[float, int]:
    settings = settings_from_dict({"state_dir": str(work / f"c{concurrency}"),
                                   "synth": {"base_url": url, "concurrency": concurrency, "batch_chunks": len(chunks),
                                             "run_token_budget": 0, "daily_token_budget": 0}}, "bench", base_dir=work)
    engine = open_store(settings.store_url)
    upsert_chunks(engine, chunks, mark_missing_removed=False)
    t = time.perf_counter()
    rep = run_synthesis(engine, settings)
    dt = time.perf_counter() - t
    engine.dispose()
    assert rep.done == len(chunks), rep
    return len(chunks) / dt, rep.questions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ.setdefault("ANTHROPIC_API_KEY", "sk-ant-bench-not-a-real-key")
    rows = [json.loads(line) for line in (ROOT / "bench" / "data" / "examples" / "corpus.jsonl").read_text().splitlines()][: args.chunks]
    fake = FakeAnthropic(delay_s=args.latency_ms / 1000)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in (1, 8):
            rate, questions = run(c, rows, fake.url, Path(tmp))
            results[c] = rate
            ideal = c / (args.latency_ms / 1000)
            print(f"concurrency {c}: {rate:6.2f} chunks/s ({questions} questions stored); server-bound ideal "
                  f"{ideal:.2f}/s, so {rate / ideal:.0%} of it")
    fake.close()
    overhead_ms = 1000 / results[1] - args.latency_ms
    print(f"client-side time per chunk at concurrency 1: {overhead_ms:.1f} ms on top of {args.latency_ms:.0f} ms of API time")
    print(f"synth_c1_chunks_per_s={results[1]:.2f} synth_c8_chunks_per_s={results[8]:.2f} "
          f"speedup={results[8] / results[1]:.2f} client_overhead_ms={overhead_ms:.1f} latency_ms={args.latency_ms:.0f}")


if __name__ == "__main__":
    main()
