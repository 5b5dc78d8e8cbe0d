"""Observe: `ragloop status`, `ragloop report` and the Prometheus exporter, all read from the store."""

from daemon.observe.prometheus import Metrics, render_metrics, serve_metrics
from daemon.observe.report import build_report, by_serving_version, still_missing, wilson
from daemon.observe.status import collect_status, index_rows, model_rows, render_status, table

__all__ = ["collect_status", "render_status", "table", "index_rows", "model_rows", "build_report", "by_serving_version", "still_missing", "wilson",
           "Metrics", "render_metrics", "serve_metrics"]
