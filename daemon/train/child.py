"""Inside a training child: assemble data, fit with sentence-transformers' trainers, save, describe.

Embedder: SentenceTransformerTrainer with MultipleNegativesRankingLoss over (anchor, positive,
negative_1..n) and the NO_DUPLICATES batch sampler; CachedMultipleNegativesRankingLoss when
`train.embedder.mini_batch_size` is set. Reranker: CrossEncoderTrainer with BinaryCrossEntropyLoss on
labeled pairs (LambdaLoss on labeled lists, or CachedMultipleNegativesRankingLoss, by config).
Both keep validation queries carved from the train split (daemon/train/validation.py): the embedder to stop
early and pick its interpolation with the model it started from, the reranker to pick its fusion weight.
On CUDA out-of-memory the step is retried with half the batch. A job in mode "adapter" trains a query
adapter on the serving embedder from its cached corpus vectors instead (daemon/train/adapter.py).

Under torchrun (train.devices), every rank assembles the same data and runs the same trainer (DDP); only
rank 0 chooses, saves and describes.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from daemon.config import Settings
from daemon.journal import Progress
from daemon.models.fusion import choose_weight
from daemon.models.load import load_embedder, pick_device
from daemon.models.registry import EMBEDDER, RERANKER
from daemon.store.db import open_store
from daemon.train.dataset import TrainingData, assemble
from daemon.train.job import TrainJob
from daemon.train.validation import EarlyStopping, ValidationPool, carve_validation, choose_alpha, embedder_validates

log = structlog.get_logger(__name__)


def fit(job: TrainJob) -> dict[str, Any]:
    """Run ``job`` (see daemon.train.job.run_job); returns training.json's content."""
    import torch
    from transformers import set_seed

    from daemon.journal import route_library_logs

    route_library_logs()
    settings = job.settings
    kind, out = job.kind, job.out / "model"
    cfg = getattr(settings.train, kind)
    adapter = kind == EMBEDDER and job.mode == "adapter"
    t0 = time.monotonic()
    set_seed(settings.train.seed)
    device = _device(settings)
    engine = open_store(settings.store_url, migrate=False)
    # the reranker's fusion weight needs the serving embedder's first stage, and an adapter sits on it
    need_miner = settings.train.mining.mine or kind == RERANKER or adapter
    miner = load_embedder(job.mining_model, device, settings.train.trust_remote_code) if need_miner else None
    data = assemble(engine, settings, miner if settings.train.mining.mine else None, job.mining_key,
                    job.splits, job.replay)
    if not data.examples:
        raise SystemExit("no training pairs in the train split yet: ingest feedback first")
    if adapter:
        return _adapter_job(job, settings, engine, miner, data, device, t0)
    validation: dict[str, set[str]] = {}
    pool = None
    if kind == RERANKER:
        data, validation = carve_validation(data, settings.train.reranker.validation_fraction)
    elif embedder_validates(data, cfg):
        data, validation = carve_validation(data, cfg.validation_fraction)
        miner = miner or load_embedder(job.mining_model, device, settings.train.trust_remote_code)
        pool = ValidationPool.build(miner, engine, settings, job.mining_key, validation)
    mining_s = time.monotonic() - t0  # loading the miner, mining and assembling
    engine.dispose()  # no store connection held while training; choose_fusion reconnects
    precision = precision_for(device)
    batch = cfg.batch_size
    while True:
        try:
            if kind == EMBEDDER:
                model, state, chosen = _fit_embedder(job.start, data, settings, device, precision, batch, out, pool)
            else:
                model, state = _fit_reranker(job.start, data, settings, device, precision, batch, out)
            break
        except torch.cuda.OutOfMemoryError:
            if batch <= 2:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            log.warning("train.oom_retry", kind=kind, batch_size=batch)
    if not _is_main():  # DDP: the weights are rank 0's too; it alone chooses, saves and describes
        return {}
    fusion = choose_fusion(model, miner, engine, job.mining_key, settings, validation) if kind == RERANKER else None
    engine.dispose()
    training = _describe(job, settings, data, state, device, precision, batch, time.monotonic() - t0)
    training["mining_s"] = round(mining_s, 2)
    if fusion is not None:
        training["fusion"] = fusion
    if kind == EMBEDDER:
        training.update(chosen)
    (out / "training.json").write_text(json.dumps(training, indent=2))
    return training


