"""Validation inside a training job: queries carved from the train split (never held-out ones) that choose
what the job keeps.

The embedder job scores a fixed candidate pool after every epoch (early stopping) and at each weight
interpolation with the model it started from (WiSE-FT); the reranker job chooses its fusion weight on
the same kind of carve (daemon/train/child.py, choose_fusion). A query's place in the carve comes from a salted
hash of its split key, so it is stable across cycles and independent of the held-out split.
"""

from __future__ import annotations

import hashlib
from typing import Any

import structlog

from daemon.config import Settings
from daemon.data.pairs import normalize_query, split_key
from daemon.models.load import load_embedder
from daemon.train.dataset import TrainingData

log = structlog.get_logger(__name__)


def validation_position(query: str) -> float:
    """Where a query's split key hashes to in [0, 1) under a salt of its own: independent of the held-out
    split's hash, stable across runs, and the same for near-duplicate wordings."""
    key = split_key(normalize_query(query)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"validation").digest(), "big") / 2**64


def in_validation(query: str, origin: str, fraction: float) -> bool:
    """Whether a train pair belongs to the validation split: real queries only, by `validation_position`."""
    return origin != "synthetic" and validation_position(query) < fraction


def carve_validation(data: TrainingData, fraction: float) -> tuple[TrainingData, dict[str, set[str]]]:
    """Keep ``fraction`` of the real train queries out of training: (the rest, {query: its answer ids})."""
    validation: dict[str, set[str]] = {}
    keep = []
    for e in data.examples:
        if in_validation(e.query, e.origin, fraction):
            validation.setdefault(e.query, set()).add(e.positive_id)
        else:
            keep.append(e)
    counts = {o: sum(1 for e in keep if e.origin == o) for o in ("failure", "hit", "synthetic")}
    return TrainingData(keep, data.texts, counts), validation


def interpolate(model, other, alpha: float):
    """WiSE-FT: θ = α·θ_model + (1−α)·θ_other, in place on ``model`` (same architecture); returns it."""
    import torch

    theirs = other.state_dict()
    with torch.no_grad():
        for name, v in model.state_dict().items():
            if v.is_floating_point():
                v.mul_(alpha).add_(theirs[name].to(v.device, v.dtype), alpha=1 - alpha)
    return model


def embedder_validates(data: TrainingData, cfg) -> bool:
    """Whether the embedder job keeps validation queries out: only when there are enough of them to choose
    on; below `min_validation` carving would cost training data and decide nothing."""
    if cfg.validation_fraction <= 0 or (cfg.alphas == [1.0] and not cfg.early_stopping):
        return False
    n = len({e.query for e in data.examples if in_validation(e.query, e.origin, cfg.validation_fraction)})
    return n >= cfg.min_validation


class ValidationPool:
    """Validation queries and a fixed candidate pool to rank them in: the serving embedder's top `depth`
    chunks over the whole corpus for each query, plus every answer. A model is scored by encoding the
    pool only (a few hundred chunks, not the corpus): close to full retrieval for what the serving model
    already ranks high, and the same pool for every model compared, so the choice between them is fair."""

    def __init__(self, queries: list[str], relevant: list[set[str]], ids: list[str], texts: list[str], metric: str):
        self.queries, self.relevant, self.ids, self.texts, self.metric = queries, relevant, ids, texts, metric

    @classmethod
    def build(cls, serving, engine, settings: Settings, key: str, validation: dict[str, set[str]],
              depth: int = 30) -> "ValidationPool":
        from daemon.models.retrieval import retrieve
        from daemon.models.vectors import Corpus, cache_dir, corpus_embeddings

        corpus = Corpus(engine)
        emb = corpus_embeddings(serving, corpus, cache_dir(settings), key)
        queries = sorted(validation)
        ids = sorted({c for top in retrieve(serving, corpus, emb, queries, depth) for c in top}
                     | {c for q in queries for c in validation[q] if c in corpus.text_of})
        return cls(queries, [validation[q] for q in queries], ids, [corpus.text_of[c] for c in ids],
                   settings.gate.embedder_metric)

    def score(self, model) -> float:
        from daemon.models.encoding import encode_documents, encode_queries
        from daemon.models.metrics import score

        docs = encode_documents(model, self.texts)
        qs = encode_queries(model, self.queries)
        order = (-(qs @ docs.T)).argsort(axis=1)[:, :10]
        return score([[self.ids[j] for j in row] for row in order], self.relevant).mean()[self.metric]


def choose_alpha(model, start: str, pool: ValidationPool, alphas: list[float], trained_score: float,
                 settings: Settings, device: str) -> dict[str, Any]:
    """Interpolate the fine-tune with the model it started from at each alpha; keep the best on validation
    (ties go to the smaller alpha: closer to what serves). Leaves ``model`` at the chosen alpha."""
    import torch

    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    origin = load_embedder(start, device, settings.train.trust_remote_code)
    by_alpha = {1.0: trained_score}
    for a in alphas:
        if a < 1.0:
            by_alpha[a] = pool.score(interpolate(model, origin, a))
            model.load_state_dict(trained)
    alpha = min(by_alpha, key=lambda a: (-by_alpha[a], a))
    if alpha < 1.0:
        interpolate(model, origin, alpha)
    del origin, trained
    if device == "cuda":
        torch.cuda.empty_cache()
    log.info("train.interpolation", alpha=alpha, metric=pool.metric, validation_queries=len(pool.queries),
             fine_tune=round(trained_score, 4), chosen=round(by_alpha[alpha], 4))
    return {"alpha": alpha, "metric": pool.metric, "validation_queries": len(pool.queries),
            "by_alpha": {str(a): round(m, 4) for a, m in sorted(by_alpha.items())}}


class EarlyStopping:
    """Scores the validation pool after every epoch; stops at the first epoch that scores lower than the
    best so far, and restores the best epoch's weights at the end. A run that ends inside an epoch
    (`max_steps`) is scored once more at its end."""

    def __init__(self, model, pool: ValidationPool):
        self.model, self.pool = model, pool
        self.scores: list[tuple[float, float]] = []  # (epoch, score)
        self.best: dict | None = None
        self.step = -1

    def measure(self, epoch: float, step: int, control=None) -> None:
        m = self.pool.score(self.model)
        if not self.scores or m > max(s for _, s in self.scores):
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.scores.append((round(epoch, 3), m))
        self.step = step
        log.info("train.validation", epoch=round(epoch, 3), metric=self.pool.metric, score=round(m, 4))
        if control is not None and m < max(s for _, s in self.scores):
            control.should_training_stop = True

    def restore_best(self) -> float:
        """Load the best weights into the model; returns their validation score."""
        best = max(s for _, s in self.scores)
        if self.scores[-1][1] < best:
            self.model.load_state_dict(self.best)
        self.best = None
        return best

    def describe(self) -> dict[str, Any]:
        best = max(self.scores, key=lambda e: e[1])  # the first of equal scores: fewer epochs
        return {"metric": self.pool.metric, "by_epoch": [[e, round(m, 4)] for e, m in self.scores],
                "best_epoch": best[0], "epochs_run": self.scores[-1][0]}

    def callback(self):
        from transformers import TrainerCallback

        stopper = self

        class _Callback(TrainerCallback):
            def on_epoch_end(self, args, state, control, **kw):
                if stopper.step != state.global_step:  # an epoch with no step left changes nothing
                    stopper.measure(state.epoch, state.global_step, control)

            def on_train_end(self, args, state, control, **kw):
                if stopper.step != state.global_step:
                    stopper.measure(state.epoch, state.global_step)

        return _Callback()
