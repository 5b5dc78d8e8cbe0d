"""Synthesize: ask Claude for questions each chunk answers, to train on what users will ask next.

Uses the official `anthropic` SDK (Messages API) with its own retries and backoff on 429, 5xx and
timeouts. Which chunks: those without questions for their current text (a changed chunk is asked
again, an unchanged one never twice), the chunks behind recent misses first. Spending is bounded per run
and per UTC day in tokens; a run stops cleanly at the budget and the next one resumes. Every call's
tokens and estimated cost are recorded. The API key comes from $ANTHROPIC_API_KEY only and is never
logged; without it synthesis is off.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.data.pairs import PairBatch, QueryKeys, normalize_query, split_key
from daemon.journal import Progress
from daemon.store.db import Chunk, SynthRecord, TrainingPair, utcnow, write_tx

log = structlog.get_logger(__name__)
chunks_t, records_t, pairs_t = Chunk.__table__, SynthRecord.__table__, TrainingPair.__table__
_ITEM = re.compile(r"^\s*(?:\(?\d{1,2}[.):]|[-*•]|Q\d*[.:])\s*(.+?)\s*$")


@dataclass
class SynthReport:
    chunks: int = 0
    done: int = 0
    empty: int = 0
    failed: int = 0
    questions: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    stopped: str | None = None  # why the run ended early (budget), if it did

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "cost_usd": round(self.cost_usd, 6)}


def api_key() -> str | None:
    return os.environ.get("ANTHROPIC_API_KEY") or None


def disabled_reason(settings: Settings) -> str | None:
    """Why synthesis cannot run, or None when it can."""
    if not settings.synth.enabled:
        return "synth.enabled = false"
    if api_key() is None:
        return "ANTHROPIC_API_KEY is not set in the environment"
    return None


def parse_questions(text: str, chunk_text: str, max_questions: int) -> list[str]:
    """Questions from a model's answer: a numbered or bulleted list, or one question per line.

    Empty lines, duplicates (after normalization), and questions that copy the chunk are dropped.
    """
    chunk_norm = normalize_query(chunk_text)
    out, seen = [], set()
    for line in text.splitlines():
        m = _ITEM.match(line)
        q = (m.group(1) if m else line).strip().strip('"').strip()
        if not q or (not m and not q.endswith("?")):
            continue
        qn = normalize_query(q)
        if len(qn.split()) < 3 or qn in seen or qn in chunk_norm:
            continue
        seen.add(qn)
        out.append(q)
        if len(out) == max_questions:
            break
    return out


def pending_chunks(engine: Engine, settings: Settings, limit: int) -> list[dict[str, Any]]:
    """Chunks without questions for their current text, behind recent misses first."""
    s = settings.synth
    with engine.connect() as conn:
        settled = {(r.chunk_id, r.text_hash) for r in conn.execute(
            sa.select(records_t.c.chunk_id, records_t.c.text_hash).where(records_t.c.status.in_(("done", "empty"))))}
        attempts: dict[tuple[str, str], int] = {}
        for r in conn.execute(sa.select(records_t.c.chunk_id, records_t.c.text_hash).where(records_t.c.status == "failed")):
            attempts[(r.chunk_id, r.text_hash)] = attempts.get((r.chunk_id, r.text_hash), 0) + 1
        missed = {cid: i for i, (cid,) in enumerate(conn.execute(
            sa.select(pairs_t.c.chunk_id).where(pairs_t.c.miss_count > 0, pairs_t.c.origin != "synthetic")
            .order_by(pairs_t.c.last_seen.desc())))}
        rows = conn.execute(sa.select(chunks_t.c.id, chunks_t.c.text, chunks_t.c.text_hash)
                            .where(chunks_t.c.removed_at.is_(None)).order_by(chunks_t.c.id)).mappings().all()
    todo = [dict(r) for r in rows if (r["id"], r["text_hash"]) not in settled
            and attempts.get((r["id"], r["text_hash"]), 0) < s.max_attempts]
    todo.sort(key=lambda r: (missed.get(r["id"], len(missed)), r["id"]))
    return todo[:limit]


def _usage(conn: sa.Connection, today_only: bool) -> tuple[int, float]:
    """(tokens, estimated USD) recorded in total, or since 00:00 UTC today."""
    r = records_t
    q = sa.select(sa.func.coalesce(sa.func.sum(r.c.input_tokens + r.c.output_tokens), 0),
                  sa.func.coalesce(sa.func.sum(r.c.cost_usd), 0.0))
    if today_only:
        q = q.where(r.c.created_at >= datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0))
    tokens, cost = conn.execute(q).one()
    return int(tokens), float(cost)


def tokens_today(engine: Engine) -> int:
    with engine.connect() as conn:
        return _usage(conn, today_only=True)[0]


class _Budget:
    """Thread-safe token accounting against the run and daily budgets."""

    def __init__(self, run: int, daily: int, used_today: int):
        self.run, self.daily, self.used_today = run, daily, used_today
        self.used = 0
        self.lock = threading.Lock()

    def exhausted(self) -> str | None:
        with self.lock:
            if self.run and self.used >= self.run:
                return f"synth.run_token_budget={self.run} reached"
            if self.daily and self.used_today + self.used >= self.daily:
                return f"synth.daily_token_budget={self.daily} reached"
        return None

    def spend(self, tokens: int) -> None:
        with self.lock:
            self.used += tokens


def run_synthesis(engine: Engine, settings: Settings, limit: int | None = None, client=None) -> SynthReport:
    """Ask for questions for up to ``limit`` pending chunks and store them as synthetic pairs."""
    s = settings.synth
    report = SynthReport()
    why = disabled_reason(settings) if client is None else None
    if why:
        report.stopped = f"off: {why}"
        return report
    client = client or make_client(settings)
    todo = pending_chunks(engine, settings, limit or s.batch_chunks)
    report.chunks = len(todo)
    budget = _Budget(s.run_token_budget, s.daily_token_budget, tokens_today(engine))
    prog = Progress("synth.progress", len(todo), unit="chunks", every_s=30.0)
    keys = QueryKeys(settings.gate.ingest_fraction())
    keys.heldout = heldout_split_keys(engine)
    with ThreadPoolExecutor(max_workers=s.concurrency, thread_name_prefix="ragloop-synth") as pool:
        futures = {}
        for chunk in todo:  # keep at most `concurrency` calls in flight, checking the budget before each
            report.stopped = budget.exhausted()
            if report.stopped is not None:
                break
            futures[pool.submit(_one, client, settings, chunk)] = chunk
            if len(futures) >= s.concurrency:
                _collect(engine, settings, futures, report, budget, keys, prog, wait_all=False)
        _collect(engine, settings, futures, report, budget, keys, prog, wait_all=True)
    if report.stopped:
        log.info("synth.budget_reached", reason=report.stopped, left=report.chunks - report.done - report.empty - report.failed)
    prog.finish(**{k: v for k, v in report.as_dict().items() if k in ("done", "failed", "questions")})
    log.info("synth.run", model=s.model, **report.as_dict())
    return report


def _collect(engine, settings, futures, report, budget, keys, prog, wait_all: bool) -> None:
    for fut in as_completed(list(futures)):
        chunk = futures.pop(fut)
        result = fut.result()
        budget.spend(result["input_tokens"] + result["output_tokens"])
        _store(engine, settings, chunk, result, keys)
        report.input_tokens += result["input_tokens"]
        report.output_tokens += result["output_tokens"]
        report.cost_usd += result["cost_usd"]
        report.questions += len(result["questions"])
        setattr(report, result["status"], getattr(report, result["status"]) + 1)
        prog.advance(1)
        if not wait_all:
            return


def make_client(settings: Settings):
    import anthropic

    s = settings.synth
    return anthropic.Anthropic(api_key=api_key(), base_url=s.base_url or None, timeout=s.timeout_s,
                               max_retries=s.max_retries)


def _one(client, settings: Settings, chunk: dict[str, Any]) -> dict[str, Any]:
    """One Messages API call for one chunk. Never raises: errors become a 'failed' result."""
    import anthropic

    s = settings.synth
    out = {"questions": [], "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "error": None}
    try:
        msg = client.messages.create(model=s.model, max_tokens=s.max_tokens, system=s.system_prompt,
                                     messages=[{"role": "user", "content": chunk["text"]}])
    except anthropic.APIError as exc:  # after the SDK's own retries with backoff
        return {**out, "status": "failed", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    usage = getattr(msg, "usage", None)
    out["input_tokens"] = int(getattr(usage, "input_tokens", 0) or 0)
    out["output_tokens"] = int(getattr(usage, "output_tokens", 0) or 0)
    out["cost_usd"] = (out["input_tokens"] * s.input_usd_per_mtok + out["output_tokens"] * s.output_usd_per_mtok) / 1e6
    text = "\n".join(getattr(b, "text", "") for b in (msg.content or []) if getattr(b, "type", "") == "text")
    out["questions"] = parse_questions(text, chunk["text"], s.max_questions)
    if len(out["questions"]) < s.min_questions:
        return {**out, "status": "empty", "error": f"no usable questions in the answer: {text[:120]!r}"}
    return {**out, "status": "done"}


def _store(engine: Engine, settings: Settings, chunk: dict[str, Any], result: dict[str, Any], keys: QueryKeys) -> None:
    """The record and its synthetic pairs, in one transaction."""
    now = utcnow()
    with write_tx(engine) as conn:
        conn.execute(records_t.insert().values(
            chunk_id=chunk["id"], text_hash=chunk["text_hash"], status=result["status"],
            questions=len(result["questions"]), model=settings.synth.model, input_tokens=result["input_tokens"],
            output_tokens=result["output_tokens"], cost_usd=result["cost_usd"], error=result["error"], created_at=now))
        # A question that matches a held-out real query would put it in training: the gate would
        # then (rightly) refuse every candidate as leaked. Such questions are dropped.
        questions = [q for q in result["questions"] if split_key(keys(q)[0]) not in keys.heldout]
        if questions:
            batch = PairBatch(keys)
            for q in questions:
                # Synthetic pairs train (and guard); they never enter the held-out set of real queries.
                batch.add_pair(q, chunk["id"], now, origin="synthetic", generator=settings.synth.model, split="train")
            batch.write(conn)
    if result["status"] == "failed":
        log.warning("synth.call_failed", chunk_id=chunk["id"], error=result["error"])


def heldout_split_keys(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {split_key(qn) for (qn,) in conn.execute(sa.select(pairs_t.c.query_norm).where(pairs_t.c.split == "heldout"))}


def synth_status(engine: Engine, settings: Settings) -> dict[str, Any]:
    """Figures for `ragloop status`: coverage, and tokens and cost today and in total."""
    r = records_t
    with engine.connect() as conn:
        by_status = dict(conn.execute(sa.select(r.c.status, sa.func.count()).group_by(r.c.status)).all())
        total, today = _usage(conn, today_only=False), _usage(conn, today_only=True)
        synthetic = conn.scalar(sa.select(sa.func.count()).where(pairs_t.c.origin == "synthetic"))
    return {"enabled": disabled_reason(settings) is None, "off_reason": disabled_reason(settings),
            "records": by_status, "synthetic_pairs": synthetic,
            "tokens_total": total[0], "cost_usd_total": round(total[1], 4),
            "tokens_today": today[0], "cost_usd_today": round(today[1], 4),
            "daily_token_budget": settings.synth.daily_token_budget}
