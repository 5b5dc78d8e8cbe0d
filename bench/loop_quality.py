"""Does the loop help? Unseen-question quality of what serves after `ragloop cycle`s on a real benchmark.

    python -m bench.loop_quality [--benchmark examples|perlfaq] [--kinds embedder] [--waves 3] [--report r.html]

The benchmark's FAQ questions are split (fixed, by hash) into "traffic" and "unseen" halves. The traffic
arrives in --waves consecutive waves, one day each: production (the embedder serving at that moment; the
packaged MiniLM at first) retrieves the top 10 over the whole corpus for every question of the wave and
logs the event (hit or miss) in the v1 format; ragloop ingests the log and runs one cycle (train, gate
against what serves, promote (unless --no-refit, the refit of what was promoted on all traffic so far, daemon/train/refit.py),
re-index). After each wave the unseen half, which no stage ever saw, is scored for: the base embedder; what
serves (and the candidate, when the gate kept it out, or the gated candidate a refit replaced); the reranker
pipeline when the reranker is trained, alone and fused at its validated weight (and, with --reranker-base,
that base before any fine-tune, alone and fused at the weight it earns on the same validation queries);
and the peer, the one-shot script (bench/benchmarks.py: MNRL,
3 epochs, lr 2e-5, batch 16) fine-tuned on every traffic question so far with production's top wrong chunk
as its negative. After the last wave, what serves is compared with the script per unseen question (paired
difference, 95% bootstrap interval, questions won and lost, two-sided p), and so is each reranker pipeline
with the embedder alone whose top gate.rerank_depth it reorders. The last line is machine-readable: serving_* is what serves after the last wave,
script_* the script after the last wave.

--swap-halves trains on the unseen half and scores the traffic half, a second measurement on disjoint
questions; --dump writes each unseen question's figures (what serves' embedder after wave 1 and after the
last, and the script) for bench/pool_halves.py, which pairs them over both halves and both benchmarks.
--twin-refit also trains, at each promoting wave, the other train.embedder.refit_from recipe on a copy of
the state (RefitTwin) and scores it beside the refit that serves, paired and timed; the dump keeps it.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import structlog

from bench.benchmarks import DIRS, per_query, regressed_gained
from daemon.config import settings_from_dict
from daemon.data import load_corpus
from daemon.gate import paired_difference
from daemon.ingest import ingest_once
from daemon.models import (Corpus, Scores, corpus_embeddings, cross_scores, fuse_rankings, fused_by_weight,
                           load_embedder, load_reranker, model_weight, packaged_minilm, pick_device, registry, retrieve,
                           retrieve_scored, score)
from daemon.service import run_cycle
from daemon.store import open_store


def log_wave(model, key: str, corpus: Corpus, cache: Path, wave: list[dict], day: int, log_path: Path,
             wrong: dict[str, str]) -> int:
    """Production (``model``, what serves now) answers one wave of traffic on day ``day``; the events are
    appended to the log. Returns the misses; records each question's top wrong chunk in ``wrong``."""
    emb = corpus_embeddings(model, corpus, cache, key)
    ranked = retrieve(model, corpus, emb, [q["query"] for q in wave], 10)
    t0 = datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(days=day)
    misses = 0
    with log_path.open("a") as fh:
        for i, (q, top) in enumerate(zip(wave, ranked)):
            misses += not set(q["expected_ids"]) & set(top)
            wrong.setdefault(q["query"], next((c for c in top if c not in q["expected_ids"]), top[-1]))
            fh.write(json.dumps({"ts": (t0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
                                 "query": q["query"], "expected_ids": q["expected_ids"], "retrieved_ids": top,
                                 "source": "loop_quality"}) + "\n")
    return misses


def waves_of(traffic: list[dict], n: int) -> list[list[dict]]:
    """``n`` consecutive waves of the traffic half, in its fixed order."""
    return [traffic[i * len(traffic) // n:(i + 1) * len(traffic) // n] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", choices=sorted(DIRS), default="examples", help="which real FAQ benchmark")
    ap.add_argument("--kinds", nargs="+", choices=("embedder", "reranker"), default=["embedder", "reranker"],
                    help="what the cycle trains (a cold-start reranker is skipped below train.reranker.min_pairs)")
    ap.add_argument("--waves", type=int, default=1, help="feed the traffic in this many waves, one day and one cycle each")
    ap.add_argument("--no-script", action="store_true", help="skip the one-shot script peer (one fine-tune per wave)")
    ap.add_argument("--swap-halves", action="store_true",
                    help="the benchmark's unseen half is the traffic and its traffic half is unseen: a second, "
                         "disjoint measurement of the same recipe (bench/pool_halves.py pools both)")
    ap.add_argument("--dump", type=Path, default=None,
                    help="write each unseen question's metrics (what serves after wave 1 and after the last, and "
                         "the script) to this JSON file, for bench/pool_halves.py")
    ap.add_argument("--report", type=Path, default=None, help="write `ragloop report` of the run's store here")
    ap.add_argument("--epochs", type=float, default=None, help="override train.embedder.epochs")
    ap.add_argument("--lr", type=float, default=None, help="override train.embedder.learning_rate")
    ap.add_argument("--negatives", type=int, default=None, help="override train.embedder.negatives")
    ap.add_argument("--reranker-epochs", type=float, default=None, help="override train.reranker.epochs")
    ap.add_argument("--reranker-lr", type=float, default=None, help="override train.reranker.learning_rate")
    ap.add_argument("--reranker-base", default=None,
                    help="train.reranker.base, e.g. bench/.cache/reranker-standin (bench/experiments/reranker_standin.py)")
    ap.add_argument("--reranker-min-pairs", type=int, default=None,
                    help="override train.reranker.min_pairs (0: train the cold-start reranker whatever its pairs)")
    ap.add_argument("--max-seq-length", type=int, default=None, help="override train.<kind>.max_seq_length")
    ap.add_argument("--start-from", choices=("serving", "base"), default=None,
                    help="override train.embedder.start_from: continue from what serves, or restart from the base "
                         "on all train pairs so far, each cycle")
    ap.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                    help="override train.embedder.refit (on by default): after a promotion, the refit on all traffic "
                         "so far serves (if it passes its check) instead of the candidate trained on the train split")
    ap.add_argument("--refit-from", choices=("start", "candidate"), default=None,
                    help="override train.embedder.refit_from: the recipe again from its start, or continue the "
                         "candidate on the held-out pairs and a replay sample (--refit-replay, --refit-epochs)")
    ap.add_argument("--refit-replay", type=float, default=None, help="override train.embedder.refit_replay")
    ap.add_argument("--refit-epochs", type=float, default=None, help="override train.embedder.refit_epochs")
    ap.add_argument("--twin-refit", action="store_true",
                    help="at each promoting wave, also train the other train.embedder.refit_from variant on a copy "
                         "of the state and score it beside the refit that serves (paired); kept in --dump")
    ap.add_argument("--embedder-metric", default=None, help='override gate.embedder_metric, e.g. "mrr@10"')
    ap.add_argument("--synth", choices=("none", "smollm2"), default="none",
                    help="smollm2: synthetic questions for every chunk from the offline generator (bench/experiments/offline_synth.py)")
    ap.add_argument("--synth-cache", type=Path, default=Path("bench/.cache/smollm2-questions.jsonl"),
                    help="generated answers by chunk text hash, reused across runs")
    ap.add_argument("--synthetic-share", type=float, default=None, help="override train.max_synthetic_share")
    args = ap.parse_args()
    if args.dump is not None and args.no_script:
        ap.error("--dump writes the script's per-question figures beside what serves: drop --no-script")
    if args.dump is not None and not args.dump.parent.is_dir():
        ap.error(f"--dump: no directory {args.dump.parent} to write {args.dump.name} in")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    data = DIRS[args.benchmark]
    questions = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines()]
    traffic = [q for q in questions if q["half"] == "traffic"]
    unseen = [q for q in questions if q["half"] == "unseen"]
    if args.swap_halves:
        traffic, unseen = unseen, traffic
    device = pick_device("auto")
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        overrides = {"embedder": (("epochs", args.epochs), ("learning_rate", args.lr), ("start_from", args.start_from),
                                  ("negatives", args.negatives), ("refit", args.refit), ("refit_from", args.refit_from),
                                  ("refit_replay", args.refit_replay), ("refit_epochs", args.refit_epochs)),
                     "reranker": (("epochs", args.reranker_epochs), ("learning_rate", args.reranker_lr))}
        train = {k: {kk: v for kk, v in (*pairs, ("max_seq_length", args.max_seq_length)) if v is not None}
                 for k, pairs in overrides.items()}
        if args.reranker_min_pairs is not None:
            train["reranker"]["min_pairs"] = args.reranker_min_pairs
        if args.reranker_base:
            train["reranker"]["base"] = str(Path(args.reranker_base).resolve())
        if args.synthetic_share is not None:
            train["max_synthetic_share"] = args.synthetic_share
        gate = {"embedder_metric": args.embedder_metric} if args.embedder_metric else {}
        settings = settings_from_dict({"state_dir": str(work / "state"), "log": {"level": "warning"},
                                       "ingest": {"paths": [str(work / "feedback.jsonl")]}, "train": train,
                                       "gate": gate, "synth": {"model": "SmolLM2-135M-Instruct.Q4_1",
                                                               "run_token_budget": 0, "daily_token_budget": 0}},
                                      "bench", base_dir=work)
        swapped = " (halves swapped)" if args.swap_halves else ""
        print(f"benchmark {args.benchmark}{swapped}; settings: train {train}, gate {gate}, synth {args.synth}; "
              f"{args.waves} wave(s)")
        engine = open_store(settings.store_url)
        load_corpus(engine, data / "corpus.jsonl")
        corpus = Corpus(engine)
        cache = settings.state_dir / "cache" / "embeddings"
        base = load_embedder(packaged_minilm(), device)
        if args.synth == "smollm2":
            synthesize_offline(engine, settings, args.synth_cache)
        wrong: dict[str, str] = {}
        twin = None
        if args.twin_refit:
            twin = RefitTwin(settings, work / "twin")
            twin.install()
        per_wave, hits_after, cycle_times, script_pq = [], [], [], None
        for w, wave in enumerate(waves_of(traffic, args.waves)):
            model, key, label = serving_model(engine, settings, base)
            misses = log_wave(model, key, corpus, cache, wave, w, work / "feedback.jsonl", wrong)
            ingest_once(engine, settings)
            print(f"\nwave {w + 1}/{args.waves}: {len(wave)} traffic questions logged by {label} ({misses} misses); "
                  f"corpus {len(corpus.ids)} chunks; unseen {len(unseen)}")
            t = time.monotonic()
            report = run_cycle(engine, settings, kinds=tuple(args.kinds))
            cycle_times.append(time.monotonic() - t)
            h = report.heldout
            stages = ", ".join(f"{st['stage']} {st['seconds']:.0f}s" + (
                f" ({st['mode']} serving at {st['serving_after_s']:.0f}s)" if "serving_after_s" in st else "")
                for st in report.stages if st["stage"] != "cycle")
            print(f"held-out: {h['heldout_queries']} of {h['queries']} traffic queries (share {h['share']}); "
                  f"cycle {cycle_times[-1]:.0f}s ({stages})")
            for d in report.decisions:
                print(f"gate: {d['kind']} v{d['version']} -> {d['outcome']}: {d['reason']}")
            for d in report.not_trained:
                print(f"not trained: {d['kind']}: {d['reason']}")
            rows, flags, serving_pq, pipelines = evaluate_unseen(engine, settings, corpus, base, unseen)
            seen = [q for q in traffic if q["query"] in wrong]
            if not args.no_script:
                script_pq = script_unseen(corpus, seen, wrong, unseen, work / f"script-{w}", device)
                rows[f"one-shot script on {len(seen)} traffic questions"] = script_pq.mean()
            per_wave.append((rows, flags))
            hits_after.append(serving_pq)
            if twin is not None:
                refit_s = next((st["seconds"] for st in report.stages if st["stage"] == "refit"), None)
                try:
                    twin.run(w, corpus, unseen, Scores(serving_pq), flags["embedder_row"], refit_s)
                except Exception as exc:  # a diagnostic: the run's own figures still stand
                    print(f"twin refit failed: {exc!r}")
            print_rows(rows)
        if args.report is not None:
            from daemon.observe import build_report

            args.report.write_text(build_report(engine), encoding="utf-8")
            print(f"report: {args.report}")
        engine.dispose()
    rows, flags = per_wave[-1]
    if args.waves > 1:
        print_waves(per_wave, hits_after, unseen)
    print(f"\nunseen questions ({len(unseen)}), {device}; cycles {', '.join(f'{c:.0f}s' for c in cycle_times)}, "
          f"total {time.monotonic() - t_start:.0f}s")
    print_rows(rows)
    for name, pq in pipelines.items():
        print_paired(pq, Scores(hits_after[-1]), f"{name} - {flags['embedder_row']} alone")
    if script_pq is not None:
        print_paired(Scores(hits_after[-1]), script_pq, "what serves (its embedder) - the one-shot script")
    if args.dump is not None:
        args.dump.write_text(json.dumps({
            "benchmark": args.benchmark, "swap_halves": args.swap_halves, "waves": args.waves,
            "serving": flags["embedder_row"], "queries": [q["query"] for q in unseen],
            "serving_after_wave1": hits_after[0], "serving_after_last": hits_after[-1],
            "script_after_last": script_pq.per_query,
            "twin_refits": twin.results if twin is not None else []}, indent=1))
        print(f"per-question figures: {args.dump}")
    b, e, p = rows["base embedder"], rows[flags["embedder_row"]], rows[flags["pipeline_row"]]
    sv = p if flags["promoted_reranker"] else e
    sc = next((m for name, m in rows.items() if name.startswith("one-shot script")), None)
    script = (f"script_hit1={sc['hit@1']:.3f} script_hit5={sc['hit@5']:.3f} script_hit10={sc['hit@10']:.3f} "
              f"script_mrr10={sc['mrr@10']:.3f} ") if sc else ""
    print(f"base_hit10={b['hit@10']:.3f} embedder_hit10={e['hit@10']:.3f} base_hit1={b['hit@1']:.3f} "
          f"embedder_hit1={e['hit@1']:.3f} pipeline_hit1={p['hit@1']:.3f} pipeline_hit10={p['hit@10']:.3f} "
          f"base_mrr10={b['mrr@10']:.3f} pipeline_mrr10={p['mrr@10']:.3f} "
          f"serving_hit1={sv['hit@1']:.3f} serving_hit5={sv['hit@5']:.3f} serving_hit10={sv['hit@10']:.3f} "
          f"serving_mrr10={sv['mrr@10']:.3f} base_hit5={b['hit@5']:.3f} {script}"
          f"promoted_embedder={flags['promoted_embedder']} promoted_reranker={flags['promoted_reranker']} "
          f"waves={args.waves} benchmark={args.benchmark} cycle_s={cycle_times[-1]:.0f} device={device}")


class RefitTwin:
    """The other `train.embedder.refit_from` beside the one that serves, on the same promotion (--twin-refit).

    When a cycle's refit begins, the state (store, models, vector cache; not the index) is copied; after the
    cycle, the other variant's refit (daemon/train/refit.py, the daemon's own function) is trained and checked
    on that copy, then scored on the unseen half. The run itself is untouched: what serves, later waves and
    their figures are the default's. Costs one more refit per promoting wave."""

    def __init__(self, settings, root: Path):
        self.settings, self.root = settings, root
        self.variant = "candidate" if settings.train.embedder.refit_from == "start" else "start"
        self.pending = None  # (the gated Decision, the copied state) of this cycle's refit
        self.results: list[dict] = []  # per promoting wave

    def install(self) -> None:
        import daemon.service.cycle as cycle

        real = cycle.refit

        def refit_and_copy(engine, settings, promoted, *, cancel=None):
            self.pending = (promoted, self._copy_state(settings))
            return real(engine, settings, promoted, cancel=cancel)

        cycle.refit = refit_and_copy

    def _copy_state(self, settings) -> Path:
        import shutil
        import sqlite3

        if not settings.store_url.startswith("sqlite:///"):
            raise SystemExit("--twin-refit copies the SQLite store: run it without store.url")
        dst = self.root / f"state-{len(self.results)}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(settings.state_dir, dst, ignore=shutil.ignore_patterns("qdrant", "ragloop.db*", "*.log*"))
        with sqlite3.connect(settings.store_url[len("sqlite:///"):]) as src, sqlite3.connect(dst / "ragloop.db") as out:
            src.backup(out)  # a consistent copy while the cycle's engine holds the store open
        return dst

    def run(self, wave: int, corpus: Corpus, unseen: list[dict], served: Scores, served_label: str,
            served_refit_s: float | None) -> None:
        """The twin refit of this wave's promotion, if its refit ran; printed and kept for --dump."""
        import shutil

        from daemon.train import refit

        if self.pending is None:
            return
        promoted, state = self.pending
        self.pending = None
        settings = self.settings.model_copy(deep=True)
        settings.state_dir = state
        settings.train.embedder.refit_from = self.variant
        engine = open_store(settings.store_url)
        try:
            t = time.monotonic()
            d = refit(engine, settings, promoted)
            seconds = time.monotonic() - t
            if d is None:
                print(f"twin refit ({self.variant}): its training failed (see the log)")
                return
            row = registry.get_version(engine, "embedder", d.candidate)
            model = load_embedder(registry.model_path(settings, row), settings.train.device)
            twin = unseen_scores(model, corpus, state / "cache" / "embeddings", registry.vector_key(row), unseen)
        finally:
            engine.dispose()
            shutil.rmtree(state, ignore_errors=True)
        label = f"refit from the {self.variant} (twin, not served)"
        cost = f"{seconds:.0f}s with its check" + (f"; the served refit's stage {served_refit_s:.0f}s"
                                                    if served_refit_s is not None else "")
        print(f"twin refit of v{promoted.candidate}, refit_from = {self.variant!r}: {d.outcome} ({d.reason}); {cost}")
        print_rows({served_label: served.mean(), label: twin.mean()})
        print_paired(twin, served, f"{label} - {served_label}")
        self.results.append({"wave": wave + 1, "variant": self.variant, "refit_of": promoted.candidate,
                             "outcome": d.outcome, "seconds": round(seconds, 1), "served_refit_s": served_refit_s,
                             "twin": twin.per_query, "served": served.per_query})


def serving_model(engine, settings, base):
    """(model, embedding-cache key, label) of the embedder that serves now."""
    serving = registry.serving(engine, "embedder")
    if serving is None or serving["version"] == 0:
        return base, "embedder-v0", "the base embedder"
    return (load_embedder(registry.model_path(settings, serving), settings.train.device), f"embedder-v{serving['version']}",
            f"embedder v{serving['version']}")


def script_unseen(corpus: Corpus, seen: list[dict], wrong: dict[str, str], unseen: list[dict], out: Path,
                  device: str) -> Scores:
    """The one-shot script (bench/benchmarks.py) on every traffic question so far, scored per unseen question.

    Its model is cached in bench/.cache/script/ by its rows and device: training is deterministic there, and
    runs that differ only in ragloop's settings train the same script (10 minutes each on this CPU)."""
    import hashlib
    import os
    import shutil

    from bench.benchmarks import CACHE, one_shot_finetune

    rows = [(q["query"], corpus.text_of[p], corpus.text_of[wrong[q["query"]]]) for q in seen for p in q["expected_ids"]]
    key = hashlib.sha256(json.dumps([packaged_minilm(), device, rows]).encode()).hexdigest()[:20]
    cached = CACHE / "script" / key
    if not cached.exists():
        trained = one_shot_finetune(packaged_minilm(), rows, out)
        tmp = cached.with_name(f".{key}.{os.getpid()}")
        shutil.copytree(trained, tmp)
        os.replace(tmp, cached)  # whole or not at all: a killed run leaves no half-written model behind
    return unseen_scores(load_embedder(str(cached), device), corpus, None, "script", unseen)


def unseen_scores(model, corpus: Corpus, cache: Path | None, key: str, unseen: list[dict]) -> Scores:
    """Per unseen question, the metrics of ``model``'s top 50 over the corpus (vectors cached under ``key``)."""
    emb = corpus_embeddings(model, corpus, cache, key)
    return Scores(per_query(retrieve(model, corpus, emb, [q["query"] for q in unseen], 50), unseen))


def print_paired(a: Scores, b: Scores, label: str) -> None:
    """The paired difference a - b on the same unseen questions, with its 95% bootstrap interval, the
    questions each side won, and the two-sided sign-flip p (daemon.gate.significance.paired_difference)."""
    print(f"paired, {label}, on {len(a.per_query)} unseen questions (95% bootstrap interval; questions won/lost):")
    for m in ("hit@1", "hit@5", "hit@10", "mrr@10"):
        print(f"  {m:7s} {paired_difference(a.column(m), b.column(m)).describe()}")


def print_rows(rows: dict[str, dict[str, float]]) -> None:
    print(f"{'model (unseen questions)':52s} {'hit@1':>6s} {'hit@3':>6s} {'hit@5':>6s} {'hit@10':>6s} {'mrr@10':>6s}")
    for name, m in rows.items():
        print(f"{name:52s} {m['hit@1']:6.3f} {m['hit@3']:6.3f} {m['hit@5']:6.3f} {m['hit@10']:6.3f} {m['mrr@10']:6.3f}")


def print_waves(per_wave, hits_after, unseen: list[dict]) -> None:
    """What serves after each wave, beside the script on the same traffic; and who regressed since wave 1."""
    print(f"\n{'after wave':10s} {'serving':28s} {'hit@1':>6s} {'hit@5':>6s} {'hit@10':>6s} {'mrr@10':>6s}   "
          f"{'script hit@1':>12s} {'hit@5':>6s} {'hit@10':>6s} {'mrr@10':>6s}")
    for w, (rows, flags) in enumerate(per_wave):
        sv = rows[flags["pipeline_row"] if flags["promoted_reranker"] else flags["embedder_row"]]
        sc = next((m for name, m in rows.items() if name.startswith("one-shot script")), None)
        script = f"{sc['hit@1']:12.3f} {sc['hit@5']:6.3f} {sc['hit@10']:6.3f} {sc['mrr@10']:6.3f}" if sc else ""
        print(f"{w + 1:<10d} {flags['embedder_row'][:28]:28s} {sv['hit@1']:6.3f} {sv['hit@5']:6.3f} {sv['hit@10']:6.3f} "
              f"{sv['mrr@10']:6.3f}   {script}")
    for m in ("hit@1", "hit@10"):
        lost, won = regressed_gained(hits_after[0], hits_after[-1], m)
        print(f"unseen questions at {m} after wave 1 but not after the last: {lost} regressed, {won} gained "
              f"(of {len(unseen)})")


def synthesize_offline(engine, settings, cache: Path) -> None:
    """Questions for every chunk from SmolLM2, stored by the real synthesis path as synthetic pairs."""
    from bench.experiments.offline_synth import PregeneratedClient, generate_all

    from daemon.ingest import pending_chunks, run_synthesis

    todo = pending_chunks(engine, settings, 10**9)
    cache.parent.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    answers = generate_all(todo, cache)
    gen_s = time.monotonic() - t
    client = PregeneratedClient(answers, {c["text"]: c["text_hash"] for c in todo})
    rep = run_synthesis(engine, settings, limit=len(todo), client=client)
    print(f"offline synthesis: {rep.done} chunks with questions, {rep.empty} without, {rep.questions} questions "
          f"({gen_s:.0f}s generating, 0 when cached)")


def evaluate_unseen(engine, settings, corpus: Corpus, base, unseen: list[dict]):
    """Unseen-half rows of what serves (and what was trained beside it: a kept-out candidate, or the gated
    candidate whose refit on all traffic serves); the per-query scores of what serves' embedder; and of each
    reranker pipeline (alone and fused), by row name."""
    queries = [q["query"] for q in unseen]
    relevant = [set(q["expected_ids"]) for q in unseen]
    cache = settings.state_dir / "cache" / "embeddings"
    rows: dict[str, dict[str, float]] = {}

    scored: dict[str, list] = {}

    def ranked_by(model, key):
        ids, sims = retrieve_scored(model, corpus, corpus_embeddings(model, corpus, cache, key), queries, 50)
        scored[key] = sims
        return ids

    base_ranked = ranked_by(base, "embedder-v0")
    rows["base embedder"] = score(base_ranked, relevant).mean()
    serving = registry.serving(engine, "embedder")
    promoted_embedder = int(serving["version"] > 0)
    emb_model, emb_ranked, emb_row, emb_key = base, base_ranked, "base embedder", "embedder-v0"
    cand = _latest(engine, "embedder")
    if promoted_embedder:
        emb_model = load_embedder(registry.model_path(settings, serving), settings.train.device)
        emb_key = f"embedder-v{serving['version']}"
        emb_ranked = ranked_by(emb_model, emb_key)
        refit_of = (serving.get("lineage") or {}).get("refit_of")
        emb_row = f"promoted embedder v{serving['version']}" + (f" (refit of v{refit_of})" if refit_of else "")
        rows[emb_row] = score(emb_ranked, relevant).mean()
        if refit_of:  # what the gate tested, trained on the train split only
            m = load_embedder(registry.model_path(settings, registry.get_version(engine, "embedder", refit_of)), settings.train.device)
            rows[f"gated candidate v{refit_of} (its refit serves)"] = score(
                ranked_by(m, f"embedder-v{refit_of}"), relevant).mean()
    if cand is not None and cand["version"] > serving["version"]:  # the gate kept this cycle's candidate out
        m = load_embedder(registry.model_path(settings, cand), settings.train.device)
        rows[f"embedder candidate v{cand['version']} (not promoted)"] = score(
            ranked_by(m, f"embedder-v{cand['version']}"), relevant).mean()
    pipelines: dict[str, Scores] = {}  # reranker pipelines, per query, for the paired comparison with the embedder
    # a reranker reorders the first stage's top gate.rerank_depth, as the gate scores it and production applies it
    depth = settings.gate.rerank_depth
    top, top_sims = [r[:depth] for r in emb_ranked], [x[:depth] for x in scored[emb_key]]
    if settings.train.reranker.base:
        pipelines.update(base_reranker_rows(engine, settings, corpus, queries, relevant, emb_model, emb_key,
                                            top, top_sims))
    rr = registry.serving(engine, "reranker")
    promoted_reranker = int(rr is not None)
    rr = rr or _latest(engine, "reranker")
    pipe_row = emb_row
    if rr is not None:
        label = "promoted" if promoted_reranker else "candidate (not promoted)"
        w = model_weight(registry.model_path(settings, rr))
        head = f"{'embedder' if emb_row == 'base embedder' else emb_row} + reranker v{rr['version']}"
        cross = cross_scores(load_reranker(registry.model_path(settings, rr), settings.train.device, settings.train.trust_remote_code), corpus, queries, top)
        pipelines[f"{head} alone (no fusion)"] = score(fuse_rankings(top, None, cross, 1.0), relevant)
        pipe_row = f"{head} fused w={w} {label}"  # as the gate scored it and production applies it
        pipelines[pipe_row] = score(fuse_rankings(top, top_sims, cross, w), relevant)
        print_by_weight(f"reranker v{rr['version']}", top, top_sims, cross, relevant)
    rows.update({name: pq.mean() for name, pq in pipelines.items()})
    return rows, {"embedder_row": emb_row, "pipeline_row": pipe_row, "promoted_embedder": promoted_embedder,
                  "promoted_reranker": promoted_reranker}, score(emb_ranked, relevant).per_query, pipelines


def base_reranker_rows(engine, settings, corpus, queries, relevant, emb_model, emb_key, emb_ranked, sims):
    """The configured reranker base before any fine-tune, alone and fused at the weight it earns on the same
    validation queries (carved from the train split) that the fine-tuned candidate's weight is chosen on."""
    from daemon.train import choose_fusion, in_validation, select_pairs

    fraction = settings.train.reranker.validation_fraction
    validation: dict[str, set[str]] = {}
    for p in select_pairs(engine, settings):  # the pairs a training job assembles from
        if in_validation(p["query"], p["origin"], fraction):
            validation.setdefault(p["query"], set()).add(p["chunk_id"])
    model = load_reranker(settings.train.reranker.base, settings.train.device, settings.train.trust_remote_code)
    w = choose_fusion(model, emb_model, engine, emb_key, settings, validation)["weight"]
    cross = cross_scores(model, corpus, queries, emb_ranked)
    print_by_weight("the reranker base (not fine-tuned)", emb_ranked, sims, cross, relevant)
    return {"+ reranker base (not fine-tuned) alone": score(fuse_rankings(emb_ranked, None, cross, 1.0), relevant),
            f"+ reranker base (not fine-tuned) fused w={w}": score(fuse_rankings(emb_ranked, sims, cross, w), relevant)}


def print_by_weight(name: str, top, sims, cross, relevant) -> None:
    """Unseen hit@1 and MRR@10 of the fused pipeline at every fusion weight: a diagnostic of what the weight
    could buy at best (the ceiling of this reranker), never used to choose it (that is validation's job)."""
    cells = [f"{w:.1f}: {m['hit@1']:.3f}/{m['mrr@10']:.3f}" for w, m in fused_by_weight(top, sims, cross, relevant).items()]
    print(f"unseen hit@1/MRR@10 by fusion weight, {name} (diagnostic; w is chosen on validation): " + ", ".join(cells))


def _latest(engine, kind: str):
    import sqlalchemy as sa

    from daemon.store import ModelVersion

    t = ModelVersion.__table__
    with engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.kind == kind, t.c.version > 0).order_by(t.c.version.desc())
                           ).mappings().first()
    return dict(row) if row else None


if __name__ == "__main__":
    main()