def _is_main() -> bool:
    """True outside torchrun, and in its rank 0."""
    return os.environ.get("RANK", "0") == "0"


def _device(settings: Settings) -> str:
    """This process's device: train.device, or under torchrun the entry of train.devices for its local rank."""
    devices = settings.train.devices
    if len(devices) > 1 and "LOCAL_RANK" in os.environ:
        return devices[int(os.environ["LOCAL_RANK"])]
    return pick_device(settings.train.device)


def _adapter_job(job: TrainJob, settings: Settings, engine, serving, data: TrainingData, device: str,
                 t0: float) -> dict[str, Any]:
    """Train a query adapter on ``serving`` from its cached corpus vectors; save and describe it."""
    from daemon.models.vectors import Corpus, cache_dir, corpus_embeddings
    from daemon.train import adapter

    out = job.out / "model"
    corpus = Corpus(engine)
    emb = corpus_embeddings(serving, corpus, cache_dir(settings), job.mining_key,
                            devices=settings.index.encode_devices)
    vectors = dict(zip(corpus.ids, emb))  # rows of emb, not copies
    engine.dispose()
    mining_s = time.monotonic() - t0
    cfg = settings.train.embedder
    model, state = adapter.fit_adapter(serving, data, vectors, cfg, settings.train.seed,
                                       continue_serving=cfg.start_from == "serving")
    model.save_pretrained(str(out), safe_serialization=True)
    training = _describe(job, settings, data, state, device, "fp32", cfg.adapter_batch_size, time.monotonic() - t0)
    training.update(adapter.describe(job.start_label, job.documents), mining_s=round(mining_s, 2))
    (out / "training.json").write_text(json.dumps(training, indent=2))
    return training


def choose_fusion(reranker, miner, engine, mining_key: str, settings: Settings,
                  validation: dict[str, set[str]]) -> dict[str, Any]:
    """The fusion weight (daemon/models/fusion.py) with the best gate metric on the validation queries, ranked by
    the serving embedder's top gate.rerank_depth as the gate and production rank them."""
    from daemon.models.retrieval import cross_scores, fused_by_weight, retrieve_scored
    from daemon.models.vectors import Corpus, cache_dir, corpus_embeddings

    metric = settings.gate.reranker_metric
    if len(validation) < settings.train.reranker.min_validation:
        log.info("train.fusion", weight=0.0, validation_queries=len(validation), reason="too few validation queries")
        return {"weight": 0.0, "metric": metric, "validation_queries": len(validation),
                "reason": f"{len(validation)} validation queries < train.reranker.min_validation "
                          f"{settings.train.reranker.min_validation}: the embedder alone"}
    corpus = Corpus(engine)
    emb = corpus_embeddings(miner, corpus, cache_dir(settings), mining_key)
    queries = sorted(validation)
    cands, sims = retrieve_scored(miner, corpus, emb, queries, settings.gate.rerank_depth)
    cross = cross_scores(reranker, corpus, queries, cands)
    relevant = [validation[q] for q in queries]
    by_weight = {w: m[metric] for w, m in fused_by_weight(cands, sims, cross, relevant).items()}
    weight = choose_weight(by_weight)
    log.info("train.fusion", weight=weight, validation_queries=len(queries), metric=metric,
             embedder_alone=by_weight[0.0], fused=by_weight[weight], reranker_alone=by_weight[1.0])
    return {"weight": weight, "metric": metric, "validation_queries": len(queries),
            "by_weight": {str(w): round(m, 4) for w, m in by_weight.items()}}


def precision_for(device: str) -> str:
    """The training precision on ``device``: bf16 on a CUDA GPU that has it, else fp16 there, fp32 elsewhere."""
    import torch

    if not device.startswith("cuda"):
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _common_args(settings: Settings, cfg, device: str, precision: str, batch: int, out: Path, n_examples: int) -> dict:
    return dict(
        output_dir=str(out.parent / "run"), per_device_train_batch_size=batch, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1, warmup_steps=cfg.warmup,
        seed=settings.train.seed, data_seed=settings.train.seed, bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=device == "cpu", logging_steps=1, logging_strategy="steps", save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_drop_last=n_examples > batch,
    )


