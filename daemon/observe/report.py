"""`ragloop report`: one self-contained HTML page of retrieval quality over time, from the store.

Daily miss rate, held-out quality of every candidate against what served when it was gated (promotions
and refusals marked), the gate's decisions with their reasons, and the queries that still miss. Charts are
plotly figures; plotly.js is inlined once, so the page needs no server and no network.
"""

from __future__ import annotations

import html
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.store.db import EventCount, FeedbackEvent, GateDecision, decision_figures, primary_metric, utcnow

OUTCOME_STYLE = {"promote": ("#2ca02c", "star"), "forced": ("#17becf", "star"), "reject": ("#d62728", "x"),
                 "refuse": ("#000000", "square"), "undecided": ("#7f7f7f", "circle-open")}
METRICS = ("hit@1", "hit@10", "mrr@10")


def build_report(engine: Engine, *, top_misses: int = 25, miss_days: int = 30) -> str:
    """The page as one HTML string."""
    daily = daily_events(engine)
    decisions = gate_decisions(engine)
    misses = still_missing(engine, top_misses, miss_days)
    versions = by_serving_version(engine)
    charts = [miss_rate_chart(daily)] + ([version_chart(versions)] if versions else []) + [
        quality_chart(kind, ds) for kind, ds in _by_kind(decisions).items()]
    return _page(charts, decisions, misses, daily, miss_days)


# -- data ----------------------------------------------------------------------------------------

def daily_events(engine: Engine) -> list[dict[str, Any]]:
    """[{day, events, misses, miss_rate}] from the hourly counts, every day from the first to the last."""
    ec = EventCount.__table__
    days: dict[str, dict[str, int]] = defaultdict(lambda: {"miss": 0, "hit": 0})
    with engine.connect() as conn:
        for hour, kind, n in conn.execute(sa.select(ec.c.hour, ec.c.kind, ec.c.count)
                                          .where(ec.c.kind.in_(("miss", "hit")))):  # not the unlabeled
            days[hour[:10]][kind] += int(n)
    if days:
        first, last = (date.fromisoformat(d) for d in (min(days), max(days)))
        for i in range((last - first).days + 1):
            days[(first + timedelta(days=i)).isoformat()]  # a day without events shows as one
    return [{"day": d, "events": c["miss"] + c["hit"], "misses": c["miss"],
             "miss_rate": c["miss"] / (c["miss"] + c["hit"]) if c["miss"] + c["hit"] else None}
            for d, c in sorted(days.items())]


def by_serving_version(engine: Engine) -> list[dict[str, Any]]:
    """[{version, events, misses, miss_rate, low, high}] per ``serving_version`` that production logged with its
    retrievals (ragloop_client does), in the order the versions first served; 95% Wilson interval."""
    fe = FeedbackEvent.__table__
    version = fe.c.raw["serving_version"].as_string()
    q = (sa.select(version, fe.c.kind, sa.func.count(), sa.func.min(fe.c.id))
         .where(fe.c.kind.in_(("miss", "hit")), version.is_not(None)).group_by(version, fe.c.kind))
    acc: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for v, kind, n, first in conn.execute(q):
            a = acc.setdefault(v, {"miss": 0, "hit": 0, "first": first})
            a[kind] = int(n)
            a["first"] = min(a["first"], first)
    out = []
    for v, a in sorted(acc.items(), key=lambda kv: kv[1]["first"]):
        n = a["miss"] + a["hit"]
        low, high = wilson(a["miss"], n)
        out.append({"version": v, "events": n, "misses": a["miss"], "miss_rate": a["miss"] / n, "low": low, "high": high})
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def gate_decisions(engine: Engine) -> list[dict[str, Any]]:
    gd = GateDecision.__table__
    with engine.connect() as conn:
        rows = conn.execute(sa.select(gd).order_by(gd.c.id)).mappings().all()
    out = []
    for r in rows:
        f = decision_figures(r["figures"])
        out.append({"kind": r["kind"], "candidate": r["candidate_version"], "serving": r["serving_version"],
                    "outcome": r["outcome"], "reason": r["reason"], "at": r["created_at"],
                    "metric": primary_metric(f), "gain": f.get("gain"),
                    "p_value": (f.get("test") or {}).get("p_value"),
                    "cand": (f.get("candidate") or {}).get("heldout") or {},
                    "serv": (f.get("serving") or {}).get("heldout") or {}})
    return out


