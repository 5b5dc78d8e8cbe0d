"""What one cycle costs as the corpus grows: corpus encodes and wall time per stage, before and after.

    python -m bench.cycle_cost [--sizes 1000 5000 20000] [--before 0ca4a92^] [--steps 10]

Corpora of short real chunks: the chunks of both FAQ benchmarks (bench/data/examples/, bench/data/perlfaq/) cut into pieces
of 40 words, the pieces that answer a traffic question first, then the rest, then (past the ~10,200 such
pieces) the same texts cut 20, then 10 and 30 words later, as a sliding-window chunker would; cut to each size. Their
traffic questions (both benchmarks) are logged as production would log them and ingested.

For each size, three variants each run in a process of their own, on a fresh store:
  before   the daemon at --before (default: the revision before "embed the corpus once per model version"),
           a full fine-tune, as every cycle was then;
  full     this revision, train.embedder.mode = "full";
  adapter  this revision, train.embedder.mode = "adapter" (the query adapter).
Each builds the first index (not part of the cycle: production has one), then runs one embedder cycle of
train.embedder.max_steps = --steps in which the candidate is promoted whatever the gate said (the gate runs
and its word is reported; a few training steps rarely earn a promotion), so every row shows what a
promotion costs, inside the cycle as a real one happens. Every SentenceTransformer.encode call, in the worker and in its
training child, is counted by bench/encode_hook/sitecustomize.py: the texts that are corpus chunks divided by
the corpus size are the corpus encodes of a stage. Wall times are the cycle report's.

Then the multi-process encode (index.encode_devices) against bare `model.encode` on the same chunks, at 1 and
2 processes (pool start-up timed apart). The last line is key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOOK = REPO / "bench" / "encode_hook"
SOURCES = [REPO / "bench" / "data" / "examples", REPO / "bench" / "data" / "perlfaq"]
STAGES = ("mining", "training", "gate", "reindex")
WORDS = 40


def short_chunks() -> tuple[list[dict], list[dict]]:
    """(pieces, traffic questions with their answer piece): answer pieces first, then every other piece, then
    the pieces of a second cut that starts half a piece later."""
    pieces, shifted, first_piece, questions = [], [], {}, []
    for src in SOURCES:
        for line in (src / "corpus.jsonl").read_text().splitlines():
            c = json.loads(line)
            words = c["text"].split()
            for i in range(0, len(words), WORDS):
                if len(words[i:i + WORDS]) >= 8:
                    pid = f"{src.name}:{c['id']}:{i // WORDS}"
                    first_piece.setdefault(c["id"], pid)
                    pieces.append({"id": pid, "text": " ".join(words[i:i + WORDS]), "doc": c.get("doc")})
            for shift in (WORDS // 2, WORDS // 4, 3 * WORDS // 4):
                for i in range(shift, len(words), WORDS):
                    if len(words[i:i + WORDS]) >= 8:
                        shifted.append({"id": f"{src.name}:{c['id']}:{i}+", "text": " ".join(words[i:i + WORDS]),
                                        "doc": c.get("doc")})
        for line in (src / "questions.jsonl").read_text().splitlines():
            q = json.loads(line)
            if q["half"] == "traffic" and q["expected_ids"][0] in first_piece:
                questions.append({"query": q["query"], "answer": first_piece[q["expected_ids"][0]]})
    answers = {q["answer"] for q in questions}
    pieces.sort(key=lambda p: p["id"] not in answers)  # stable: answers first, then corpus order
    seen = {p["text"] for p in pieces}
    shifted.sort(key=lambda p: int(p["id"].rsplit(":", 1)[1][:-1]) % WORDS != WORDS // 2)  # half shifts first
    return pieces + list({p["text"]: p for p in shifted if p["text"] not in seen}.values()), questions


def write_inputs(work: Path, size: int) -> int:
    """corpus.jsonl, feedback.jsonl and the corpus' text hashes for one size; returns the chunk count."""
    from daemon.data import text_hash

    pieces, questions = short_chunks()
    pieces = pieces[:size]
    ids = [p["id"] for p in pieces]
    (work / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pieces))
    (work / "hashes.txt").write_text("\n".join(text_hash(p["text"]) for p in pieces))
    with (work / "feedback.jsonl").open("w") as fh:
        for i, q in enumerate(questions):
            wrong = [ids[(97 * i + k * 31) % len(ids)] for k in range(10)]
            retrieved = [c for c in wrong if c != q["answer"]][:10]
            if i % 3 == 0:  # a hit at rank 4, as production also answers well
                retrieved[3] = q["answer"]
            fh.write(json.dumps({"ts": f"2026-11-20T10:{i % 60:02d}:00Z", "query": q["query"],
                                 "expected_ids": [q["answer"]], "retrieved_ids": retrieved}) + "\n")
    return len(pieces)


