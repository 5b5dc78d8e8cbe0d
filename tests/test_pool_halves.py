"""bench/pool_halves.py: loop_quality dumps pooled per question, and the twin refit beside what served."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon.models import query_metrics

ROOT = Path(__file__).resolve().parents[1]
RIGHT, WRONG = query_metrics(["a", "x"], {"a"}), query_metrics(["x", "a"], {"a"})  # rank 1, rank 2


def dump(path: Path, benchmark: str, swap: bool, serving: list[dict], script: list[dict],
         twin: list[dict] | None = None) -> Path:
    n = len(serving)
    twins = [] if twin is None else [{"wave": 3, "variant": "candidate", "refit_of": 2, "outcome": "refit",
                                      "seconds": 200.0, "served_refit_s": 600.0, "twin": twin, "served": serving}]
    path.write_text(json.dumps({"benchmark": benchmark, "swap_halves": swap, "waves": 3, "serving": "v3",
                                "queries": [f"q{i}" for i in range(n)], "serving_after_wave1": [WRONG] * n,
                                "serving_after_last": serving, "script_after_last": script,
                                "twin_refits": twins}))
    return path


def pool(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.pool_halves", *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_pools_both_halves_per_question_with_the_twin(tmp_path):
    # usual half: serving right on 6 of 10, the script on 5; swapped half: 4 of 10 against 5
    a = dump(tmp_path / "a.json", "perlfaq", False, [RIGHT] * 6 + [WRONG] * 4, [RIGHT] * 5 + [WRONG] * 5,
             twin=[RIGHT] * 5 + [WRONG] * 5)
    b = dump(tmp_path / "b.json", "perlfaq", True, [RIGHT] * 4 + [WRONG] * 6, [WRONG] * 5 + [RIGHT] * 5,
             twin=[RIGHT] * 4 + [WRONG] * 6)
    out = pool(a, b)
    assert out.returncode == 0, out.stderr
    pooled = out.stdout.split("perlfaq, both halves: 20 unseen questions")[1]
    # serving - script at hit@1 over 20 questions: a +1, b: 4 won (q0-3), 5 lost (q5-9) -> (1 - 1) / 20
    hit1 = next(line for line in pooled.splitlines() if line.strip().startswith("hit@1"))
    assert "+0.000" in hit1 and "(5 won, 5 lost" in hit1
    assert "refit from the candidate (twin)" in pooled and "wave 3: 200 s vs 600 s" in pooled
    twin_vs_served = pooled.split("twin - the refit that served")[1].splitlines()[1]
    assert "-0.050" in twin_vs_served and "(0 won, 1 lost" in twin_vs_served  # one question lost of 20
    assert "twin - the script (what would have served at the end)" in pooled


def test_the_same_half_twice_is_refused(tmp_path):
    a = dump(tmp_path / "a.json", "examples", False, [RIGHT], [RIGHT])
    b = dump(tmp_path / "b.json", "examples", False, [RIGHT], [WRONG])
    out = pool(a, b)
    assert out.returncode != 0 and "would count twice" in out.stderr
