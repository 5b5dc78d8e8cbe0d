"""The two real FAQ benchmarks every quality figure is given on, and what the benchmarks share.

  examples  the Python, Debian, Zsh, Django, R and SQLite FAQs + the Python tutorial and pages of the
            Zsh, Django, R and SQLite manuals (bench/data/examples/, 1,821 chunks, 454 questions)
  perlfaq   the Perl FAQ + 17 core manual pages (bench/data/perlfaq/, 1,560 chunks, 295 questions)

Each has corpus.jsonl, questions.jsonl (a fixed "traffic"/"unseen" half per question) and
feedback.jsonl (production's log of the traffic half). Per-query scoring uses the gate's own code
(daemon.models: retrieval and metrics), and `one_shot_finetune` is the 30-line script a doubting user would write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.data import text_hash
from daemon.models import Corpus, corpus_embeddings, query_metrics, retrieve

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
DIRS = {"examples": DATA / "examples", "perlfaq": DATA / "perlfaq"}
CACHE = REPO / "bench" / ".cache"


@dataclass
class Benchmark:
    name: str
    dir: Path
    corpus: Corpus
    questions: list[dict]

    def half(self, name: str) -> list[dict]:
        return [q for q in self.questions if q["half"] == name]


def load(name: str) -> Benchmark:
    d = DIRS[name]
    rows = [json.loads(line) for line in (d / "corpus.jsonl").read_text().splitlines()]
    corpus = Corpus(rows=sorted((r["id"], r["text"], text_hash(r["text"])) for r in rows))
    questions = [json.loads(line) for line in (d / "questions.jsonl").read_text().splitlines()]
    return Benchmark(name, d, corpus, questions)


def first_cycle_store(bench: Benchmark, work: Path, train: dict | None = None):
    """(settings, engine, held-out split) of a store holding the benchmark's corpus and its whole production
    log, ingested and split by the gate's own rule, exactly as a first cycle sees it. ``train``: overrides of
    the settings' [train] table."""
    from daemon.config import settings_from_dict
    from daemon.data import load_corpus
    from daemon.gate import rebalance_heldout
    from daemon.ingest import ingest_once
    from daemon.store import open_store

    settings = settings_from_dict({"state_dir": str(work / "state"), "log": {"level": "warning"},
                                   "ingest": {"paths": [str(bench.dir / "feedback.jsonl")]}, "train": train or {}},
                                  "bench", work)
    engine = open_store(settings.store_url)
    load_corpus(engine, bench.dir / "corpus.jsonl")
    ingest_once(engine, settings)
    return settings, engine, rebalance_heldout(engine, settings)


def ranked(model, bench: Benchmark, questions: list[dict], key: str, depth: int = 20) -> list[list[str]]:
    """Each question's top ``depth`` chunk ids by ``model`` (corpus vectors cached under ``key``)."""
    emb = corpus_embeddings(model, bench.corpus, CACHE / "embeddings" / bench.name, key)
    return retrieve(model, bench.corpus, emb, [q["query"] for q in questions], depth)


def per_query(ranking: list[list[str]], questions: list[dict]) -> list[dict[str, float]]:
    """The gate's six metrics per question for a ranking."""
    return [query_metrics(r, set(q["expected_ids"])) for r, q in zip(ranking, questions)]


def top_wrong(ranking: list[list[str]], questions: list[dict]) -> list[str]:
    """Each question's top-ranked chunk that is not one of its answers (production's wrong result)."""
    return [next(c for c in r if c not in set(q["expected_ids"])) for r, q in zip(ranking, questions)]


def one_shot_finetune(base: str, rows: list[tuple[str, str, str]], out: Path, *, epochs: float = 3, lr: float = 2e-5,
                      batch: int = 16, seed: int = 42) -> Path:
    """The script a user writes: MNRL on (question, answer chunk, production's wrong chunk) rows."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # the model card's "Computing widget examples" bar, in bench output
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                          SentenceTransformerTrainingArguments)
    from transformers.trainer_callback import PrinterCallback

    model = SentenceTransformer(base, device="cpu" if not _cuda() else "cuda")
    ds = Dataset.from_dict({"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows],
                            "negative": [r[2] for r in rows]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "run"), num_train_epochs=epochs, learning_rate=lr, per_device_train_batch_size=batch,
        warmup_steps=0.1, seed=seed, data_seed=seed, batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no",
        report_to="none", disable_tqdm=True, logging_strategy="no", dataloader_pin_memory=_cuda())
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=MultipleNegativesRankingLoss(model))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.save_pretrained(str(out / "model"), safe_serialization=True)
    return out / "model"


def script_rows(bench: Benchmark, questions: list[dict], wrong: list[str], rng: np.random.Generator | None = None
                ) -> list[tuple[str, str, str]]:
    """One row per (question, answer chunk). With ``rng``: positives shuffled across questions (a broken label
    pipeline), the degraded candidate of the gate benchmark."""
    positives = [q["expected_ids"] for q in questions]
    if rng is not None:
        positives = [positives[i] for i in rng.permutation(len(positives))]
    text = bench.corpus.text_of
    return [(q["query"], text[p], text[w]) for q, ps, w in zip(questions, positives, wrong) for p in ps]


def regressed_gained(first: list[dict], last: list[dict], metric: str) -> tuple[int, int]:
    """(questions answered at ``metric`` in ``first`` but not in ``last``, and the reverse): per-question
    scores of the same questions at two times."""
    lost = sum(1 for a, b in zip(first, last, strict=True) if a[metric] and not b[metric])
    won = sum(1 for a, b in zip(first, last, strict=True) if b[metric] and not a[metric])
    return lost, won


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
