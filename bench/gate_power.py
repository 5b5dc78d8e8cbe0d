"""Measure the gate itself: how often it promotes a worse candidate, and how often a better one, by n.

    python -m bench.gate_power [--benchmark examples perlfaq] [--draws 500]

On each real benchmark, all FAQ questions are split in two halves twice (seeds 0, 1). Real candidates
are trained on one half and scored per query on the other (the pool, never trained on):
  better:  the one-shot fine-tune (MNRL, 3 epochs, lr 2e-5, production's wrong chunk as negative), per
           split; a mild one (1 epoch, lr 5e-6); and the fine-tune on 40% and on 25% of all questions
           (what the daemon trains on at a held-out share of 0.2 and 0.5 of the traffic half);
  worse:   the same fine-tune on shuffled positives (a broken label pipeline); the base model with
           Gaussian noise on every weight (two levels).
The serving model is the packaged MiniLM. Then held-out sets of n = 20, 30, 50, 100, 200 queries are drawn
from the pool (with replacement, the pool standing for the population), and the real decision code
(daemon.gate.decision.decide) runs on each draw, with the drawn queries production answered (serving hit@10 = 1)
as its guard set, as in the daemon. Truth is the candidate's MRR@10 gain on the whole pool: "better"
when >= +0.02, "not better" when <= 0. False promotion = promotions of a not-better candidate / draws;
power = promotions of a better one / draws. Today's rule (hit@10, any guard drop > 0.02 vetoes,
bootstrap lower bound > 0) runs on the same draws. Per-query scores are cached in bench/.cache/.
The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import structlog
import torch

from bench.benchmarks import CACHE, load, one_shot_finetune, per_query, ranked, script_rows, top_wrong
from daemon.config import settings_from_dict
from daemon.gate import decide
from daemon.models import METRICS, Scores, load_embedder, packaged_minilm

NS = (20, 30, 50, 100, 200)
BETTER, NOT_BETTER = 0.02, 0.0
# (name, split seed, share of all questions trained on, epochs, lr, shuffled positives); noise: no training
PLAN = ([(f"finetune-s{s}", s, 0.5, 3, 2e-5, False) for s in range(2)] + [("mild-s0", 0, 0.5, 1, 5e-6, False)]
        + [("shuffled-s1", 1, 0.5, 3, 2e-5, True)]
        + [("noise-0.05", 0, 0, 0, 0, False), ("noise-0.1", 0, 0, 0, 0, False)]
        + [("finetune-40pct", 0, 0.4, 3, 2e-5, False), ("finetune-25pct", 0, 0.25, 3, 2e-5, False)])
RULES = ("new mrr@10", "new ndcg@10", "new hit@1", "new hit@10", "today (hit@10)")


def splits(n_questions: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for seed in range(2):
        perm = np.random.default_rng(seed).permutation(n_questions)
        out.append((np.sort(perm[: n_questions // 2]), np.sort(perm[n_questions // 2 :])))
    return out


def score_candidates(name: str, only: list[str] | None = None) -> dict:
    """Per-query metrics of the base model on every question, and of each candidate on its pool.

    Cached per candidate in bench/.cache/gate_power/<benchmark>.json: an interrupted run resumes.
    """
    path = CACHE / "gate_power" / f"{name}.json"
    out = json.loads(path.read_text()) if path.exists() else {"candidates": {}}
    bench = load(name)
    qs, sp = bench.questions, splits(len(bench.questions))
    base_ranking = ranked(load_embedder(packaged_minilm(), "cpu"), bench, qs, "base")
    out.setdefault("base", per_query(base_ranking, qs))
    wrong = top_wrong(base_ranking, qs)
    with tempfile.TemporaryDirectory() as tmp:
        for cname, s, share, epochs, lr, shuffle in PLAN:
            if cname in out["candidates"] or (only and cname not in only):
                continue
            t = time.monotonic()
            train, pool = sp[s]
            train = train[: int(len(qs) * share)]  # share of all questions trained on (the split's first half)
            if cname.startswith("noise"):
                model = noised_minilm(float(cname.split("-")[1]))
            else:
                rows = script_rows(bench, [qs[i] for i in train], [wrong[i] for i in train],
                                   np.random.default_rng(100 + s) if shuffle else None)
                model = load_embedder(str(one_shot_finetune(packaged_minilm(), rows, Path(tmp) / cname, epochs=epochs,
                                                            lr=lr)), "cpu")
            out["candidates"][cname] = {"pool": pool.tolist(), "trained_on": len(train) if share else 0,
                                        "per_query": per_query(ranked(model, bench, [qs[i] for i in pool], cname),
                                                               [qs[i] for i in pool])}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out))
            print(f"  {name}: {cname} scored in {time.monotonic() - t:.0f}s", flush=True)
    return out


def noised_minilm(level: float):
    """The base model with Gaussian noise of ``level`` x each weight tensor's std on every weight."""
    model = load_embedder(packaged_minilm(), "cpu")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * level)
    return model


