"""Training overhead: `ragloop train` versus a bare sentence-transformers trainer on the same data.

    python -m bench.train --steps 20

Loads the examples corpus and feedback log into a fresh store, assembles the training data once (the
same function `ragloop train` uses, so both sides see identical examples: the data hashes are
compared), then for the embedder and the reranker times in one run:
  (a) a bare SentenceTransformerTrainer / CrossEncoderTrainer in a fresh Python process, as a user's
      training script would run: same model, loss, data, batch size, steps, precision;
  (b) `ragloop train` (run_job: child process, mining, training, save, registration).
Steps/s compares the training loops (the trainers' own train_runtime); the end-to-end job time is
reported beside it. Both run in fresh processes because the first training run in a process is ~10%
slower than later ones (kernel and allocator warm-up), which would otherwise favour whichever side ran
second in a warm process. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

from daemon.config import settings_from_dict
from daemon.data import load_corpus
from daemon.ingest import ingest_once
from daemon.models import load_embedder, packaged_minilm, pick_device
from daemon.store import open_store
from daemon.train import assemble, carve_validation, run_job

EXAMPLES = Path(__file__).resolve().parent / "data" / "examples"


def _precision_args(device: str) -> dict[str, bool]:
    """The precision `ragloop train` picks on this device (bf16 on CUDA where supported)."""
    from daemon.train import precision_for

    p = precision_for(device)
    return {"bf16": p == "bf16", "fp16": p == "fp16"}


def bare_embedder(data, settings, device: str, out: Path) -> float:
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                          SentenceTransformerTrainingArguments)

    from daemon.train import embedder_dataset

    cfg = settings.train.embedder
    model = load_embedder(packaged_minilm(), device)
    model.max_seq_length = cfg.max_seq_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup, seed=settings.train.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=device == "cpu", **_precision_args(device),
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=embedder_dataset(data, cfg.negatives),
                                         loss=MultipleNegativesRankingLoss(model))
    out_metrics = trainer.train()
    return trainer.state.global_step / out_metrics.metrics["train_runtime"]


def bare_reranker(data, settings, device: str, out: Path) -> float:
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from daemon.train import reranker_dataset

    cfg = settings.train.reranker
    model = CrossEncoder(packaged_minilm(), num_labels=1, max_length=cfg.max_seq_length, device=device)
    args = CrossEncoderTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup, seed=settings.train.seed, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=device == "cpu", **_precision_args(device),
    )
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(float(settings.train.mining.num_negatives + 1)))
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=reranker_dataset(data, "bce"), loss=loss)
    out_metrics = trainer.train()
    return trainer.state.global_step / out_metrics.metrics["train_runtime"]


def bare_in_fresh_process(kind: str, data_path: Path, settings_path: Path, device: str, out: Path) -> float:
    proc = subprocess.run([sys.executable, __file__, "--bare-worker", kind, str(data_path), str(settings_path), device,
                           str(out)], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def _bare_worker(kind: str, data_path: str, settings_path: str, device: str, out: str) -> None:
    from daemon.config import Settings
    from daemon.train import TrainingData

    data = TrainingData.from_json(json.loads(Path(data_path).read_text()))
    settings = Settings.model_validate(json.loads(Path(settings_path).read_text()))
    fn = bare_embedder if kind == "embedder" else bare_reranker
    print(fn(data, settings, device, Path(out)))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-worker":
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        return _bare_worker(*sys.argv[2:7])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-seq-length", type=int, default=128)
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    device = pick_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        settings = settings_from_dict({
            "state_dir": str(work / "state"), "log": {"level": "warning"},
            "ingest": {"paths": [str(EXAMPLES / "feedback.jsonl")]},
            "train": {k: {"max_steps": args.steps, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length}
                      for k in ("embedder", "reranker")},
        }, "bench", base_dir=work)
        engine = open_store(settings.store_url)
        load_corpus(engine, EXAMPLES / "corpus.jsonl")
        ingest_once(engine, settings)
        data = assemble(engine, settings, load_embedder(packaged_minilm(), device))
        print(f"{len(data.examples)} examples from {len({e.pair_id for e in data.examples})} train pairs, "
              f"{args.steps} steps, batch {args.batch_size}, device {device}")
        settings_path = work / "settings.json"
        settings_path.write_text(json.dumps(settings.model_dump(mode="json")))
        # what each job trains on: the reranker's job first keeps its fusion-weight validation split out
        trained_on = {"embedder": data,
                      "reranker": carve_validation(data, settings.train.reranker.validation_fraction)[0]}
        results = {}
        for kind, kind_data in trained_on.items():
            data_path = work / f"data-{kind}.json"
            data_path.write_text(json.dumps(kind_data.to_json()))
            bare = bare_in_fresh_process(kind, data_path, settings_path, device, work / f"bare-{kind}")
            t = time.perf_counter()
            job = run_job(engine, settings, kind)
            wall = time.perf_counter() - t
            assert job.training["data_hash"] == kind_data.data_hash(), "both sides must train on identical data"
            ours = job.training["steps_per_s"]
            results[kind] = (bare, ours, bare / ours, wall)
            print(f"{kind:9s} bare trainer {bare:.3f} steps/s | ragloop train loop {ours:.3f} steps/s "
                  f"(overhead {bare / ours:.3f}x) | ragloop job end to end {wall:.1f}s for {args.steps} steps "
                  f"({args.steps * args.batch_size / wall:.1f} pairs/s incl. start, mining, save)")
        engine.dispose()
    e, r = results["embedder"], results["reranker"]
    print(f"embedder_overhead={e[2]:.3f} reranker_overhead={r[2]:.3f} embedder_steps_per_s={e[1]:.3f} "
          f"reranker_steps_per_s={r[1]:.3f} embedder_job_s={e[3]:.1f} reranker_job_s={r[3]:.1f} device={device}")


if __name__ == "__main__":
    main()
