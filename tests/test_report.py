"""`ragloop report`: the page from a real store, rendered by a real headless Chromium."""

import os
import re
import shutil
import struct
import subprocess
import zlib

import pytest
import sqlalchemy as sa

from daemon.gate import gate
from daemon.models import registry
from daemon.observe import build_report, render_metrics, still_missing


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def _decisions(engine, settings, damaged: str) -> None:
    """Two real gate decisions: a damaged embedder (rejected) and one trained on held-out queries (refused)."""
    gate(engine, settings, "embedder", registry.register(engine, "embedder", damaged, base="embedder v0"))
    with engine.connect() as conn:
        heldout = [i for (i,) in conn.execute(sa.text("SELECT id FROM training_pairs WHERE split = 'heldout'"))]
    leaky = registry.register(engine, "embedder", damaged, base="outside", lineage={"pair_ids": heldout[:3], "pairs": 3})
    gate(engine, settings, "embedder", leaky)


def test_report_from_a_real_store_has_every_section(ingested_settings, engine, damaged_minilm):
    _decisions(engine, ingested_settings, damaged_minilm)
    page = build_report(engine)
    assert page.count('class="chart"') == 2  # miss rate, embedder quality
    assert "reject" in page and "refuse" in page and "(leak)" in page
    missing = still_missing(engine, 1000, 36500)
    with engine.connect() as conn:
        last_kind = dict(conn.execute(sa.text("SELECT query, kind FROM feedback_events ORDER BY id")).all())
    assert {m["query"] for m in missing} == {q for q, k in last_kind.items() if k == "miss"}
    assert all(m["misses"] >= 1 for m in missing)
    # the daemon's gauge of the last scored decision: the rejection (the refusal after it has no gain)
    gain = re.search(r'^ragloop_gate_last_gain\{kind="embedder",metric="ndcg@10"\} (\S+)$', render_metrics(engine), re.M)
    assert gain and float(gain.group(1)) < -0.3


def _png_size_and_colors(png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the pixel data): enough to tell a drawn page from a blank one."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    chunks, pos = [], 8
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            chunks.append(png[pos + 8:pos + 8 + n])
        pos += 12 + n
    return width, height, len(set(zlib.decompress(b"".join(chunks))))


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_errors(ingested_settings, engine, damaged_minilm, tmp_path):
    browser = chromium()
    _decisions(engine, ingested_settings, damaged_minilm)
    out = tmp_path / "report.html"
    out.write_text(build_report(engine), encoding="utf-8")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2200",
             "--virtual-time-budget=10000", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-rendered="yes"' in body and 'data-charts="2"' in body, body
    assert "data-errors" not in dom.stdout.split("<body")[0], "the page raised a script error"
    assert dom.stdout.count('class="main-svg"') >= 2 * 2  # plotly drew each chart (two svg layers per chart)
    assert "Uncaught" not in dom.stderr, [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    shot = subprocess.run([*flags, f"--screenshot={tmp_path / 'report.png'}", out.as_uri()], capture_output=True,
                          text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    width, height, colors = _png_size_and_colors((tmp_path / "report.png").read_bytes())
    assert (width, height) == (1280, 2200) and colors > 50  # a drawn page, not a blank one


def test_report_command_writes_the_page_and_says_what_to_fix_on_a_bad_path(tmp_path, capsys):
    from daemon.cli import main

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    assert main(["-c", str(cfg), "report", "-o", str(tmp_path / "r.html")]) == 0
    assert "ragloop report" in (tmp_path / "r.html").read_text() and "self-contained" in capsys.readouterr().out
    assert main(["-c", str(cfg), "report", "-o", str(tmp_path / "missing" / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "cannot write the report to" in err and "pass -o with a writable path" in err


def test_miss_rate_by_serving_version_reads_what_the_client_logged(settings, engine, tmp_path):
    """ragloop_client logs the version that answered each retrieval: the report splits production's misses by it."""
    import json

    from daemon.ingest import ingest_once
    from daemon.observe import by_serving_version

    from helpers import write_corpus

    write_corpus(engine, ["c1", "c2"])
    lines = []
    for i in range(40):  # v1 misses 3 of 4, v2 1 of 4; one line without a version (not a client's)
        version = "chunks__v1/e0/r0" if i < 20 else "chunks__v2/e1/r0"
        hit = i % 4 == 0 if i < 20 else i % 4 != 0
        lines.append({"ts": "2026-11-21T10:00:00Z", "query": f"q{i}", "expected_ids": ["c1"],
                      "retrieved_ids": ["c1" if hit else "c2"], "serving_version": version})
    lines.append({"ts": "2026-11-21T10:00:00Z", "query": "q", "expected_ids": ["c1"], "retrieved_ids": []})
    log = tmp_path / "f.jsonl"
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    settings.ingest.paths = [str(log)]
    ingest_once(engine, settings)
    got = by_serving_version(engine)
    assert [(v["version"], v["events"], v["misses"]) for v in got] == [("chunks__v1/e0/r0", 20, 15),
                                                                       ("chunks__v2/e1/r0", 20, 5)]
    assert got[0]["low"] < 0.75 < got[0]["high"] and got[1]["high"] < got[0]["low"]
    assert "Miss rate under each version that served" in build_report(engine)
