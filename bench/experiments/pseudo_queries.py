"""Offline pseudo-queries (inverse cloze task): does a sentence of each chunk, asked as its query, add to the script?

    python -m bench.experiments.pseudo_queries --benchmark examples|perlfaq

Traffic covers only the chunks users asked about. The inverse cloze task (Lee et al., 2019) makes a query
for every chunk with no generator at all: one sentence of the chunk is the query, the rest of the chunk
its positive. It never sees a benchmark question or a section title, so nothing of the unseen half leaks.

Three models are scored on the unseen half, in the same run, per question (the gate's metrics):
the base MiniLM; the one-shot script (bench/benchmarks.py: MNRL, 3 epochs, lr 2e-5, batch 16, every
traffic question with production's top wrong chunk); and the same script started from the base after
one epoch of MNRL on the pseudo-queries (a random other chunk as each one's negative). The second is
compared with the first per question: paired difference, 95% bootstrap interval, won/lost, two-sided p.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import tempfile
import time
from pathlib import Path

import structlog

from bench.benchmarks import load, one_shot_finetune, per_query, ranked, script_rows, top_wrong
from bench.loop_quality import print_paired, print_rows
from daemon.models import Scores, corpus_embeddings, load_embedder, packaged_minilm, pick_device, retrieve

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")


def pseudo_rows(corpus, seed: int = 7, min_words: int = 6, max_words: int = 40) -> list[tuple[str, str, str]]:
    """(sentence, rest of its chunk, a random other chunk) for each chunk with two sentences or more."""
    rng = random.Random(seed)
    ids = list(corpus.ids)
    rows = []
    for cid in ids:
        parts = SENTENCE.split(corpus.text_of[cid].strip())
        fit = [i for i, s in enumerate(parts) if min_words <= len(s.split()) <= max_words]
        if len(parts) < 2 or not fit:
            continue
        i = rng.choice(fit)
        other = rng.choice(ids)
        while other == cid:
            other = rng.choice(ids)
        rows.append((parts[i], " ".join(parts[:i] + parts[i + 1:]), corpus.text_of[other]))
    return rows


def _unseen(model, bench, unseen: list[dict]) -> Scores:
    """Per-question scores of a model trained in this run (its corpus vectors are not cached)."""
    emb = corpus_embeddings(model, bench.corpus, None, "run")
    return Scores(per_query(retrieve(model, bench.corpus, emb, [q["query"] for q in unseen], 20), unseen))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", choices=("examples", "perlfaq"), default="examples")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    bench = load(args.benchmark)
    traffic, unseen = bench.half("traffic"), bench.half("unseen")
    device = pick_device("auto")
    base_path = packaged_minilm()
    base = load_embedder(base_path, device)
    t0 = time.monotonic()
    wrong = top_wrong(ranked(base, bench, traffic, "base"), traffic)
    rows = script_rows(bench, traffic, wrong)
    pseudo = pseudo_rows(bench.corpus)
    print(f"{bench.name}: {len(traffic)} traffic questions ({len(rows)} script rows), {len(unseen)} unseen; "
          f"{len(pseudo)} pseudo-queries from {len(bench.corpus.ids)} chunks, e.g. {pseudo[0][0]!r}")
    scores = {"base MiniLM": Scores(per_query(ranked(base, bench, unseen, "base"), unseen))}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.monotonic()
        script = one_shot_finetune(base_path, rows, work / "script")
        print(f"script trained in {time.monotonic() - t:.0f}s")
        m = load_embedder(str(script), device)
        scores["one-shot script"] = _unseen(m, bench, unseen)
        t = time.monotonic()
        adapted = one_shot_finetune(base_path, pseudo, work / "ict", epochs=1)
        both = one_shot_finetune(str(adapted), rows, work / "ict-script")
        print(f"pseudo-query epoch + script trained in {time.monotonic() - t:.0f}s")
        m = load_embedder(str(both), device)
        scores["pseudo-queries, then the script"] = _unseen(m, bench, unseen)
    print()
    print_rows({name: sc.mean() for name, sc in scores.items()})
    print_paired(scores["pseudo-queries, then the script"], scores["one-shot script"],
                 "pseudo-queries then script - script")
    print(f"total {time.monotonic() - t0:.0f}s on {device}")


if __name__ == "__main__":
    main()