def legacy_decide(cand: dict[str, Scores], serv: dict[str, Scores], seed: int = 0) -> bool:
    """Today's rule before this change, verbatim in effect: hit@10 gain >= 0.01, no guard metric down
    more than 0.02, paired bootstrap (2,000 resamples) 95% lower bound > 0."""
    c, s = cand["heldout"].column("hit@10"), serv["heldout"].column("hit@10")
    diff = c - s
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(2000, len(diff)))
    lower = float(np.quantile(diff[idx].mean(axis=1), 0.05))
    drops = [serv["guard"].mean()[m] - cand["guard"].mean()[m] for m in METRICS] if cand["guard"].per_query else [0]
    return diff.mean() >= 0.01 and max(drops) <= 0.02 and lower > 0


def promote_rates(serv_pq: list[dict], cand_pq: list[dict], draws: int, settings_by_metric: dict,
                  ns: tuple[int, ...] = NS) -> dict:
    """Share of draws promoted, per rule and n."""
    rng = np.random.default_rng(12345)
    serv_pq, cand_pq = np.array(serv_pq, dtype=object), np.array(cand_pq, dtype=object)
    counts = {r: {n: 0 for n in ns} for r in RULES}
    for n in ns:
        for _ in range(draws):
            idx = rng.integers(0, len(serv_pq), n)
            guard = idx[[serv_pq[i]["hit@10"] == 1 for i in idx]]
            cand = {"heldout": Scores(list(cand_pq[idx])), "guard": Scores(list(cand_pq[guard]))}
            serv = {"heldout": Scores(list(serv_pq[idx])), "guard": Scores(list(serv_pq[guard]))}
            for rule in RULES[:-1]:
                outcome = decide("embedder", cand, serv, settings_by_metric[rule.split()[1]], [""] * n)[0]
                counts[rule][n] += outcome == "promote"
            counts[RULES[-1]][n] += legacy_decide(cand, serv)
    return {r: {n: c / draws for n, c in by_n.items()} for r, by_n in counts.items()}


