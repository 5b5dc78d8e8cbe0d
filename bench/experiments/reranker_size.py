"""Where does a cold-start reranker start to pay? Unseen quality of a cold reranker trained at growing sizes.

    python -m bench.experiments.reranker_size --benchmark examples|perlfaq [--sizes 60 120 0] [--depth 20]

ragloop ingests the benchmark's production log (all traffic questions), splits it as a first cycle does,
then trains the cold-start reranker (the packaged MiniLM with a fresh one-label head, the daemon's own
training job and defaults) on the first N train pairs (`train.max_pairs`; 0 = all of them), once per size.
Each reranker reorders the base embedder's top --depth for every **unseen** question (never trained on),
scored beside the embedder alone in the same run. The size at which the reranked pipeline beats the
embedder alone is where `train.reranker.min_pairs` belongs. The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import structlog

from bench.benchmarks import DIRS, first_cycle_store, load
from daemon.models import (Corpus, corpus_embeddings, load_embedder, load_reranker, packaged_minilm, pick_device,
                           rerank, retrieve, score)
from daemon.service import train_pair_count
from daemon.train import run_job

METRICS = ("hit@1", "hit@3", "hit@10", "mrr@10")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", choices=sorted(DIRS), default="examples")
    ap.add_argument("--sizes", type=int, nargs="+", default=[60, 120, 0], help="train pairs per reranker; 0 = all")
    ap.add_argument("--depth", type=int, default=20, help="embedder candidates each reranker reorders")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    bench = load(args.benchmark)
    unseen = bench.half("unseen")
    queries, relevant = [q["query"] for q in unseen], [set(q["expected_ids"]) for q in unseen]
    device = pick_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings, engine, heldout = first_cycle_store(bench, work)
        total = train_pair_count(engine)
        corpus = Corpus(engine)
        base = load_embedder(packaged_minilm(), device)
        first = retrieve(base, corpus, corpus_embeddings(base, corpus, None, "base"), queries, args.depth)
        rows = {"embedder alone": score(first, relevant).mean()}
        print(f"benchmark {args.benchmark}: {total} train pairs ({heldout['heldout_queries']} of "
              f"{heldout['queries']} traffic queries held out), {len(unseen)} unseen questions, depth {args.depth}",
              flush=True)
        for size in args.sizes:
            n = min(size or total, total)
            settings.train.max_pairs = n
            t = time.monotonic()
            job = run_job(engine, settings, "reranker")
            rows[f"+ cold reranker, {n} train pairs"] = score(
                rerank(load_reranker(job.path, settings.train.device, settings.train.trust_remote_code), corpus, queries, first), relevant).mean()
            print(f"{n} pairs: {job.training['steps']} steps, {time.monotonic() - t:.0f}s (train + score)", flush=True)
        engine.dispose()
    print(f"\n{'unseen questions (' + str(len(unseen)) + ')':40s} " + " ".join(f"{m:>7s}" for m in METRICS))
    for name, m in rows.items():
        print(f"{name:40s} " + " ".join(f"{m[k]:7.3f}" for k in METRICS))
    emb = rows["embedder alone"]
    best = max((r for r in rows if r != "embedder alone"), key=lambda r: rows[r]["hit@1"])
    print(f"benchmark={args.benchmark} train_pairs={total} embedder_hit1={emb['hit@1']:.3f} "
          f"embedder_mrr10={emb['mrr@10']:.3f} best_reranker_hit1={rows[best]['hit@1']:.3f} "
          f"best_reranker_mrr10={rows[best]['mrr@10']:.3f} best_size={best.split(', ')[1].split()[0]} "
          f"beats_embedder={int(rows[best]['hit@1'] > emb['hit@1'])} device={device}")


if __name__ == "__main__":
    main()
