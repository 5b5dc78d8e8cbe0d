"""Helpers the tests share: stores, settings, example data and feedback lines (fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import sqlalchemy as sa

from daemon.config import Settings, settings_from_dict

PG_URL = os.environ.get("RAGLOOP_TEST_PG_URL")
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "bench" / "data" / "examples"


def reset_postgres(url: str) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    eng.dispose()


def make_settings(tmp_path: Path, db_url: str, **sections) -> Settings:
    raw = {"state_dir": str(tmp_path / "state"), "store": {"url": db_url}, **sections}
    return settings_from_dict(raw, "test", base_dir=tmp_path)


def ingest_config(tmp_path: Path, db_url: str, ingest: str) -> tuple[Path, Path]:
    """(config file, log folder) for a `ragloop ingest` subprocess; ``ingest`` is extra [ingest] TOML."""
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[store]\nurl = "{db_url}"\n'
                   f'[ingest]\npaths = ["{logs}/*.jsonl"]\n{ingest}\n[log]\nlevel = "warning"\n')
    return cfg, logs


def write_corpus(engine, ids) -> None:
    from daemon.data import upsert_chunks

    upsert_chunks(engine, [{"id": i, "text": f"text of {i}", "doc": None, "metadata": None} for i in ids],
                  mark_missing_removed=False)


def event_line(i: int, *, query: str | None = None, expected: str | None = None, hit: bool = False) -> str:
    """A valid v1 line; ``i`` makes it unique (request_id) and picks its chunk."""
    exp = expected or f"c{i % 50}"
    retrieved = [f"c{(i + k) % 50 + 50}" for k in range(10)]  # ids 50..99 are never expected
    if hit:
        retrieved[3] = exp
    return json.dumps({
        "ts": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:00:{i % 60:02d}Z",
        "query": query or f"question number {i % 300} about things",
        "expected_ids": [exp], "retrieved_ids": retrieved, "request_id": f"r{i}", "source": "test",
    })


def stored_request_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return [r for (r,) in conn.execute(sa.text("SELECT request_id FROM feedback_events ORDER BY id"))]


def example_chunks(n: int) -> list[dict]:
    """The first ``n`` real chunks of the examples corpus, in a fixed order."""
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    return rows[:n]


def example_questions() -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / "questions.jsonl").read_text().splitlines()]


def small_feedback_files(tmp_path: Path, n_questions: int = 30, distractors: int = 30) -> tuple[Path, list[str]]:
    """A small real corpus file (answers of ``n_questions`` example questions plus distractor chunks) and
    the feedback lines production would have logged for those questions."""
    chunks = {c["id"]: c for c in example_chunks(10_000)}
    questions = [q for q in example_questions() if len(q["expected_ids"]) == 1][:n_questions]
    ids = [q["expected_ids"][0] for q in questions]
    others = [cid for cid in chunks if cid not in ids][:distractors]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(chunks[c]) + "\n" for c in dict.fromkeys(ids + others)))
    lines = []
    for i, q in enumerate(questions):
        retrieved = others[i % 10 : i % 10 + 5] + ([q["expected_ids"][0]] if i % 2 else [])
        lines.append(json.dumps({"ts": f"2026-11-20T10:{i % 60:02d}:00Z", "query": q["query"],
                                 "expected_ids": q["expected_ids"], "retrieved_ids": retrieved}))
    return corpus, lines


def small_feedback_store(engine, settings, tmp_path, n_questions: int = 30, distractors: int = 30) -> None:
    """Load `small_feedback_files` into the store through the real corpus load and ingest."""
    from daemon.data import load_corpus
    from daemon.ingest import ingest_once

    corpus, lines = small_feedback_files(tmp_path, n_questions, distractors)
    load_corpus(engine, corpus, merge=True)
    log = tmp_path / "logs" / "feedback.jsonl"
    log.parent.mkdir(exist_ok=True)
    log.write_text("".join(line + "\n" for line in lines))
    settings.ingest.paths = [str(log)]
    ingest_once(engine, settings)
