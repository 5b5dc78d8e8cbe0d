"""Metrics: prometheus-client exposition, a real Prometheus scraping a real `ragloop run`, the alert rules
under promtool, and the Grafana dashboard against what the daemon serves."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from daemon.data import load_corpus
from daemon.ingest import ingest_once
from daemon.observe import Metrics, render_metrics

from helpers import small_feedback_files

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def need(tool: str) -> str:
    """Path of a Debian tool (`apt-get install prometheus`); CI installs it, so there a missing one fails."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip(f"{tool} not installed (apt-get install prometheus)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def served_names(text: str) -> set[str]:
    """Every metric name in an exposition: sample names, and families declared without samples yet."""
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples} | set(
        re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_exposition_parses_and_escapes_label_values(settings, engine, tmp_path):
    corpus, lines = small_feedback_files(tmp_path, n_questions=12)
    load_corpus(engine, corpus)
    log = tmp_path / 'odd "name" \\ here.jsonl'  # a label value that must be escaped
    bad = ["{not json", json.dumps({"query": "no ts"}), json.dumps({**json.loads(lines[0]), "expected_ids": ["nope"]})]
    log.write_text("".join(x + "\n" for x in lines + bad))
    settings.ingest.paths = [str(log)]
    ingest_once(engine, settings)
    with log.open("a") as fh:
        fh.write(lines[1] + "\n")  # written after the pass: lag

    got = samples(render_metrics(engine))
    assert got[("ragloop_events_total", (("kind", "hit"),))] + got[("ragloop_events_total", (("kind", "miss"),))] == 12
    assert got[("ragloop_ingest_lag_bytes", (("file", str(log)),))] == len(lines[1]) + 1
    by_reason = {dict(k[1])["reason"]: v for k, v in got.items() if k[0] == "ragloop_quarantined_lines_total"}
    assert by_reason == {"not_json": 1, "missing_field": 1, "unknown_ids": 1, "too_large": 0, "bad_value": 0,
                         "label_unmatched": 0}
    assert got[("ragloop_quarantined", ())] == 3

    m = Metrics(engine, settings)
    m.observe_cycle([{"stage": "gate", "kind": "embedder", "seconds": 42.0}])
    text = m.render().decode()
    full = samples(text)
    disk = {dict(k[1])["part"]: v for k, v in full.items() if k[0] == "ragloop_disk_bytes"}
    assert set(disk) == {"models", "cache", "qdrant", "serving", "store", "total"} and disk["total"] >= disk["store"]
    assert full[("ragloop_stage_duration_seconds_count", (("stage", "gate"),))] == 1
    assert full[("ragloop_stage_duration_seconds_sum", (("stage", "gate"),))] == 42.0
    assert full[("ragloop_stage_duration_seconds_count", (("stage", "reindex"),))] == 0  # exists before it runs
    assert full[("process_resident_memory_bytes", ())] > 0


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = need("promtool")
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=DEPLOY / "prometheus",
                           capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 7 rules found" in check.stdout, check.stdout + check.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus",
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    # every alert has a unit test that expects it to fire
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert fired == {r["alert"] for r in rules}


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(?:ragloop|process|python)_[a-z_]+\b", expr))
    return names | ({"up"} if re.search(r"\bup\{", expr) else set())


def test_dashboard_and_alerts_query_only_metrics_the_daemon_serves(settings, engine, tmp_path):
    corpus, lines = small_feedback_files(tmp_path, n_questions=5)
    load_corpus(engine, corpus)
    served = served_names(Metrics(engine).render().decode()) | {"up"}  # up: Prometheus' own series per target
    dash = json.loads((DEPLOY / "grafana" / "ragloop.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]] + [a["expr"] for a in dash["annotations"]["list"]]
    exprs.append(dash["templating"]["list"][0]["query"])
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs += [r["expr"] for r in rules]
    queried = set().union(*map(_metric_names, exprs))
    assert {"ragloop_miss_rate", "ragloop_stage_duration_seconds_bucket", "ragloop_serving_version",
            "process_resident_memory_bytes"} <= queried
    assert queried - served == set(), f"queried but never served: {sorted(queried - served)}"


@pytest.mark.slow
def test_a_real_prometheus_scrapes_a_running_daemon(tmp_path, db_url):
    prometheus = need("prometheus")
    corpus, lines = small_feedback_files(tmp_path, n_questions=20)
    bad = ["{not json", json.dumps({"query": "no ts"})]
    port, prom_port = free_port(), free_port()
    (tmp_path / "logs").mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
state_dir = "{tmp_path / 'state'}"
[log]
format = "json"
[store]
url = "{db_url}"
[ingest]
paths = ["{tmp_path / 'logs'}/*.jsonl"]
[schedule]
ingest_interval_s = 0.5
min_new_pairs = 100000
[service]
metrics_addr = "127.0.0.1:{port}"
heartbeat_interval_s = 1
[synth]
enabled = false
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert subprocess.run([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "corpus", "load", str(corpus)],
                          env=env, capture_output=True).returncode == 0
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", prom_dir / "alerts.yml")
    (prom_dir / "prometheus.yml").write_text(
        (DEPLOY / "prometheus" / "prometheus.yml").read_text()
        .replace("scrape_interval: 15s", "scrape_interval: 1s").replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("127.0.0.1:9464", f"127.0.0.1:{port}"))
    with (tmp_path / "daemon.log").open("w") as dlog, (tmp_path / "prometheus.log").open("w") as plog:
        daemon = subprocess.Popen([sys.executable, "-m", "daemon.cli", "-c", str(cfg), "run"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=dlog)
        prom = subprocess.Popen([prometheus, f"--config.file={prom_dir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=plog)

    def query(q: str) -> dict[tuple, float]:
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        body = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert body["status"] == "success", body
        return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("job", "instance"))): float(r["value"][1])
                for r in body["data"]["result"]}

    def until(q: str, ok, timeout: float = 90):
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                last = query(q)
                if ok(last):
                    return last
            except OSError:
                pass  # Prometheus still starting
            time.sleep(0.5)
        raise AssertionError(f"{q}: {last} after {timeout}s; daemon log:\n{(tmp_path / 'daemon.log').read_text()[-2000:]}")

    try:
        until('up{job="ragloop"}', lambda r: r and list(r.values()) == [1.0])
        (tmp_path / "logs" / "feedback.jsonl").write_text("".join(x + "\n" for x in lines + bad))
        events = until("ragloop_events_total", lambda r: sum(r.values()) == len(lines))
        expected_misses = sum(1 for x in lines if json.loads(x)["expected_ids"][0] not in json.loads(x)["retrieved_ids"])
        assert events[(("__name__", "ragloop_events_total"), ("kind", "miss"))] == expected_misses
        q = until("ragloop_quarantined_lines_total", lambda r: sum(r.values()) == 2)
        assert q[(("__name__", "ragloop_quarantined_lines_total"), ("reason", "not_json"))] == 1
        assert q[(("__name__", "ragloop_quarantined_lines_total"), ("reason", "missing_field"))] == 1
        rate = until('ragloop_miss_rate{window="all"}', bool)
        assert list(rate.values()) == [pytest.approx(expected_misses / len(lines), abs=1e-4)]
        lag = until("ragloop_ingest_lag_bytes", bool)
        assert list(lag.values()) == [0.0]
        assert sum(until('ragloop_stage_duration_seconds_count{stage="ingest"}', bool).values()) >= 1
        assert sum(until('ragloop_pairs{split="train"}', bool).values()) > 0
        assert list(until("process_resident_memory_bytes", bool).values())[0] > 50e6  # torch is loaded
        assert list(until("time() - ragloop_last_heartbeat_timestamp_seconds", bool).values())[0] < 30
        rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/rules", timeout=5).read())
        loaded = [r for g in rules["data"]["groups"] for r in g["rules"]]
        assert len(loaded) == 7 and all(r["health"] == "ok" for r in loaded), loaded
        firing = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{prom_port}/api/v1/alerts", timeout=5).read())
        assert [a for a in firing["data"]["alerts"] if a["labels"]["alertname"] in ("RagloopDown", "RagloopHeartbeatStale")] == []
    finally:
        for proc in (prom, daemon):
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert daemon.returncode == 0
