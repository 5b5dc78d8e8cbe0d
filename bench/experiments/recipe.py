"""Which embedder recipe? One fine-tune per recipe on a benchmark's first-cycle train split, side by side.

    python -m bench.experiments.recipe --benchmark examples --recipe default \
        --recipe neg1 train.mining.num_negatives=1 train.mining.random_negatives=0 [--alphas 0.5 0.75]

The benchmark's whole traffic half is logged by the base embedder (as production would), ingested, and
split by the gate's own rule (`rebalance_heldout`), exactly as a first cycle sees it. Each recipe (a name
and dotted settings overrides) then runs the daemon's training child (`daemon.train.child.fit`, in-process) from
the base embedder on that train split, and the result is scored on the gate's held-out queries and on the
unseen half, which neither training nor the gate ever sees. The base embedder and the one-shot script
(trained on every traffic question) are scored in the same run, and each recipe is compared with both
per unseen question: the paired difference with its 95% bootstrap interval, the questions each side won,
and the two-sided sign-flip p (daemon.gate.significance.paired_difference). `--alphas` also scores each recipe's
weight interpolation with the base, θ = α·θ_new + (1−α)·θ_base, at fixed α: the curve that
`train.embedder.interpolation` chooses a point of on validation queries. A recipe with
train.embedder.mode=adapter trains the query adapter (daemon/train/adapter.py) on the base's corpus vectors and
is scored on those same vectors, as it would serve. The base's corpus vectors are kept in bench/.cache.
The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import structlog

from bench.benchmarks import CACHE, DIRS
from bench.loop_quality import log_wave, print_paired, script_unseen
from daemon.config import settings_from_dict
from daemon.data import load_corpus
from daemon.gate import eval_sets, rebalance_heldout
from daemon.ingest import ingest_once
from daemon.models import (Corpus, Scores, corpus_embeddings, load_embedder, packaged_minilm, pick_device, retrieve,
                           score)
from daemon.store import open_store
from daemon.train import TrainJob, fit, interpolate


def parse_recipes(raw: list[list[str]]) -> dict[str, dict]:
    """[[name, key=value, ...], ...] -> {name: nested overrides of the settings' `train` table}."""
    out: dict[str, dict] = {}
    for name, *pairs in raw:
        tree: dict = {}
        for p in pairs:
            key, _, value = p.partition("=")
            *path, leaf = key.removeprefix("train.").split(".")
            node = tree
            for k in path:
                node = node.setdefault(k, {})
            node[leaf] = json.loads(value) if value[:1] in "[{0123456789-tf" else value
        out[name] = tree
    return out


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def scored(model, corpus: Corpus, sets: dict[str, tuple[list[str], list[set[str]]]], cache: Path | None = None,
           key: str = "recipe") -> dict[str, Scores]:
    emb = corpus_embeddings(model, corpus, cache, key)
    return {name: score(retrieve(model, corpus, emb, qs, 10), rel) for name, (qs, rel) in sets.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", choices=sorted(DIRS), default="examples")
    ap.add_argument("--recipe", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]",
                    help="a recipe: its name, then dotted overrides of [train], e.g. train.embedder.epochs=2")
    ap.add_argument("--alphas", nargs="*", type=float, default=[], help="also score fixed interpolations with the base")
    ap.add_argument("--no-script", action="store_true", help="skip the one-shot script peer")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    recipes = parse_recipes(args.recipe)
    data = DIRS[args.benchmark]
    questions = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines()]
    traffic = [q for q in questions if q["half"] == "traffic"]
    unseen = [q for q in questions if q["half"] == "unseen"]
    device = pick_device("auto")
    results: list[tuple[str, dict, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_settings = {"state_dir": str(work / "state"), "log": {"level": "warning"},
                         "ingest": {"paths": [str(work / "feedback.jsonl")]}}
        settings = settings_from_dict(base_settings, "bench", base_dir=work)
        engine = open_store(settings.store_url)
        load_corpus(engine, data / "corpus.jsonl")
        corpus = Corpus(engine)
        base = load_embedder(packaged_minilm(), device)
        wrong: dict[str, str] = {}
        cache, kept = settings.state_dir / "cache" / "embeddings", CACHE / "embeddings" / args.benchmark
        if (kept / "embedder-v0.npz").exists():  # the base model's vectors, by text hash: valid across runs
            cache.mkdir(parents=True, exist_ok=True)
            shutil.copy(kept / "embedder-v0.npz", cache / "embedder-v0.npz")
        misses = log_wave(base, "embedder-v0", corpus, cache, traffic, 0, work / "feedback.jsonl", wrong)
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copy(cache / "embedder-v0.npz", kept / "embedder-v0.npz")
        ingest_once(engine, settings)
        held = rebalance_heldout(engine, settings)
        h = eval_sets(engine)["heldout"]
        sets = {"heldout": (h.queries, h.relevant),
                "unseen": ([q["query"] for q in unseen], [set(q["expected_ids"]) for q in unseen])}
        print(f"benchmark {args.benchmark}: {len(traffic)} traffic questions ({misses} misses), held out "
              f"{held['heldout_queries']} of {held['queries']}; {len(unseen)} unseen; {len(corpus.ids)} chunks; {device}")
        results.append(("base embedder", scored(base, corpus, sets, cache, "embedder-v0"), 0.0))
        if not args.no_script:
            t = time.monotonic()
            sc = script_unseen(corpus, traffic, wrong, unseen, work / "script", device)
            results.append((f"one-shot script ({len(traffic)} traffic questions)", {"unseen": sc},
                            time.monotonic() - t))
        for name, over in recipes.items():
            s = settings_from_dict(merge(base_settings, {"train": over}), "bench", base_dir=work)
            out = work / "jobs" / name
            out.mkdir(parents=True)
            mode = s.train.embedder.mode
            job = TrainJob(kind="embedder", settings=s, start=packaged_minilm(), start_label="embedder v0", out=out,
                           mining_model=packaged_minilm(), mining_key="embedder-v0", mode=mode)
            t = time.monotonic()
            training = fit(job)
            took = time.monotonic() - t
            model = load_embedder(str(out / "model"), device)
            chosen = training.get("interpolation", {})
            if chosen:
                print(f"{name}: validation {chosen['validation_queries']} queries; early stopping "
                      f"{training.get('early_stopping')}; interpolation {chosen['by_alpha']}")
            # an adapter serves on the base's document vectors; a full fine-tune encodes the corpus anew
            results.append((f"{name} (steps {training['steps']}, alpha {chosen.get('alpha', 1.0)})",
                            scored(model, corpus, sets, cache if mode == "adapter" else None,
                                   "embedder-v0" if mode == "adapter" else name), took))
            for a in args.alphas:
                mixed = interpolate(load_embedder(str(out / "model"), device), base, a)
                results.append((f"  {name} at alpha {a}", scored(mixed, corpus, sets), 0.0))
            print_rows(results)
        engine.dispose()
    print_rows(results)
    print_pairs(results)
    last = {r[0].split(" (")[0].strip().replace(" ", "_"): {s: v.mean() for s, v in r[1].items()} for r in results}
    print(" ".join(f"{k}_{s}_{m.replace('@', '')}={v[s][m]:.3f}" for k, v in last.items() for s in v
                   for m in ("hit@1", "hit@10", "mrr@10")) + f" benchmark={args.benchmark} device={device}")


def print_pairs(results) -> None:
    """Each recipe against the base and the script, paired on the same unseen questions."""
    peers = [(name, by_set["unseen"]) for name, by_set, _ in results
             if name.startswith(("base embedder", "one-shot script"))]
    for name, by_set, _ in results:
        if name.startswith(("base embedder", "one-shot script")):
            continue
        for peer, sc in peers:
            print_paired(by_set["unseen"], sc, f"{name.strip()} - {peer}")


def print_rows(results) -> None:
    print(f"\n{'recipe':48s} {'set':8s} {'hit@1':>6s} {'hit@3':>6s} {'hit@5':>6s} {'hit@10':>6s} {'mrr@10':>6s} "
          f"{'ndcg@10':>7s} {'time':>6s}")
    for name, by_set, took in results:
        for s, m in ((s, v.mean()) for s, v in by_set.items()):
            print(f"{name[:48]:48s} {s:8s} {m['hit@1']:6.3f} {m['hit@3']:6.3f} {m['hit@5']:6.3f} {m['hit@10']:6.3f} "
                  f"{m['mrr@10']:6.3f} {m['ndcg@10']:7.3f} {took:5.0f}s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