def worker(work: Path, variant: str, steps: int) -> None:
    """One variant's run in this process (imports whichever daemon PYTHONPATH puts first)."""
    from daemon.config import settings_from_dict

    cycle_mod, load_corpus, ingest_once, build_index, run_cycle, open_store = _daemon_entry_points()

    train = {"device": "cpu", "embedder": {"max_steps": steps}}
    if variant != "before":
        train["embedder"]["mode"] = variant
    settings = settings_from_dict({"state_dir": str(work / "state"), "log": {"level": "warning"},
                                   "ingest": {"paths": [str(work / "feedback.jsonl")]}, "train": train},
                                  "bench", base_dir=work)
    engine = open_store(settings.store_url)
    load_corpus(engine, work / "corpus.jsonl")
    ingest_once(engine, settings)
    os.environ["RAGLOOP_STAGE"] = "first index"
    t = time.monotonic()
    build_index(engine, settings)
    first_index_s = time.monotonic() - t
    stage_of = {"training": "mining", "gating": "gate", "promoting": "reindex"}

    def on_stage(text: str) -> None:  # the training child inherits "mining": its encodes are mining's
        os.environ["RAGLOOP_STAGE"] = next((v for k, v in stage_of.items() if text.startswith(k)), text)

    gate, said = cycle_mod.gate, []

    def promoting_gate(*args, **kwargs):  # the gate's work and word, then a promotion whatever it said
        d = gate(*args, **kwargs)
        said.append(d.outcome)
        d.outcome = "promote"
        return d

    cycle_mod.gate = promoting_gate
    report = run_cycle(engine, settings, kinds=("embedder",), on_stage=on_stage)
    seconds = defaultdict(float)
    for s in report.stages:
        seconds["reindex" if s["stage"] == "promote" else s["stage"]] += s["seconds"]
    (work / f"{variant}.json").write_text(json.dumps({"seconds": seconds, "first_index_s": first_index_s,
                                                      "outcome": said[0]}))


def _daemon_entry_points():
    """The entry points the worker drives, in the subpackage layout or, for a --before revision older than it,
    the flat one (one module per stage directly under daemon/)."""
    try:
        import daemon.service.cycle as cycle_mod
        from daemon.data import load_corpus
        from daemon.ingest import ingest_once
        from daemon.serve import build_index
        from daemon.store import open_store
    except ImportError:
        import daemon.cycle as cycle_mod
        from daemon.corpus import load_corpus
        from daemon.index import build_index
        from daemon.ingest import ingest_once
        from daemon.store import open_store
    return cycle_mod, load_corpus, ingest_once, build_index, cycle_mod.run_cycle, open_store


def run_variant(work: Path, variant: str, code_root: Path, steps: int) -> dict:
    counts = work / f"{variant}.encodes.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{code_root}{os.pathsep}{HOOK}", "RAGLOOP_COUNT_ENCODES": str(counts),
           "RAGLOOP_CORPUS_HASHES": str(work / "hashes.txt"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    vwork = work / variant
    vwork.mkdir()
    for f in ("corpus.jsonl", "feedback.jsonl"):
        (vwork / f).symlink_to(work / f)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(vwork), variant, str(steps)],
                   cwd=code_root, env=env, check=True, stdout=subprocess.DEVNULL)
    out = json.loads((vwork / f"{variant}.json").read_text())
    encoded = defaultdict(int)
    enc_s = defaultdict(float)
    for line in counts.read_text().splitlines() if counts.exists() else []:
        e = json.loads(line)
        encoded[e["stage"]] += e["chunks"]
        enc_s[e["stage"]] += e["seconds"] if e["chunks"] else 0.0
    out["encoded"], out["encode_s"] = dict(encoded), dict(enc_s)
    return out