def embedder_dataset(data: TrainingData, limit: int | None = None):
    """(anchor, positive, negative_1..n) rows; every row gets the same number of negatives, at most
    ``limit`` (the first ones: production's own wrong results, then mined, then random)."""
    from datasets import Dataset

    n = min(len(e.negative_ids) for e in data.examples)
    n = n if limit is None else min(n, limit)
    cols: dict[str, list[str]] = {"anchor": [e.query for e in data.examples],
                                  "positive": [data.texts[e.positive_id] for e in data.examples]}
    for i in range(n):
        cols[f"negative_{i + 1}"] = [data.texts[e.negative_ids[i]] for e in data.examples]
    return Dataset.from_dict(cols)


def _fit_embedder(start: str, data: TrainingData, settings: Settings, device: str, precision: str, batch: int,
                  out: Path, pool: ValidationPool | None = None):
    """Fine-tune, then (with validation queries) keep the best epoch and the best interpolation alpha.
    Returns (model, trainer state, what was chosen for training.json)."""
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import (CachedMultipleNegativesRankingLoss,
                                                                   MultipleNegativesRankingLoss)
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                          SentenceTransformerTrainingArguments)

    cfg = settings.train.embedder
    model = load_embedder(start, device, settings.train.trust_remote_code)
    model.max_seq_length = cfg.max_seq_length
    ds = embedder_dataset(data, cfg.negatives)
    cached = cfg.loss == "cached_mnrl" or cfg.mini_batch_size > 0
    loss = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size or 16) if cached
            else MultipleNegativesRankingLoss(model))
    args = SentenceTransformerTrainingArguments(batch_sampler=BatchSamplers.NO_DUPLICATES,
                                                **_common_args(settings, cfg, device, precision, batch, out, len(ds)))
    stopper = EarlyStopping(model, pool) if pool is not None and cfg.early_stopping else None
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss,
                                         callbacks=[_progress_callback(EMBEDDER, settings)] + ([stopper.callback()]
                                                                                                 if stopper else []))
    _train(trainer)
    chosen: dict[str, Any] = {}
    if not _is_main():
        return model, trainer.state, chosen
    if pool is not None:
        trained_score = stopper.restore_best() if stopper else pool.score(model)
        if stopper:
            chosen["early_stopping"] = stopper.describe()
        chosen["interpolation"] = choose_alpha(model, start, pool, cfg.alphas, trained_score, settings, device)
    model.save_pretrained(str(out), safe_serialization=True)
    return model, trainer.state, chosen


def reranker_dataset(data: TrainingData, loss: str):
    from datasets import Dataset

    if loss == "bce":
        q, d, y = [], [], []
        for e in data.examples:
            for cid, label in [(e.positive_id, 1.0)] + [(n, 0.0) for n in e.negative_ids]:
                q.append(e.query)
                d.append(data.texts[cid])
                y.append(label)
        return Dataset.from_dict({"query": q, "document": d, "label": y})
    if loss == "lambda":
        return Dataset.from_dict({
            "query": [e.query for e in data.examples],
            "docs": [[data.texts[e.positive_id]] + [data.texts[n] for n in e.negative_ids] for e in data.examples],
            "labels": [[1] + [0] * len(e.negative_ids) for e in data.examples],
        })
    return embedder_dataset(data)  # cached_mnrl: (anchor, positive, negative_1..n)


