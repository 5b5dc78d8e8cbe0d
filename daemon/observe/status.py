"""What `ragloop status` shows: counts from the store, as a dict and as tables."""

from __future__ import annotations

import os
from pathlib import Path
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from daemon.models.registry import documents_version
from daemon.store.db import (HEARTBEAT, HOOK_RESULT, LAST_CYCLE, SCHEDULE, Chunk, EventCount, FeedbackLabel,
                             GateDecision,
                             IndexVersion, IngestCursor, ModelVersion, PendingPairs, Quarantine, TrainingPair,
                             decision_figures, get_state, utcnow)

WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}


def collect_status(engine: Engine, settings=None) -> dict[str, Any]:
    """All figures `ragloop status` prints, as one JSON-serializable dict."""
    ec, pr, q, ch, cu = (t.__table__ for t in (EventCount, TrainingPair, Quarantine, Chunk, IngestCursor))
    mv, iv = ModelVersion.__table__, IndexVersion.__table__
    now = utcnow()
    with engine.connect() as conn:
        kinds = dict(conn.execute(sa.select(ec.c.kind, sa.func.sum(ec.c.count)).group_by(ec.c.kind)).all())
        windows = {}
        for name, delta in WINDOWS.items():
            # Hour buckets: a window covers the hours that overlap it (up to one hour more than its name).
            since = (now - delta).strftime("%Y-%m-%d %H")
            rows = dict(conn.execute(
                sa.select(ec.c.kind, sa.func.sum(ec.c.count)).where(ec.c.hour >= since).group_by(ec.c.kind)
            ).all())
            misses = int(rows.get("miss", 0))
            n = misses + int(rows.get("hit", 0))
            windows[name] = {"events": n, "misses": misses, "miss_rate": round(misses / n, 4) if n else None}
        pairs: dict[str, dict[str, int]] = {}
        for split, origin, n in conn.execute(
            sa.select(pr.c.split, pr.c.origin, sa.func.count()).group_by(pr.c.split, pr.c.origin)
        ):
            pairs.setdefault(split, {})[origin] = n
        pp = PendingPairs.__table__
        pending_batches, pending_events = conn.execute(sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(pp.c.last_event_id - pp.c.first_event_id + 1), 0))).one()
        quarantined = conn.scalar(sa.select(sa.func.count()).where(q.c.resolved_at.is_(None)))
        resolved = conn.scalar(sa.select(sa.func.count()).where(q.c.resolved_at.is_not(None)))
        chunks_active = conn.scalar(sa.select(sa.func.count()).where(ch.c.removed_at.is_(None)))
        chunks_removed = conn.scalar(sa.select(sa.func.count()).where(ch.c.removed_at.is_not(None)))
        files = [_file_lag(r) for r in conn.execute(sa.select(cu).order_by(cu.c.updated_at.desc()).limit(20)).mappings()]
        serving_rows = conn.execute(sa.select(mv).where(mv.c.status == "serving")).mappings().all()
        gd = GateDecision.__table__
        decisions = [{"kind": r.kind, "candidate": r.candidate_version, "serving": r.serving_version,
                      "outcome": r.outcome, "reason": r.reason, "at": r.created_at.isoformat(),
                      "heldout": _before_after(r.figures)}
                     for r in conn.execute(sa.select(gd).order_by(gd.c.id.desc()).limit(4))]
        idx = conn.execute(sa.select(iv).where(iv.c.status == "serving")).mappings().first()
        lb = FeedbackLabel.__table__
        labels_waiting = conn.scalar(sa.select(sa.func.count()).where(lb.c.event_id.is_(None)))
        labels_joined = conn.scalar(sa.select(sa.func.count()).where(lb.c.event_id.is_not(None)))
    misses = int(kinds.get("miss", 0))
    events = misses + int(kinds.get("hit", 0))
    return {
        "config": getattr(settings, "source", None),
        "state_dir": str(settings.state_dir) if settings is not None else None,
        "events": events,  # labelled retrievals: hits and misses
        "misses": misses,
        "hits": events - misses,
        "miss_rate": round(misses / events, 4) if events else None,
        # retrievals logged without expected_ids whose label line has not been read (daemon/ingest/labels.py)
        "unlabeled": int(kinds.get("unlabeled", 0)),
        "labels": {"waiting": labels_waiting, "joined": labels_joined},
        "windows": windows,
        "pairs": pairs,
        # Events of committed batches whose pairs a reader still merges in memory (daemon/ingest/pending.py).
        "pairs_pending": {"batches": pending_batches, "events": int(pending_events)},
        "quarantine": {"unresolved": quarantined, "resolved": resolved},
        "chunks": {"active": chunks_active, "removed": chunks_removed},
        "files": files,
        "serving": {
            # "documents": the version whose document vectors the index holds for it (a query adapter's base)
            "models": {r["kind"]: {"version": r["version"], "path": r["path"], "documents": documents_version(dict(r))}
                       for r in serving_rows},
            "collection": idx["collection"] if idx else None,
            "indexed_chunks": idx["points"] if idx else None,
            "on_promote": get_state(engine, HOOK_RESULT),
        },
        "last_cycle": get_state(engine, LAST_CYCLE),
        "daemon": {"heartbeat": get_state(engine, HEARTBEAT), "schedule": get_state(engine, SCHEDULE)},
        "decisions": decisions,
        "synthesis": _synthesis(engine, settings),
        "disk_mb": disk_usage(settings) if settings is not None else None,
        "models": [dict(zip(["kind", "version", "status", "base", "heldout_hit@1", "heldout_hit@10", "heldout_mrr@10",
                             "created"], r)) for r in model_rows(engine)[:10]],
    }