def old_code(rev: str, into: Path) -> Path:
    """This repository's daemon package at ``rev``, extracted (no checkout is touched)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "daemon"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def throughput(work: Path, n: int = 2000) -> dict[str, float]:
    """chunks/s of bare model.encode, and of the multi-process pool at 1 and 2 processes (started beforehand)."""
    from daemon.models import encode_documents, encode_pool, load_embedder, packaged_minilm

    texts = [json.loads(line)["text"] for line in (work / "corpus.jsonl").read_text().splitlines()][:n]
    model = load_embedder(packaged_minilm(), "cpu")
    model.encode(texts[:64])  # warm-up
    out = {}
    t = time.monotonic()
    model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    out["bare"] = len(texts) / (time.monotonic() - t)
    for procs in (1, 2):
        t = time.monotonic()
        with encode_pool(model, ["cpu"] * procs, min_devices=1) as pool:
            out[f"pool{procs}_start_s"] = time.monotonic() - t
            encode_documents(model, texts[:64], 64, pool)  # warm-up in the workers
            t = time.monotonic()
            encode_documents(model, texts, 64, pool)
            out[f"pool{procs}"] = len(texts) / (time.monotonic() - t)
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1000, 5000, 20000])
    ap.add_argument("--before", default="0ca4a92^", help="the revision to compare with (git rev)")
    ap.add_argument("--steps", type=int, default=10, help="train.embedder.max_steps of every cycle")
    ap.add_argument("--variants", nargs="+", default=["before", "full", "adapter"])
    ap.add_argument("--worker", nargs=3, metavar=("DIR", "VARIANT", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(Path(args.worker[0]), args.worker[1], int(args.worker[2]))
    rows, last = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roots = {"before": old_code(args.before, Path(tempfile.mkdtemp(dir=tmp))), "full": REPO, "adapter": REPO}
        for size in args.sizes:
            work = tmp / f"n{size}"
            work.mkdir()
            n = write_inputs(work, size)
            for variant in args.variants:
                t = time.monotonic()
                r = run_variant(work, variant, roots[variant], args.steps)
                rows.append((n, variant, r, time.monotonic() - t))
                print_row(*rows[-1])
                cycle_encodes = sum(r["encoded"].get(s, 0) for s in STAGES) / n
                cycle_s = sum(r["seconds"].get(s, 0.0) for s in STAGES)
                last.update({f"{variant}_{n}_encodes": round(cycle_encodes, 2), f"{variant}_{n}_cycle_s": round(cycle_s, 1),
                             f"{variant}_{n}_reindex_s": round(r["seconds"].get("reindex", 0.0), 1)})
        tput = throughput(tmp / f"n{args.sizes[-1]}")
    print(f"\nencode throughput, {min(2000, args.sizes[-1])} chunks, chunks/s: bare model.encode {tput['bare']}; "
          f"pool of 1 process {tput['pool1']} (start {tput['pool1_start_s']} s); pool of 2 processes {tput['pool2']} "
          f"(start {tput['pool2_start_s']} s)")
    last.update({f"encode_{k}": v for k, v in tput.items()})
    print(" ".join(f"{k}={v}" for k, v in last.items()))


def print_row(n: int, variant: str, r: dict, wall: float) -> None:
    if not hasattr(print_row, "header"):
        print_row.header = True
        print(f"{'chunks':>7s} {'variant':8s} " + " ".join(f"{s + ' enc':>11s} {s + ' s':>10s}" for s in STAGES)
              + f" {'cycle enc':>9s} {'cycle s':>8s} {'gate said':>9s} {'first index s':>13s}")
    cells = " ".join(f"{r['encoded'].get(s, 0) / n:11.2f} {r['seconds'].get(s, 0.0):10.1f}" for s in STAGES)
    total = sum(r["encoded"].get(s, 0) for s in STAGES) / n
    print(f"{n:7d} {variant:8s} {cells} {total:9.2f} {sum(r['seconds'].get(s, 0.0) for s in STAGES):8.1f} "
          f"{r['outcome']:>9s} {r['first_index_s']:13.1f}", flush=True)


if __name__ == "__main__":
    main()