def _fit_reranker(start: str, data: TrainingData, settings: Settings, device: str, precision: str, batch: int, out: Path):
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import (BinaryCrossEntropyLoss, CachedMultipleNegativesRankingLoss,
                                                            LambdaLoss)

    cfg = settings.train.reranker
    fresh = not _has_classifier(start)
    if fresh:
        log.info("train.fresh_head", start=start, reason="the start is not a cross-encoder: a new one-label head "
                 "is initialized and trained (a cold start)")
    with _quiet_fresh_head(fresh):
        model = CrossEncoder(start, num_labels=1, max_length=cfg.max_seq_length, device=device,
                             trust_remote_code=settings.train.trust_remote_code, model_kwargs={"use_safetensors": True})
    ds = reranker_dataset(data, cfg.loss)
    if cfg.loss == "bce":
        # one positive per n negatives: weigh positives so the classes count equally
        neg_per_pos = max(1, round(sum(len(e.negative_ids) for e in data.examples) / len(data.examples)))
        loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(neg_per_pos)))
    elif cfg.loss == "lambda":
        loss = LambdaLoss(model)
    else:
        loss = CachedMultipleNegativesRankingLoss(model)
    args = CrossEncoderTrainingArguments(**_common_args(settings, cfg, device, precision, batch, out, len(ds)))
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=ds, loss=loss,
                                  callbacks=[_progress_callback(RERANKER, settings)])
    return _train_and_save(trainer, model, out)


def _has_classifier(start: str) -> bool:
    """Whether ``start`` is a cross-encoder (a sequence-classification head), by its config.json. A name
    that is not a local folder (a hub id) counts as one: the libraries' own load report then stays on."""
    try:
        archs = json.loads((Path(start) / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError):
        return True
    return any("ForSequenceClassification" in a for a in archs)


@contextmanager
def _quiet_fresh_head(quiet: bool):
    """A cold start builds a new head on purpose, and train.fresh_head says so: the libraries' warnings
    about it ("Converting ... to CrossEncoder", a LOAD REPORT of the missing classifier) are then noise."""
    names = ("sentence_transformers.base.model", "transformers.modeling_utils")
    loggers = [logging.getLogger(n) for n in names] if quiet else []
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _train(trainer) -> None:
    """Train; our progress events replace the trainer's printed dicts, which are not structured logs."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.train()


def _train_and_save(trainer, model, out: Path):
    """Train, then save safetensors weights into ``out``."""
    _train(trainer)
    if _is_main():
        model.save_pretrained(str(out), safe_serialization=True)
    return model, trainer.state


def _progress_callback(kind: str, settings: Settings):
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        """Steps done / total, loss and ETA, on a TTY and as `train.progress` log events."""

        def on_train_begin(self, args, state, control, **kw):
            self.p = Progress("train.progress", state.max_steps, unit="steps", every_s=settings.train.log_every_s,
                              kind=kind)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.p.fields["loss"] = round(float(logs["loss"]), 4)

        def on_step_end(self, args, state, control, **kw):
            self.p.advance(1)

        def on_train_end(self, args, state, control, **kw):
            self.p.finish()

    return _Progress()


def _describe(job: TrainJob, settings: Settings, data: TrainingData, state, device: str, precision: str, batch: int,
              duration: float) -> dict[str, Any]:
    import sentence_transformers
    import torch
    import transformers

    kind = job.kind
    cfg = getattr(settings.train, kind)
    curve = [[h["step"], h["loss"]] for h in state.log_history if "loss" in h]
    runtime = next((h["train_runtime"] for h in state.log_history if "train_runtime" in h), None)
    pair_ids = sorted({e.pair_id for e in data.examples})
    return {
        "kind": kind,
        "base": job.start_label,
        "base_path": job.start,
        "pairs": {"ids": pair_ids, "total": len(pair_ids), "examples": len(data.examples), "by_origin": data.counts,
                  "splits": list(job.splits)},
        "refit_of": job.refit_of,
        "mined_with": {"model": job.mining_model, "vectors": job.mining_key},  # the serving embedder when it trained
        "data_hash": data.data_hash(),
        "hyperparameters": {**cfg.model_dump(), "batch_size_used": batch, "mining": settings.train.mining.model_dump(),
                            "weights": settings.train.weights},
        "seed": settings.train.seed,
        "device": device,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),  # processes under torchrun (train.devices)
        "precision": precision,
        "libraries": {"python": platform.python_version(), "torch": torch.__version__,
                      "transformers": transformers.__version__,
                      "sentence_transformers": sentence_transformers.__version__},
        "steps": state.global_step,
        "train_runtime_s": runtime,
        "steps_per_s": round(state.global_step / runtime, 4) if runtime else None,
        "duration_s": round(duration, 2),
        "final_loss": curve[-1][1] if curve else None,
        "loss_curve": curve,
    }
