"""Pool `loop_quality.py --dump` files: what serves after the last wave against the script, on more questions.

    python -m bench.pool_halves bench/out/ex-usual.json bench/out/ex-swapped.json \\
                                bench/out/perl-usual.json bench/out/perl-swapped.json

One run scores a recipe on one half of a benchmark (142-231 unseen questions): a lead of one or two
questions is inside its noise. The same run with --swap-halves trains on the other half and scores on
this one, so a benchmark's two runs together score every one of its questions once, each by a model that
never saw it. Pooled per question, the paired difference (what serves - the script) is measured on 454
(examples), 295 (Perl FAQ) or 749 questions. Printed per file, per benchmark and over all files: the
paired difference (95% bootstrap interval, questions won/lost, two-sided sign-flip p; daemon.gate.significance), and
the questions that regressed or gained at hit@1 and hit@10 from wave 1 to the last wave.

Each file must be a distinct run: the same half twice would count its questions twice (refused).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.benchmarks import regressed_gained
from bench.loop_quality import print_paired, print_rows
from daemon.models import Scores


def read(path: Path) -> dict:
    """One dump, checked: the per-question lists it pairs must cover the same questions."""
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {path}: not a loop_quality --dump file ({exc})") from None
    missing = {"benchmark", "swap_halves", "queries", "serving_after_wave1", "serving_after_last",
               "script_after_last"} - set(d)
    if missing:
        raise SystemExit(f"error: {path}: not a loop_quality --dump file (no {', '.join(sorted(missing))})")
    n = len(d["queries"])
    for k in ("serving_after_wave1", "serving_after_last", "script_after_last"):
        if len(d[k]) != n:
            raise SystemExit(f"error: {path}: {k} has {len(d[k])} questions, queries {n}")
    return d


def report(label: str, dumps: list[dict]) -> None:
    serving = Scores([q for d in dumps for q in d["serving_after_last"]])
    script = Scores([q for d in dumps for q in d["script_after_last"]])
    print(f"\n{label}: {len(serving.per_query)} unseen questions")
    print_rows({"what serves after the last wave": serving.mean(), "one-shot script": script.mean()})
    print_paired(serving, script, "what serves - the script")
    first = [q for d in dumps for q in d["serving_after_wave1"]]
    for m in ("hit@1", "hit@10"):
        lost, won = regressed_gained(first, serving.per_query, m)
        print(f"  at {m}, answered after wave 1 but not after the last: {lost} regressed, {won} gained")
    twin_report(label, dumps)


def twin_report(label: str, dumps: list[dict]) -> None:
    """The other refit_from variant (loop_quality --twin-refit) against the refit that served, on the same
    promotion; and against the script where nothing changed what served after that promotion, so that the
    twin is what would have served at the end."""
    pairs = [(d, t) for d in dumps for t in d.get("twin_refits", [])[-1:]]
    if not pairs:
        return
    variants = {t["variant"] for _, t in pairs}
    if len(variants) > 1:
        raise SystemExit(f"error: {label}: twin refits of different variants ({', '.join(sorted(variants))}) "
                         "cannot pool")
    variant = variants.pop()
    twin = Scores([q for _, t in pairs for q in t["twin"]])
    served = Scores([q for _, t in pairs for q in t["served"]])
    cost = ", ".join(f"wave {t['wave']}: {t['seconds']:.0f} s vs {t['served_refit_s']:.0f} s" for _, t in pairs
                     if t.get("served_refit_s") is not None)
    print(f"  the refit from the {variant} (twin) of each run's last promotion; refit time with its check, twin vs "
          f"served: {cost}")
    print_paired(twin, served, "twin - the refit that served, at its promotion")
    if all(t["served"] == d["serving_after_last"] for d, t in pairs):
        print_paired(twin, Scores([q for d, _ in pairs for q in d["script_after_last"]]),
                     "twin - the script (what would have served at the end)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dumps", nargs="+", type=Path, help="files written by bench/loop_quality.py --dump")
    args = ap.parse_args()
    if len({p.resolve() for p in args.dumps}) < len(args.dumps):
        ap.error("a file is named twice: its questions would count twice")
    dumps = [read(p) for p in args.dumps]
    seen: dict[tuple[str, bool], Path] = {}
    for p, d in zip(args.dumps, dumps):
        key = (d["benchmark"], d["swap_halves"])
        if key in seen:  # compare runs, not question texts: a benchmark may ask the same text twice
            ap.error(f"{p} and {seen[key]} both score the {'swapped' if key[1] else 'usual'} unseen half of "
                     f"{key[0]}: its questions would count twice")
        seen[key] = p
    for p, d in zip(args.dumps, dumps):
        print(f"{p}: {d['benchmark']}, {'swapped' if d['swap_halves'] else 'usual'} halves, {d['waves']} wave(s), "
              f"{len(d['queries'])} unseen questions; serving after the last wave: {d['serving']}")
        report(f"  {p.name}", [d])
    by_bench: dict[str, list[dict]] = {}
    for d in dumps:
        by_bench.setdefault(d["benchmark"], []).append(d)
    if len(dumps) > 1:
        for name, ds in by_bench.items():
            if len(ds) > 1:
                report(f"{name}, both halves", ds)
        if len(by_bench) > 1:
            report("all files", dumps)


if __name__ == "__main__":
    main()
