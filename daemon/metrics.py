"""Prometheus text-format metrics on an optional loopback HTTP endpoint (`service.metrics_addr`)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.status import collect_status
from daemon.store import COUNTERS, GateDecision, get_state

log = structlog.get_logger(__name__)


def render(engine: Engine) -> str:
    """All figures as Prometheus exposition text (version 0.0.4)."""
    s = collect_status(engine)
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], float | None]]) -> None:
        out.append(f"# HELP ragloop_{name} {help_}")
        out.append(f"# TYPE ragloop_{name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            lab = ",".join(f'{k}="{v}"' for k, v in labels.items())
            out.append(f"ragloop_{name}{{{lab}}} {float(value)}" if lab else f"ragloop_{name} {float(value)}")

    metric("events_total", "counter", "Feedback events ingested.", [({"kind": "miss"}, s["misses"]), ({"kind": "hit"}, s["hits"])])
    metric("miss_rate", "gauge", "Share of events that were misses, by window.",
           [({"window": "all"}, s["miss_rate"])] + [({"window": w}, v["miss_rate"]) for w, v in s["windows"].items()])
    metric("quarantined", "gauge", "Unresolved quarantined log lines.", [({}, s["quarantine"]["unresolved"])])
    metric("pairs", "gauge", "Training pairs by split and origin.",
           [({"split": sp, "origin": o}, n) for sp, d in s["pairs"].items() for o, n in d.items()])
    cycles = get_state(engine, COUNTERS) or {}
    metric("cycles_total", "counter", "Retrain cycles run by this store's daemon.", [({}, cycles.get("cycles", 0))])
    gd = GateDecision.__table__
    with engine.connect() as conn:
        decided = conn.execute(sa.select(gd.c.kind, gd.c.outcome, sa.func.count()).group_by(gd.c.kind, gd.c.outcome)).all()
    metric("gate_decisions_total", "counter", "Gate decisions by kind and outcome.",
           [({"kind": k, "outcome": o}, n) for k, o, n in decided])
    metric("serving_version", "gauge", "Serving model version by kind (absent: none).",
           [({"kind": k}, m["version"]) for k, m in s["serving"]["models"].items()])
    last = s["last_cycle"] or {}
    metric("last_cycle_duration_seconds", "gauge", "Duration of the last cycle.", [({}, last.get("duration_s"))])
    hb = s["daemon"]["heartbeat"] or {}  # already read by collect_status
    metric("last_heartbeat_timestamp_seconds", "gauge", "Unix time of the daemon's last heartbeat.", [({}, hb.get("unix"))])
    return "\n".join(out) + "\n"


def serve(engine: Engine, addr: str) -> ThreadingHTTPServer:
    """Start the endpoint on a thread; ``addr`` is "host:port" on loopback."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "try /metrics")
                return
            try:
                body = render(engine).encode()
            except Exception as exc:  # the store is busy or down: say so, never crash the daemon
                log.warning("metrics.error", error=str(exc))
                self.send_error(503, "store unavailable")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
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
