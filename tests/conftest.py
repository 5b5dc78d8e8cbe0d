"""Shared fixtures: real stores (SQLite always, PostgreSQL when RAGLOOP_TEST_PG_URL is set)."""

from __future__ import annotations

import os

import pytest

from daemon.config import Settings
from daemon.store import open_store

from helpers import PG_URL, example_chunks, example_questions, make_settings, reset_postgres, small_feedback_store

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


_BACKENDS = ["sqlite"] + (["postgres"] if PG_URL else [])


@pytest.fixture(params=_BACKENDS)
def db_url(request, tmp_path) -> str:
    """A fresh, empty store URL: a SQLite file, or the PostgreSQL test database emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'ragloop.db'}"
    reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    return make_settings(tmp_path, db_url, ingest={"paths": [str(tmp_path / "logs" / "*.jsonl*")]})


@pytest.fixture
def engine(settings):
    eng = open_store(settings.store_url)
    yield eng
    eng.dispose()


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


@pytest.fixture
def ingested_settings(settings, engine, tmp_path):
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