def run(name: str, draws: int, only: list[str] | None = None) -> dict[str, float]:
    t0 = time.monotonic()
    data = score_candidates(name, only)
    if only:
        data["candidates"] = {c: v for c, v in data["candidates"].items() if c in only}
    with tempfile.TemporaryDirectory() as tmp:
        settings = {m: settings_from_dict({"state_dir": tmp, "gate": {"embedder_metric": m}}, "bench", Path(tmp))
                    for m in ("mrr@10", "ndcg@10", "hit@1", "hit@10")}
    rows, rates = [], {}
    for cname, c in data["candidates"].items():
        serv_pq = [data["base"][i] for i in c["pool"]]
        gains = {m: float(np.mean([a[m] - b[m] for a, b in zip(c["per_query"], serv_pq)])) for m in METRICS}
        truth = "better" if gains["mrr@10"] >= BETTER else "not better" if gains["mrr@10"] <= NOT_BETTER else "between"
        rates[cname] = (truth, promote_rates(serv_pq, c["per_query"], draws, settings))
        rows.append((cname, truth, gains))
    print(f"\n{name}: {len(data['base'])} questions; pool gains of each candidate over the base (the truth)")
    print(f"{'candidate':14s} {'truth':11s} " + " ".join(f"{m:>8s}" for m in ("hit@1", "hit@10", "mrr@10", "ndcg@10")))
    for cname, truth, g in rows:
        print(f"{cname:14s} {truth:11s} " + " ".join(f"{g[m]:+8.3f}" for m in ("hit@1", "hit@10", "mrr@10", "ndcg@10")))
    summary = {}
    for label, truth in (("false promotion", "not better"), ("power", "better")):
        group = [r for t, r in rates.values() if t == truth]
        print(f"\n{name}: {label} ({truth} candidates: {len(group)}; {draws} draws per n; "
              f"{'max' if truth == 'not better' else 'mean'} over candidates)")
        print(f"{'rule':16s} " + " ".join(f"{'n=' + str(n):>7s}" for n in NS))
        for rule in RULES:
            vals = [(max if truth == "not better" else np.mean)([r[rule][n] for r in group]) if group else float("nan")
                    for n in NS]
            print(f"{rule:16s} " + " ".join(f"{v:7.3f}" for v in vals))
            key = "fpr" if truth == "not better" else "power"
            tag = rule.replace("new ", "").replace("today (hit@10)", "today").replace("@", "")
            summary.update({f"{name}_{key}_{tag}_n{n}": round(v, 3) for n, v in zip(NS, vals)})
    if {"finetune-40pct", "finetune-25pct"} <= set(data["candidates"]):
        summary.update(share_scenarios(name, data, draws, settings))
    print(f"{name}: {time.monotonic() - t0:.0f}s")
    return summary


def share_scenarios(name: str, data: dict, draws: int, settings: dict) -> dict[str, float]:
    """How to get more evidence out of this benchmark's traffic T: what the gate decides for a held-out
    share f (n = f x T held-out queries, the candidate trained on the rest), and for k-fold cross-fitting
    (every traffic query scored by a model that never saw it, n = T, each model trained on (1 - 1/k) x T).
    Candidates: the fine-tunes on 40% and 25% of all questions (~0.8 T and ~0.5 T). Cross-fitting is
    approximated with one such model's per-query scores; it would cost k + 1 trainings and corpus encodes."""
    traffic = sum(q["half"] == "traffic" for q in load(name).questions)
    print(f"\n{name}: more evidence at this traffic ({traffic} traffic questions; rule: new mrr@10, {draws} draws)")
    print(f"{'scheme':26s} {'n':>4s} {'trained on':>10s} {'pool mrr@10 gain':>17s} {'promoted':>9s} {'trainings':>9s}")
    out = {}
    for scheme, n, cname, trainings in (("held-out share 0.2", round(0.2 * traffic), "finetune-40pct", 1),
                                        ("held-out share 0.5", round(0.5 * traffic), "finetune-25pct", 1),
                                        ("2-fold cross-fitting", traffic, "finetune-25pct", 3),
                                        ("5-fold cross-fitting", traffic, "finetune-40pct", 6)):
        c = data["candidates"][cname]
        serv_pq = [data["base"][i] for i in c["pool"]]
        gain = float(np.mean([a["mrr@10"] - b["mrr@10"] for a, b in zip(c["per_query"], serv_pq)]))
        rate = promote_rates(serv_pq, c["per_query"], draws, settings, (n,))["new mrr@10"][n]
        print(f"{scheme:26s} {n:4d} {c['trained_on']:10d} {gain:+17.3f} {rate:9.3f} {trainings:9d}")
        out[f"{name}_{re.sub(r'[^a-z0-9]+', '_', scheme)}_promoted"] = round(rate, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", nargs="+", default=["examples", "perlfaq"], choices=["examples", "perlfaq"])
    ap.add_argument("--draws", type=int, default=500, help="held-out sets drawn per candidate and n (>= 500)")
    ap.add_argument("--only", nargs="+", help="train and report only these candidates (names as in PLAN)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    out: dict[str, float] = {}
    for name in args.benchmark:
        out.update(run(name, args.draws, args.only))
    print(" ".join(f"{k}={v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
