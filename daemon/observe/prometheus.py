"""Prometheus metrics on an optional loopback HTTP endpoint (`service.metrics_addr`), with prometheus-client.

Two kinds of series: figures read from the store at each scrape (events, miss rate, pairs, gate decisions,
serving versions, ingest lag...: true whichever ragloop process wrote them, `ragloop cycle` included), and
what this daemon process measures itself (stage-duration histograms, and the library's process metrics).
deploy/prometheus/alerts.yml and deploy/grafana/ragloop.json use these names; tests/test_prometheus.py checks
both against what is served.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from daemon.data.logline import UNKNOWN_ID
from daemon.observe.status import collect_status
from daemon.store.db import COUNTERS, GateDecision, Quarantine, decision_figures, get_state, primary_metric

log = structlog.get_logger(__name__)

STAGES = ("ingest", "mining", "training", "gate", "reindex", "promote", "cycle")
# Ingest passes take milliseconds to minutes, training and re-index minutes to hours.
BUCKETS = (0.05, 0.25, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, float("inf"))
# Quarantine reasons are sentences that name the line's values; these classes keep the label set small.
REASON_CLASSES = (("not_json", ("not valid JSON%", "expected a JSON object%")), ("too_large", ("line longer than%", "%over ingest.%")),
                  ("missing_field", ("missing field%",)), ("unknown_ids", (UNKNOWN_ID + "%",)),
                  ("label_unmatched", ("label for request_id%",)))


def reason_class():
    """SQL expression: the class of a quarantine row's reason ("bad_value" when no pattern matches)."""
    reason = Quarantine.__table__.c.reason
    return sa.case(*[(sa.or_(*[reason.like(p) for p in pats]), name) for name, pats in REASON_CLASSES],
                   else_="bad_value")


