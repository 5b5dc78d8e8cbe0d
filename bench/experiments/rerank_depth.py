"""What does gate.rerank_depth cost, and does it change the gate's decision? The reranker gate at growing depths.

    python -m bench.experiments.rerank_depth --benchmark examples|perlfaq [--depths 10 20 30 50] [--unseen]
                                 [--reranker-base bench/.cache/reranker-standin]

ragloop ingests the benchmark's production log (all traffic questions, logged by the base embedder), splits
it as a first cycle does, and the daemon's own job trains the reranker from --reranker-base (a configured
base trains from the first cycle; fusion weight chosen on validation at the default depth). That candidate
is then gated with the real gate code at each depth: each held-out query's first-stage top-depth reordered
by the fused pipeline, candidate against what serves (the embedder alone). For each depth: the gate's wall
time, the cross-encoder pairs it scored, its decision (outcome, gain, p). With --unseen, also the fused
pipeline's unseen hit@1 / hit@10 / MRR@10 at each depth (cross scores computed once at the largest depth: a
pair's score does not depend on the list it is in, so a smaller depth is its exact truncation). The last
line is key=value pairs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import structlog

from bench.benchmarks import CACHE, DIRS, first_cycle_store, load
from daemon.gate import Evaluator, gate
from daemon.models import (Corpus, cache_dir, corpus_embeddings, cross_scores, fuse_rankings, load_embedder,
                           load_reranker, model_weight, packaged_minilm, pick_device, retrieve_scored, score)
from daemon.train import run_job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", choices=sorted(DIRS), default="examples")
    ap.add_argument("--depths", type=int, nargs="+", default=[10, 20, 30, 50])
    ap.add_argument("--unseen", action="store_true",
                    help="also score the fused pipeline on the unseen half at each depth (the largest depth x unseen "
                         "questions more cross-encoder pairs)")
    ap.add_argument("--reranker-base", type=Path, default=CACHE / "reranker-standin",
                    help="train.reranker.base (bench/experiments/reranker_standin.py builds the default)")
    args = ap.parse_args()
    if not (args.reranker_base / "config.json").exists():
        raise SystemExit(f"no reranker at {args.reranker_base}: run bench/experiments/reranker_standin.py first, or pass --reranker-base")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    bench = load(args.benchmark)
    unseen = bench.half("unseen")
    queries, relevant = [q["query"] for q in unseen], [set(q["expected_ids"]) for q in unseen]
    device = pick_device("auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings, engine, heldout = first_cycle_store(
            bench, work, {"reranker": {"base": str(args.reranker_base.resolve())}})
        corpus = Corpus(engine)
        base = load_embedder(packaged_minilm(), device)
        # the corpus vectors every stage reads (an index build fills this cache in the daemon): not timed below
        emb = corpus_embeddings(base, corpus, cache_dir(settings), "embedder-v0")
        t = time.monotonic()
        job = run_job(engine, settings, "reranker")
        weight = model_weight(job.path)
        print(f"benchmark {args.benchmark}: reranker v{job.version} from {args.reranker_base.name} trained in "
              f"{time.monotonic() - t:.0f}s, fusion weight {weight} (chosen on validation at depth "
              f"{settings.gate.rerank_depth}); {heldout['heldout_queries']} of {heldout['queries']} traffic queries "
              f"held out; {len(unseen)} unseen", flush=True)
        reranker = load_reranker(job.path, settings.train.device, settings.train.trust_remote_code)
        cands, sims = retrieve_scored(base, corpus, emb, queries, max(args.depths))
        alone = score(cands, relevant).mean()  # the embedder alone (metrics @10: the same at every depth >= 10)
        t = time.monotonic()
        cross = cross_scores(reranker, corpus, queries, cands) if args.unseen else None
        unseen_rate = sum(map(len, cands)) / (time.monotonic() - t) if args.unseen else 0.0
        for depth in sorted(args.depths):
            settings.gate.rerank_depth = depth
            ev = Evaluator(engine, settings)
            t = time.monotonic()
            dec = gate(engine, settings, "reranker", job.version, evaluator=ev)
            gate_s = time.monotonic() - t
            held = len(ev.sets["heldout"]) + len(ev.sets["guard"])
            top = [c[:depth] for c in cands]
            fused = score(fuse_rankings(top, [s[:depth] for s in sims], [x[:depth] for x in cross], weight),
                          relevant).mean() if cross else {m: float("nan") for m in alone}
            test = dec.figures.get("test", {})
            cand_h = dec.figures.get("candidate", {}).get("heldout", {})
            serv_h = dec.figures.get("serving", {}).get("heldout", {})
            rows.append({"depth": depth, "gate_s": gate_s, "pairs": held * depth, "outcome": dec.outcome,
                         "gain": dec.figures.get("gain"), "p": test.get("p_value"),
                         "held": {m: (serv_h.get(m, float("nan")), cand_h.get(m, float("nan")))
                                  for m in ("ndcg@10", "hit@1")}, "hit1": fused["hit@1"],
                         "mrr10": fused["mrr@10"], "hit10": fused["hit@10"]})
            r = rows[-1]
            print(f"depth {depth}: gate {gate_s:.1f}s over {r['pairs']} pairs ({r['pairs'] / gate_s:.0f}/s) -> "
                  f"{dec.outcome} (gain {r['gain']}, p {r['p']})", flush=True)
        engine.dispose()
    print(f"\n{args.benchmark}, {device}: the reranker gate at each depth (held-out), and the fused pipeline on "
          f"{len(unseen)} unseen questions (embedder alone: hit@1 {alone['hit@1']:.3f}, MRR@10 "
          f"{alone['mrr@10']:.3f}" + (f"; unseen cross-encoder scoring {unseen_rate:.0f} pairs/s)" if args.unseen
                                           else "; unseen columns: run with --unseen)"))
    print(f"{'depth':>5s} {'gate s':>7s} {'pairs':>6s} {'decision':>9s} {'gain':>7s} {'p':>7s} "
          f"{'held-out nDCG@10':>16s} {'held-out hit@1':>14s} {'unseen hit@1':>12s} {'hit@10':>6s} {'mrr@10':>6s}")
    for r in rows:
        h = {m: f"{a:.3f} -> {b:.3f}" for m, (a, b) in r["held"].items()}
        print(f"{r['depth']:5d} {r['gate_s']:7.1f} {r['pairs']:6d} {r['outcome']:>9s} {r['gain']!s:>7s} "
              f"{r['p']!s:>7s} {h['ndcg@10']:>16s} {h['hit@1']:>14s} {r['hit1']:12.3f} {r['hit10']:6.3f} "
              f"{r['mrr10']:6.3f}")
    outcomes = {r["outcome"] for r in rows}
    joined = {k: ",".join(f"{r[k]:.1f}" if k == "gate_s" else str(r[k]) for r in rows)
              for k in ("depth", "gate_s", "outcome")}
    print(f"benchmark={args.benchmark} weight={weight} depths={joined['depth']} gate_s={joined['gate_s']} "
          f"outcomes={joined['outcome']} "
          f"same_decision={int(len(outcomes) == 1)} device={device}")


if __name__ == "__main__":
    main()
