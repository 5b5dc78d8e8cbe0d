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


def ingest_config(tmp_path: Path, db_url: str, ingest: str) -> tuple[Path, Path]:
    """(config file, log folder) for a `ragloop ingest` subprocess; ``ingest`` is extra [ingest] TOML."""
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[store]\nurl = "{db_url}"\n'
                   f'[ingest]\npaths = ["{logs}/*.jsonl"]\n{ingest}\n[log]\nlevel = "warning"\n')
    return cfg, logs


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


def example_chunks(n: int) -> list[dict]:
    """The first ``n`` real chunks of the examples corpus, in a fixed order."""
    rows = [json.loads(line) for line in (EXAMPLES / "corpus.jsonl").read_text().splitlines()]
    return rows[:n]


def example_questions() -> list[dict]:
    return [json.loads(line) for line in (EXAMPLES / "questions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def minilm():
    from daemon.models import load_embedder, packaged_minilm

    return load_embedder(packaged_minilm(), "cpu")


@pytest.fixture(scope="session")
def finetuned_minilm(tmp_path_factory) -> str:
    """The packaged MiniLM after a real 2-step fine-tune on example question->answer pairs."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from daemon.models import load_embedder, packaged_minilm

    chunks = {c["id"]: c["text"] for c in example_chunks(10_000)}
    pairs = [(q["query"], chunks[q["expected_ids"][0]]) for q in example_questions()[:16]]
    out = tmp_path_factory.mktemp("finetuned")
    model = load_embedder(packaged_minilm(), "cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=8, learning_rate=1e-4, seed=1,
        report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    ds = Dataset.from_dict({"anchor": [p[0] for p in pairs], "positive": [p[1] for p in pairs]})
    SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                               loss=MultipleNegativesRankingLoss(model)).train()
    model.save_pretrained(str(out / "model"))
    return str(out / "model")


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
    from daemon.corpus import load_corpus
    from daemon.ingest import ingest_once

    corpus, lines = small_feedback_files(tmp_path, n_questions, distractors)
    load_corpus(engine, corpus, merge=True)
    log = tmp_path / "logs" / "feedback.jsonl"
    log.parent.mkdir(exist_ok=True)
    log.write_text("".join(line + "\n" for line in lines))
    settings.ingest.paths = [str(log)]
    ingest_once(engine, settings)


@pytest.fixture
def store(settings, engine, tmp_path):
    """Settings of a small real store (60 example questions ingested), with 2-step training jobs."""
    settings.gate.min_heldout = 3
    settings.train.device = "cpu"
    for kind in ("embedder", "reranker"):
        getattr(settings.train, kind).max_steps = 2
        getattr(settings.train, kind).batch_size = 4
    small_feedback_store(engine, settings, tmp_path, n_questions=60)
    return settings


@pytest.fixture(scope="session")
def damaged_minilm(tmp_path_factory) -> str:
    """MiniLM with heavy noise added to every weight: a deliberately broken embedder."""
    import torch

    from daemon.models import load_embedder, packaged_minilm

    model = load_embedder(packaged_minilm(), "cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (p.std() if p.numel() > 1 else 1.0) * 2)
    out = tmp_path_factory.mktemp("damaged") / "model"
    model.save_pretrained(str(out))
    return str(out)