class StoreCollector(Collector):
    """Figures read from the store at scrape time."""

    def __init__(self, engine: Engine, settings=None):
        self.engine, self.settings = engine, settings

    def collect(self) -> Iterator[Any]:
        s = collect_status(self.engine, self.settings)
        events = CounterMetricFamily("ragloop_events", "Feedback events ingested.", labels=["kind"])
        events.add_metric(["miss"], s["misses"])
        events.add_metric(["hit"], s["hits"])
        yield events
        if s.get("disk_mb"):  # with the daemon's settings: its state directory, by part
            disk = GaugeMetricFamily("ragloop_disk_bytes", "Disk used under the state directory, by part.",
                                     labels=["part"])
            for part, mb in s["disk_mb"].items():
                disk.add_metric([part], mb * 2**20)
            yield disk
        yield GaugeMetricFamily("ragloop_unlabeled_events", "Retrievals logged without expected_ids whose label line "
                                "has not been read yet.", value=s["unlabeled"])
        yield GaugeMetricFamily("ragloop_labels_waiting", "Label lines read whose retrieval has not been read yet.",
                                value=s["labels"]["waiting"])
        yield CounterMetricFamily("ragloop_labels_joined", "Label lines that completed their retrieval.",
                                  value=s["labels"]["joined"])
        miss = GaugeMetricFamily("ragloop_miss_rate", "Share of events that were misses, by window.", labels=["window"])
        for window, rate in [("all", s["miss_rate"])] + [(w, v["miss_rate"]) for w, v in s["windows"].items()]:
            if rate is not None:
                miss.add_metric([window], rate)
        yield miss
        yield GaugeMetricFamily("ragloop_quarantined", "Unresolved quarantined log lines.", value=s["quarantine"]["unresolved"])
        yield self._quarantined_by_reason()
        pairs = GaugeMetricFamily("ragloop_pairs", "Training pairs by split and origin.", labels=["split", "origin"])
        for split, by_origin in s["pairs"].items():
            for origin, n in by_origin.items():
                pairs.add_metric([split, origin], n)
        yield pairs
        lag = GaugeMetricFamily("ragloop_ingest_lag_bytes", "Bytes of a log file not yet ingested.", labels=["file"])
        for f in s["files"]:
            if f["lag_bytes"] is not None:
                lag.add_metric([f["path"]], f["lag_bytes"])
        yield lag
        yield from self._cycles(s)
        yield from self._gate()
        serving = GaugeMetricFamily("ragloop_serving_version", "Serving model version by kind (absent: none).", labels=["kind"])
        for kind, m in s["serving"]["models"].items():
            serving.add_metric([kind], m["version"])
        yield serving
        hook = s["serving"]["on_promote"]
        hook_ok = GaugeMetricFamily("ragloop_on_promote_ok", "1 if the last serving.on_promote command succeeded, 0 if it failed.")
        if hook is not None:
            hook_ok.add_metric([], 1.0 if hook["ok"] else 0.0)
        yield hook_ok
        hb = s["daemon"]["heartbeat"] or {}
        heartbeat = GaugeMetricFamily("ragloop_last_heartbeat_timestamp_seconds", "Unix time of the daemon's last heartbeat.")
        if hb.get("unix") is not None:
            heartbeat.add_metric([], hb["unix"])
        yield heartbeat

    def _quarantined_by_reason(self) -> CounterMetricFamily:
        q = Quarantine.__table__
        cls = reason_class().label("cls")
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(cls, sa.func.count()).select_from(q).group_by(cls)).all()
        fam = CounterMetricFamily("ragloop_quarantined_lines", "Log lines ever quarantined, by reason class.",
                                  labels=["reason"])
        counts = dict(rows)
        for name in [c for c, _ in REASON_CLASSES] + ["bad_value"]:
            fam.add_metric([name], counts.get(name, 0))
        return fam

    def _cycles(self, s: dict[str, Any]) -> Iterator[Any]:
        cycles = get_state(self.engine, COUNTERS) or {}
        yield CounterMetricFamily("ragloop_cycles", "Retrain cycles run by this store's daemon.", value=cycles.get("cycles", 0))
        last = s["last_cycle"] or {}
        duration = GaugeMetricFamily("ragloop_last_cycle_duration_seconds", "Duration of the last cycle.")
        started = GaugeMetricFamily("ragloop_last_cycle_timestamp_seconds", "Unix time the last cycle started.")
        heldout = GaugeMetricFamily("ragloop_heldout_queries", "Real queries in the gate's held-out set at the last cycle.")
        waiting = GaugeMetricFamily("ragloop_heldout_queries_needed", "Held-out queries the last cycle lacked to judge "
                                    "a candidate (gate.min_heldout), so it trained none; 0: it did not wait.")
        if last:
            duration.add_metric([], last["duration_s"])
            started.add_metric([], datetime.fromisoformat(last["started_at"]).timestamp())
            waiting.add_metric([], last.get("waiting_for", 0))
            if last.get("heldout"):
                heldout.add_metric([], last["heldout"]["heldout_queries"])
        yield from (duration, started, heldout, waiting)

    def _gate(self) -> Iterator[Any]:
        gd = GateDecision.__table__
        with self.engine.connect() as conn:
            decided = conn.execute(sa.select(gd.c.kind, gd.c.outcome, sa.func.count()).group_by(gd.c.kind, gd.c.outcome)).all()
            recent = conn.execute(sa.select(gd.c.kind, gd.c.figures).order_by(gd.c.id.desc()).limit(50)).all()
        total = CounterMetricFamily("ragloop_gate_decisions", "Gate decisions by kind and outcome.", labels=["kind", "outcome"])
        for kind, outcome, n in decided:
            total.add_metric([kind, outcome], n)
        yield total
        gain = GaugeMetricFamily("ragloop_gate_last_gain", "Held-out gain of the last scored gate decision on its "
                                 "primary metric, by kind.", labels=["kind", "metric"])
        seen: set[str] = set()
        for kind, figures in recent:  # newest first; a refusal has no gain: the decision before it counts
            figures = decision_figures(figures)
            if kind not in seen and figures.get("gain") is not None:
                seen.add(kind)
                gain.add_metric([kind, primary_metric(figures)], figures["gain"])
        yield gain


class Metrics:
    """The daemon's registry: the store's figures, this process's stage timings, and process metrics."""

    def __init__(self, engine: Engine, settings=None):
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(engine, settings))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.stage_seconds = Histogram("ragloop_stage_duration_seconds", "Wall time of a pipeline stage in this daemon.",
                                       ["stage"], buckets=BUCKETS, registry=self.registry)
        for stage in STAGES:  # every series exists from the start, at 0, so rate() and alerts see them
            self.stage_seconds.labels(stage=stage)

    def observe(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage=stage).observe(seconds)

    def observe_cycle(self, stages: list[dict[str, Any]]) -> None:
        """A cycle's stage timings (CycleReport.stages)."""
        for s in stages:
            self.observe(s["stage"], s["seconds"])

    def render(self) -> bytes:
        return generate_latest(self.registry)


def render_metrics(engine: Engine) -> str:
    """The store's figures as exposition text (no process or stage series)."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(engine))
    return generate_latest(registry).decode()


def serve_metrics(metrics: Metrics, addr: str) -> ThreadingHTTPServer:
    """Serve ``metrics`` at http://``addr``/metrics on a thread; ``addr`` is "host:port" on loopback."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "try /metrics")
                return
            try:
                body = metrics.render()
            except Exception as exc:  # the store is busy or down: say so, never crash the daemon
                log.warning("metrics.error", error=str(exc))
                self.send_error(503, "store unavailable")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # requests are not worth a log line each
            pass

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="ragloop-metrics", daemon=True).start()
    log.info("metrics.listening", addr=f"http://{addr}/metrics")
    return server
