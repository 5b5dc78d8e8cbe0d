"""Re-index throughput: `ragloop index build` end to end versus a bare `model.encode` of the same texts.

    python -m bench.reindex --chunks 2000

Uses the real examples corpus (repeated with suffixed ids when --chunks asks for more), the packaged
MiniLM and the embedded Qdrant. In one run it times (a) `model.encode` of every chunk text with the
index batch size, and (b) `build_index` into a fresh store: streaming from SQLite, embedding, upserting,
verification, alias swap and manifest. The model is loaded once and shared, so neither figure includes
loading it. Then it measures top-10 search latency through the alias at that size. The last line is
machine-readable.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import structlog

from daemon.config import settings_from_dict
from daemon.data import upsert_chunks
from daemon.models import load_embedder, packaged_minilm, pick_device
from daemon.serve import build_index, open_vectors
from daemon.store import open_store

EXAMPLES = Path(__file__).resolve().parent / "data" / "examples"


def corpus(n: int) -> list[dict]:
    base = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    rows, copy = [], 0
    while len(rows) < n:
        rows += [{**c, "id": f"{c['id']}#{copy}" if copy else c["id"]} for c in base]
        copy += 1
    return rows[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    rows = corpus(args.chunks)
    texts = [r["text"] for r in rows]
    device = pick_device("auto")
    model = load_embedder(packaged_minilm(), device)
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up, outside both timings
    print(f"{len(rows)} chunks, mean {statistics.mean(len(t.split()) for t in texts):.0f} words, device {device}")

    t = time.perf_counter()
    model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    bare = len(texts) / (time.perf_counter() - t)
    print(f"bare model.encode:      {bare:6.1f} chunks/s")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = settings_from_dict({"state_dir": str(work / "state"), "qdrant": {"batch_size": args.batch_size}},
                                      "bench", base_dir=work)
        engine = open_store(settings.store_url)
        upsert_chunks(engine, rows, mark_missing_removed=False)
        t = time.perf_counter()
        report = build_index(engine, settings, model=model)
        full = len(rows) / (time.perf_counter() - t)
        print(f"ragloop index build:    {full:6.1f} chunks/s ({report.collection}, verified, alias swapped)")

        questions = [json.loads(line)["query"] for line in (EXAMPLES / "questions.jsonl").read_text().splitlines()]
        qvecs = model.encode(questions[: args.queries], normalize_embeddings=True, convert_to_numpy=True)
        with open_vectors(settings) as vs:
            t = time.perf_counter()
            vs.search(settings.qdrant.alias, qvecs[0], 10)
            opened = time.perf_counter() - t
            lat = []
            for v in qvecs:
                t = time.perf_counter()
                vs.search(settings.qdrant.alias, v, 10)
                lat.append((time.perf_counter() - t) * 1000)
        engine.dispose()
    p50, p95 = statistics.median(lat), statistics.quantiles(lat, n=20)[18]
    ratio = full / bare
    print(f"ratio {ratio:.2f} (target >= 0.90: {'met' if ratio >= 0.90 else 'NOT met'})")
    print(f"top-10 search through the alias (embedded Qdrant, {len(rows)} points): p50 {p50:.1f} ms, p95 {p95:.1f} ms "
          f"over {len(lat)} queries (first query after open {opened * 1000:.0f} ms)")
    print(f"index_chunks_per_s={full:.1f} bare_chunks_per_s={bare:.1f} ratio={ratio:.2f} "
          f"search_p50_ms={p50:.1f} search_p95_ms={p95:.1f} chunks={len(rows)} device={device}")


if __name__ == "__main__":
    main()