def disk_usage(settings) -> dict[str, float]:
    """MB used under the state directory, by part (a SQLite store's file included; PostgreSQL's is not ours)."""
    state = settings.state_dir
    parts = {"models": settings.models_dir, "cache": state / "cache", "qdrant": settings.qdrant_path,
             "serving": state / "serving"}
    out = {name: _mb(path) for name, path in parts.items()}
    url = settings.store_url
    out["store"] = _mb(Path(url.removeprefix("sqlite:///"))) if url.startswith("sqlite:///") else 0.0
    out["total"] = _mb(state)
    return out


def _mb(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 2**20, 1)
    total = 0
    for f in path.rglob("*") if path.is_dir() else ():
        try:
            total += f.stat().st_size if f.is_file() else 0
        except OSError:  # deleted while walking (a cycle prunes as status reads)
            pass
    return round(total / 2**20, 1)


def _file_lag(row) -> dict[str, Any]:
    try:
        st = os.stat(row["path"])
        same = (st.st_dev, st.st_ino) == (row["dev"], row["inode"])
        lag = max(st.st_size - row["offset"], 0) if same and not row["path"].endswith(".gz") else None
    except OSError:
        lag = None  # rotated away or deleted
    return {"path": row["path"], "offset": row["offset"], "lines": row["line_no"], "lag_bytes": lag,
            "complete": row["complete"], "updated_at": row["updated_at"].isoformat()}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width table."""
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]])


def render_status(s: dict[str, Any]) -> str:
    rate = lambda r: "-" if r is None else f"{r:.1%}"  # noqa: E731
    out = [
        *([f"Config: {'none (the defaults)' if s['config'] == '<defaults>' else s['config']}    state: {s['state_dir']}",
           ""] if s.get("config") else []),
        _render_daemon(s["daemon"]),
        "",
        "Feedback",
        table(["window", "events", "misses", "miss rate"],
              [["all", s["events"], s["misses"], rate(s["miss_rate"])]]
              + [[k, w["events"], w["misses"], rate(w["miss_rate"])] for k, w in s["windows"].items()]),
        "",
        "Training pairs",
        table(["split", "failure", "hit", "synthetic", "total"],
              [[sp, o.get("failure", 0), o.get("hit", 0), o.get("synthetic", 0), sum(o.values())]
               for sp, o in sorted(s["pairs"].items())] or [["(none)", 0, 0, 0, 0]]),
        *([f"(+ the pairs of {s['pairs_pending']['events']} events of {s['pairs_pending']['batches']} batches, merged "
           "in memory by an ingest pass and written when it folds or ends)"] if s["pairs_pending"]["batches"] else []),
        "",
        f"Corpus: {s['chunks']['active']} chunks ({s['chunks']['removed']} removed)    "
        f"Quarantine: {s['quarantine']['unresolved']} unresolved, {s['quarantine']['resolved']} resolved",
        "",
        _render_serving(s["serving"]),
        "",
        _render_loop(s),
        "",
        _render_synthesis(s["synthesis"]),
        "",
        *(["Disk (MB): " + ", ".join(f"{k} {v:g}" for k, v in s["disk_mb"].items()), ""] if s.get("disk_mb") else []),
        "Log files",
        table(["path", "lines read", "lag bytes", "done"],
              [[f["path"], f["lines"], f["lag_bytes"], "yes" if f["complete"] else ""] for f in s["files"]])
        if s["files"] else "(no files read yet)",
    ]
    return "\n".join(out)


def _render_serving(sv: dict[str, Any]) -> str:
    models = sv["models"]
    emb, rr = models.get("embedder"), models.get("reranker")
    hook = sv["on_promote"]
    hook_line = "-" if hook is None else ("ok" if hook["ok"] else f"FAILED (exit {hook['returncode']}): {hook['stderr'][:80]}")
    return "\n".join([
        "Serving",
        table(["what", "value"], [
            ["alias -> collection", sv["collection"] or "(not indexed: run `ragloop index build`)"],
            ["indexed chunks", sv["indexed_chunks"]],
            ["embedder", (f"v{emb['version']}" + (f" (query adapter on v{emb['documents']}'s document vectors)"
                                                 if emb.get("documents", emb["version"]) != emb["version"] else "")
                          + f" {emb['path']}") if emb else None],
            ["reranker", f"v{rr['version']} {rr['path']}" if rr else "none"],
            ["last on_promote", f"{hook_line} at {hook['at']}" if hook else hook_line],
        ]),
    ])


def index_rows(engine: Engine) -> list[list[Any]]:
    iv = IndexVersion.__table__
    with engine.connect() as conn:
        rows = conn.execute(sa.select(iv).where(iv.c.status != "deleted").order_by(iv.c.version.desc())).mappings().all()
    return [[r["collection"], r["status"], f"v{r['embedder_version']}", r["points"], r["created_at"].strftime("%Y-%m-%d %H:%M"),
             r["swapped_at"].strftime("%Y-%m-%d %H:%M") if r["swapped_at"] else None] for r in rows]


def model_rows(engine: Engine) -> list[list[Any]]:
    mv = ModelVersion.__table__
    with engine.connect() as conn:
        rows = conn.execute(sa.select(mv).order_by(mv.c.kind, mv.c.version.desc())).mappings().all()
    out = []
    for r in rows:
        held = (r["metrics"] or {}).get("heldout", {})
        out.append([r["kind"], f"v{r['version']}", r["status"], _short(r["base"]), held.get("hit@1"), held.get("hit@10"),
                    held.get("mrr@10"), r["created_at"].strftime("%Y-%m-%d %H:%M")])
    return out


def _short(path: str | None) -> str | None:
    if path is None:
        return None
    return path if len(path) <= 24 else "..." + path[-21:]


def _render_daemon(d: dict[str, Any]) -> str:
    hb = d["heartbeat"]
    if hb is None:
        return "Daemon: never ran on this store (start it with `ragloop run`)"
    age = utcnow().timestamp() - hb["unix"]
    state = "stopped" if hb.get("stopped") else f"pid {hb['pid']}, {hb['stage']}"
    lines = [f"Daemon: {state}; last heartbeat {age:.0f}s ago"]
    if d["schedule"] and not hb.get("stopped"):
        lines.append(table(["job", "next run (UTC)"], [[k, (v or "-")[:19]] for k, v in sorted(d["schedule"].items())]))
    return "\n".join(lines)


def _before_after(figures: Any) -> dict[str, Any] | None:
    """Held-out figures of serving and candidate in a stored decision (JSON text on some backends)."""
    figures = decision_figures(figures)
    if "candidate" not in figures:
        return None
    pick = ("ndcg@10", "hit@1", "hit@10", "mrr@10", "queries")
    return {"serving": {m: figures["serving"]["heldout"].get(m) for m in pick},
            "candidate": {m: figures["candidate"]["heldout"].get(m) for m in pick},
            "p_value": figures.get("test", {}).get("p_value")}


def _render_before_after(h: dict[str, Any] | None) -> str:
    if not h:
        return "-"
    s, c = h["serving"], h["candidate"]
    ndcg = f"ndcg@10 {s['ndcg@10']:.3f}->{c['ndcg@10']:.3f}, " if s.get("ndcg@10") is not None else ""
    return (f"{ndcg}mrr@10 {s['mrr@10']:.3f}->{c['mrr@10']:.3f}, hit@1 {s['hit@1']:.3f}->{c['hit@1']:.3f}, "
            f"hit@10 {s['hit@10']:.3f}->{c['hit@10']:.3f} (n={s['queries']})")


def _render_loop(s: dict[str, Any]) -> str:
    c = s["last_cycle"]
    cycle = "never" if c is None else (
        f"{c['started_at'][:19]} ({c['duration_s']:.0f}s, {c['train_pairs']} train pairs)"
        + (f": skipped, {c['skipped']}" if c.get("skipped") else ""))
    lines = [f"Last cycle: {cycle}"]
    lines += [f"  {d['kind']}: {d['reason']}" for d in (c or {}).get("not_trained", [])]
    if c and c.get("heldout"):
        h = c["heldout"]
        lines.append(f"Held-out set: {h['heldout_queries']} of {h['queries']} real queries (share {h['share']:.2f}; "
                     "larger while traffic is small, see gate.heldout_target)"
                     + (f"; {h['pairs_retired']} pairs retired to train: the serving refit learned from them"
                        if h.get("pairs_retired") else ""))
    lines.append("Gate decisions (newest first)")
    lines.append(table(["kind", "candidate", "vs serving", "outcome", "held-out: serving -> candidate", "reason"],
                       [[d["kind"], f"v{d['candidate']}", "none" if d["serving"] is None else f"v{d['serving']}",
                         d["outcome"], _render_before_after(d.get("heldout")), d["reason"][:90]]
                        for d in s["decisions"]]) if s["decisions"] else "(none yet)")
    if s["models"]:
        lines += ["Models", table(["kind", "version", "status", "heldout hit@1", "hit@10", "mrr@10"],
                                  [[m["kind"], m["version"], m["status"], m["heldout_hit@1"], m["heldout_hit@10"],
                                    m["heldout_mrr@10"]] for m in s["models"]])]
    return "\n".join(lines)


def _synthesis(engine: Engine, settings) -> dict[str, Any] | None:
    if settings is None:
        return None
    from daemon.ingest.synth import synth_status

    return synth_status(engine, settings)


def _render_synthesis(sy: dict[str, Any] | None) -> str:
    if sy is None:
        return "Synthesis: -"
    state = "on" if sy["enabled"] else f"off ({sy['off_reason']})"
    rec = sy["records"]
    return "\n".join([f"Synthesis: {state}", table(
        ["chunks done", "empty", "failed calls", "synthetic pairs", "tokens today", "budget/day", "cost today", "cost total"],
        [[rec.get("done", 0), rec.get("empty", 0), rec.get("failed", 0), sy["synthetic_pairs"], sy["tokens_today"],
          sy["daily_token_budget"] or "none", f"${sy['cost_usd_today']:.4f}", f"${sy['cost_usd_total']:.4f}"]])])