def still_missing(engine: Engine, limit: int, days: int) -> list[dict[str, Any]]:
    """Queries missed in the last ``days`` whose latest event is still a miss, most missed first."""
    fe = FeedbackEvent.__table__
    since = utcnow() - timedelta(days=days)
    recent = (sa.select(fe.c.query, sa.func.count().label("events"),
                        sa.func.sum(sa.case((fe.c.kind == "miss", 1), else_=0)).label("misses"),
                        sa.func.max(fe.c.id).label("last_id"), sa.func.max(fe.c.ts).label("last_ts"))
              .where(fe.c.ts >= since).group_by(fe.c.query).subquery())
    q = (sa.select(recent.c.query, recent.c.events, recent.c.misses, recent.c.last_ts)
         .join(fe, fe.c.id == recent.c.last_id).where(fe.c.kind == "miss")
         .order_by(recent.c.misses.desc(), recent.c.last_ts.desc()).limit(limit))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def _by_kind(decisions: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in decisions:
        if d["cand"]:
            out.setdefault(d["kind"], []).append(d)
    return out


# -- charts --------------------------------------------------------------------------------------

def miss_rate_chart(daily: list[dict[str, Any]]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    days = [d["day"] for d in daily]
    fig.add_trace(go.Bar(x=days, y=[d["events"] for d in daily], name="events", marker_color="#c7d7ea",
                         hovertemplate="%{x}: %{y} events<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=days, y=[d["miss_rate"] for d in daily], name="miss rate", mode="lines+markers",
                             line={"color": "#d62728"}, customdata=[d["misses"] for d in daily],
                             hovertemplate="%{x}: %{y:.1%} (%{customdata} misses)<extra></extra>"), secondary_y=True)
    fig.update_yaxes(title_text="events per day", rangemode="tozero", showgrid=False, secondary_y=False)
    fig.update_yaxes(title_text="miss rate", tickformat=".0%", rangemode="tozero", secondary_y=True)
    fig.update_xaxes(type="category")
    return _layout(fig, "Miss rate per day (UTC): share of logged retrievals whose answer was not in the top k")


def version_chart(versions: list[dict[str, Any]]):
    """Production's miss rate under each version that served, with its 95% interval."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(
        x=[v["version"] for v in versions], y=[v["miss_rate"] for v in versions], marker_color="#d62728",
        error_y={"type": "data", "symmetric": False, "array": [v["high"] - v["miss_rate"] for v in versions],
                 "arrayminus": [v["miss_rate"] - v["low"] for v in versions]},
        customdata=[[v["misses"], v["events"]] for v in versions],
        hovertemplate="%{x}: %{y:.1%} (%{customdata[0]} of %{customdata[1]} retrievals)<extra></extra>"))
    fig.update_yaxes(title_text="miss rate", tickformat=".0%", rangemode="tozero")
    fig.update_xaxes(type="category", title_text="serving version (collection / embedder / reranker)")
    return _layout(fig, "Miss rate under each version that served production (95% intervals), oldest first")


def quality_chart(kind: str, decisions: list[dict[str, Any]]):
    """Per gate decision: what served (line) and the candidate (markers shaped by the outcome)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[f"held-out {m}" for m in METRICS])
    labels = [f"v{d['candidate']} · {d['at']:%m-%d %H:%M}" for d in decisions]
    for col, m in enumerate(METRICS, start=1):
        fig.add_trace(go.Scatter(x=labels, y=[d["serv"].get(m) for d in decisions], mode="lines+markers",
                                 name="serving", line={"color": "#1f77b4"}, legendgroup="serving",
                                 showlegend=col == 1, hovertemplate="serving: %{y:.3f}<extra></extra>"), row=1, col=col)
        for outcome, (color, symbol) in OUTCOME_STYLE.items():
            ds = [(lab, d) for lab, d in zip(labels, decisions) if d["outcome"] == outcome]
            if not ds:
                continue
            fig.add_trace(go.Scatter(
                x=[lab for lab, _ in ds], y=[d["cand"].get(m) for _, d in ds], mode="markers", name=f"candidate: {outcome}",
                marker={"color": color, "symbol": symbol, "size": 11}, legendgroup=outcome, showlegend=col == 1,
                customdata=[d["reason"] for _, d in ds],
                hovertemplate="candidate %{x}: %{y:.3f}<br>%{customdata}<extra>" + outcome + "</extra>"), row=1, col=col)
        fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    return _layout(fig, f"{kind}: held-out quality of each candidate against what served when it was gated")


def _layout(fig, title: str):
    fig.update_layout(title={"text": title, "font": {"size": 15}}, height=380, margin={"l": 60, "r": 30, "t": 70, "b": 50},
                      template="plotly_white", legend={"orientation": "h", "y": -0.2})
    return fig


# -- page ----------------------------------------------------------------------------------------

def _page(charts, decisions, misses, daily, miss_days: int) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    e = html.escape
    total = sum(d["events"] for d in daily)
    missed = sum(d["misses"] for d in daily)
    promoted = sum(d["outcome"] in ("promote", "forced") for d in decisions)
    figs = "\n".join(f'<div class="chart">{pio.to_html(f, full_html=False, include_plotlyjs=False, div_id=f"chart-{i}")}</div>'
                     for i, f in enumerate(charts))
    rows = "".join(
        f"<tr class='{e(d['outcome'])}'><td>{d['at']:%Y-%m-%d %H:%M}</td><td>{e(d['kind'])}</td><td>v{d['candidate']}</td>"
        f"<td>{'-' if d['serving'] is None else 'v' + str(d['serving'])}</td><td><b>{e(d['outcome'])}</b></td>"
        f"<td>{_num(d['gain'], '+.4f')} {e(d['metric'])}</td><td>{_num(d['p_value'], '.3f')}</td><td>{e(d['reason'])}</td></tr>"
        for d in reversed(decisions)) or "<tr><td colspan=8>no gate decisions yet</td></tr>"
    miss_rows = "".join(f"<tr><td>{e(m['query'])}</td><td>{m['misses']}</td><td>{m['events']}</td>"
                        f"<td>{m['last_ts']:%Y-%m-%d %H:%M}</td></tr>" for m in misses) \
        or f"<tr><td colspan=4>no query missed in the last {miss_days} days is still missing</td></tr>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ragloop report</title>
<script>window.__errors = []; window.addEventListener("error", ev => {{
  window.__errors.push(String(ev.message)); document.documentElement.dataset.errors = window.__errors.length; }});</script>
<style>body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px}} .kpi{{display:flex;gap:28px}} .kpi div{{font-size:13px;color:#555}}
.kpi b{{display:block;font-size:20px;color:#222}} table{{border-collapse:collapse;width:100%;font-size:13px}}
td,th{{border-bottom:1px solid #e3e3e3;padding:4px 6px;text-align:left;vertical-align:top}}
tr.promote td:nth-child(5){{color:#2ca02c}} tr.reject td:nth-child(5),tr.refuse td:nth-child(5){{color:#d62728}}
.chart{{margin:8px 0 18px}} .note{{color:#666;font-size:12px}}</style>
<script>{get_plotlyjs()}</script></head>
<body data-charts="{len(charts)}">
<h1>ragloop report</h1><p class="note">generated {utcnow():%Y-%m-%d %H:%M} UTC from the store</p>
<div class="kpi"><div><b>{total:,}</b>events</div><div><b>{_num(missed / total if total else None, '.1%')}</b>miss rate</div>
<div><b>{len(decisions)}</b>gate decisions</div><div><b>{promoted}</b>promotions</div></div>
{figs}
<p class="note">Each decision is scored on the held-out queries of its day; the held-out set grows with traffic, so
figures of different days are not on the same queries. The gate's own comparison (candidate and serving on the same
queries) is what each pair of points shows.</p>
<h2>Gate decisions (newest first)</h2>
<table><tr><th>at (UTC)</th><th>kind</th><th>candidate</th><th>serving</th><th>outcome</th><th>gain</th><th>p</th><th>reason</th></tr>{rows}</table>
<h2>Queries that still miss (last {miss_days} days, most missed first)</h2>
<table><tr><th>query</th><th>misses</th><th>events</th><th>last seen (UTC)</th></tr>{miss_rows}</table>
<script>document.body.dataset.rendered = document.querySelectorAll(".chart .main-svg").length > 0 ? "yes" : "no";</script>
</body></html>
"""


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)
