"""Shared fixtures: real stores (SQLite always, PostgreSQL when RAGLOOP_TEST_PG_URL is set)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from daemon.config import Settings, settings_from_dict
from daemon.store import open_store

PG_URL = os.environ.get("RAGLOOP_TEST_PG_URL")
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def reset_postgres(url: str) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    eng.dispose()


_BACKENDS = ["sqlite"] + (["postgres"] if PG_URL else [])


@pytest.fixture(params=_BACKENDS)
def db_url(request, tmp_path) -> str:
    """A fresh, empty store URL: a SQLite file, or the PostgreSQL test database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'ragloop.db'}"
    reset_postgres(PG_URL)
    return PG_URL


def make_settings(tmp_path: Path, db_url: str, **sections) -> Settings:
    raw = {"state_dir": str(tmp_path / "state"), "store": {"url": db_url}, **sections}
    return settings_from_dict(raw, "test", base_dir=tmp_path)


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    return make_settings(tmp_path, db_url, ingest={"paths": [str(tmp_path / "logs" / "*.jsonl*")]})


@pytest.fixture
def engine(settings):
    eng = open_store(settings.store_url)
    yield eng
    eng.dispose()


def write_corpus(engine, ids) -> None:
    from daemon.corpus import upsert_chunks

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
