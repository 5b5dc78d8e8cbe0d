"""Train: fine-tune the embedder or the reranker from stored pairs and register a candidate.

A job runs in a child process (`python -m daemon.train JOB.json`, daemon/train/child.py): the daemon stays responsive, GPU
memory is returned when the child exits, and a timeout or cancellation kills it cleanly. The child
writes into a temporary folder; only a child that exits 0 with its `training.json` is renamed to
`models/<kind>/v<N>/` and registered, so a crash or kill registers nothing. Training itself is
sentence-transformers' own trainers and losses (see daemon/train/child.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Engine

from daemon.config import Settings
from daemon.errors import RagloopError
from daemon.models import registry
from daemon.models.load import base_embedder_path, packaged_minilm
from daemon.process import child_env

log = structlog.get_logger(__name__)


class TrainJob(BaseModel):
    """What the parent hands its training child, as ``job.json`` in the job's temporary folder."""

    model_config = ConfigDict(extra="forbid")

    kind: registry.Kind
    settings: Settings
    start: str  # the model to fine-tune from (a path or hub id)
    start_label: str  # its name in the lineage, e.g. "embedder v3"
    mining_model: str  # the serving embedder: mines negatives, and an adapter sits on it
    mining_key: str  # the cache key of its corpus vectors (daemon/models/vectors.py)
    out: Path  # the temporary folder; the child writes ``out/model``
    mode: Literal["full", "adapter"] = "full"
    documents: int = 0  # the embedder version whose document vectors the index holds
    splits: tuple[str, ...] = ("train",)  # a refit adds "heldout"
    refit_of: int | None = None  # the promoted version a refit replaces
    replay: float | None = None  # a refit from the candidate: train pairs kept per held-out pair


class TrainError(RagloopError):
    """A training job could not start or did not finish; nothing was registered."""


class TrainCancelled(TrainError):
    pass


@dataclass
class TrainResult:
    kind: str
    version: int
    path: str
    training: dict[str, Any]


def start_path(engine: Engine, settings: Settings, kind: str, mode: str = "full",
               serving: dict[str, Any] | None = None) -> tuple[str, str]:
    """(path to start from, its label in the lineage) for a job of ``kind``, beside the serving model of
    that kind (or ``serving``, a registry row that stands in for it).

    A query adapter always sits on the serving embedder (the index holds its document vectors). A full
    fine-tune continues from the serving embedder's document model: when a query adapter serves, the
    model it adapts (an adapter's asymmetric query route cannot be folded into one symmetric model).

    Raises:
        TrainError: a configured base that is neither a folder nor a hub id, before any work.
    """
    cfg = getattr(settings.train, kind)
    current = serving or registry.serving(engine, kind)
    if kind == registry.EMBEDDER and mode == "adapter":
        return registry.model_path(settings, current), f"{kind} v{current['version']}"
    if cfg.start_from == "serving" and current is not None:
        if kind == registry.EMBEDDER and registry.is_adapter(current):
            current = registry.get_version(engine, kind, registry.documents_version(current))
        return registry.model_path(settings, current), f"{kind} v{current['version']}"
    base = base_embedder_path(cfg.base) if kind == registry.EMBEDDER else (cfg.base or packaged_minilm())
    if cfg.base and not Path(cfg.base).exists() and (cfg.base.startswith(("/", ".", "~")) or "/" not in cfg.base):
        raise TrainError(f"train.{kind}.base = {cfg.base!r} is not a folder (nor a Hugging Face id like "
                         "\"BAAI/bge-reranker-base\"); fix the path or leave it empty for the packaged MiniLM")
    return base, base


def cold_start_skip(engine: Engine, settings: Settings, kind: str, train_pairs: int) -> str | None:
    """Why a cycle should not train ``kind`` now, or None to train it.

    Only a cold-start reranker is skipped: no `train.reranker.base` and none serving to continue from (a
    fresh one-label head on MiniLM), while the train split holds fewer than `train.reranker.min_pairs`
    pairs. Below that it cannot beat the embedder alone (measured, docs/research/reranker.md), so training and gating it
    would spend minutes of every cycle for a candidate the gate must keep out.
    """
    cfg = settings.train.reranker
    if kind != registry.RERANKER or cfg.base or train_pairs >= cfg.min_pairs:
        return None
    if cfg.start_from == "serving" and registry.serving(engine, kind) is not None:
        return None
    return (f"cold-start reranker not trained: {train_pairs} train pairs < train.reranker.min_pairs {cfg.min_pairs} "
            "(set train.reranker.base to a pretrained cross-encoder to train one from the first cycle)")


def run_job(engine: Engine, settings: Settings, kind: str, *, cancel: threading.Event | None = None,
            timeout_s: float | None = None, mode: str = "full", refit_of: int | None = None,
            serving_version: int | None = None) -> TrainResult:
    """Train one ``kind`` model in a child process and register it as a candidate.

    ``mode`` "adapter" trains a query adapter on the serving embedder (daemon/train/adapter.py) instead of a full
    fine-tune; with train.devices naming several devices, a full fine-tune runs under torchrun (DDP).
    ``refit_of`` (a version the gate just promoted) trains the same recipe from the same start on the train
    and held-out splits together; its lineage names the version it refits (daemon/train/refit.py).
    ``serving_version`` (an embedder version) stands in for the serving embedder, where the job starts from
    it and mines with it: a refit trains beside the embedder its candidate trained beside, though the
    candidate itself serves by then.

    Raises:
        TrainError: bad configuration (before any work), a failed or timed-out child.
        TrainCancelled: ``cancel`` was set; the child was stopped and nothing registered.
    """
    if kind not in registry.KINDS:
        raise TrainError(f"unknown model kind {kind!r}; use one of {registry.KINDS}")
    serving_embedder = registry.ensure_base_embedder(engine, settings)
    if serving_version is not None:
        serving_embedder = registry.get_version(engine, registry.EMBEDDER, serving_version) or serving_embedder
    mining_model = registry.model_path(settings, serving_embedder)
    if kind != registry.EMBEDDER:
        mode = "full"
    start, start_label = start_path(engine, settings, kind, mode,
                                    serving_embedder if kind == registry.EMBEDDER else None)
    splits, replay = ("train",), None
    if refit_of is not None:
        start, start_label, settings, replay = _refit_plan(engine, settings, refit_of, start, start_label)
        splits = ("train", "heldout")
    root = settings.models_dir / kind
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = root / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    job = TrainJob(kind=kind, settings=settings, start=start, start_label=start_label, mining_model=mining_model,
                   mining_key=registry.vector_key(serving_embedder), out=tmp, mode=mode,
                   documents=registry.documents_version(serving_embedder), splits=splits, refit_of=refit_of,
                   replay=replay)
    (tmp / "job.json").write_text(job.model_dump_json())
    try:
        _run_child(tmp / "job.json", cancel, timeout_s or settings.train.timeout_s,
                   settings.train.devices if mode == "full" else [])
        training = json.loads((tmp / "model" / "training.json").read_text())
        version = _register(engine, settings, kind, tmp, root, start_label, training)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    path = str(root / f"v{version}")
    log.info("train.registered", kind=kind, version=version, path=path, steps=training["steps"],
             final_loss=training["final_loss"], duration_s=training["duration_s"], device=training["device"])
    return TrainResult(kind, version, path, training)


def _refit_plan(engine: Engine, settings: Settings, refit_of: int, start: str, start_label: str
                ) -> tuple[str, str, Settings, float | None]:
    """(start, its label, settings, replay) of the refit of embedder ``refit_of`` (daemon/train/refit.py).

    train.embedder.refit_from "start" trains the gated candidate's recipe again from its start; "candidate"
    continues from the gated candidate for train.embedder.refit_epochs, on the held-out pairs and
    train.embedder.refit_replay train pairs per held-out pair.
    """
    cfg = settings.train.embedder
    if cfg.refit_from == "start":
        return start, start_label, settings, None
    gated = registry.get_version(engine, registry.EMBEDDER, refit_of)
    settings = settings.model_copy(deep=True)
    settings.train.embedder.epochs = cfg.refit_epochs
    return registry.model_path(settings, gated), f"{registry.EMBEDDER} v{refit_of}", settings, cfg.refit_replay


def child_command(job_path: Path, devices: list[str]) -> list[str]:
    """The training child: one process, or with two or more ``devices`` one process per device under
    torchrun (PyTorch's launcher; the sentence-transformers trainers run DDP under it, gloo on CPUs)."""
    if len(devices) < 2:
        return [sys.executable, "-m", "daemon.train", str(job_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={len(devices)}",
            "-m", "daemon.train", str(job_path)]


def _run_child(job_path: Path, cancel: threading.Event | None, timeout_s: float, devices: list[str] = ()) -> None:
    # start_new_session: the child gets its own process group, so a Ctrl-C at the terminal reaches only
    # the daemon, which then decides to cancel the job cleanly (killpg reaches torchrun's workers too).
    proc = subprocess.Popen(child_command(job_path, list(devices)), start_new_session=True, env=child_env())
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                _stop(proc)
                raise TrainCancelled("training cancelled; nothing was registered")
            if time.monotonic() > deadline:
                _stop(proc)
                raise TrainError(f"training exceeded train.timeout_s={timeout_s:.0f}s and was killed; nothing registered")
            time.sleep(0.2)
    except BaseException:
        if proc.poll() is None:
            _stop(proc)
        raise
    if proc.returncode != 0:
        raise TrainError(f"the training process exited with {proc.returncode}; see its log above; nothing registered")


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _register(engine: Engine, settings: Settings, kind: str, tmp: Path, root: Path, base: str, training: dict[str, Any]) -> int:
    """Move the finished model to models/<kind>/v<N>, then register it.

    In that order: a crash between the two leaves an unregistered folder, which the next job with the
    same number replaces, never a registered version without its weights.
    """
    lineage = {"pair_ids": training["pairs"]["ids"], "pairs": training["pairs"]["total"],
               "data_hash": training["data_hash"], "base": base}
    if training.get("mode") == "adapter":  # whose document vectors (and so which index) it serves with
        lineage.update(mode="adapter", documents=training["documents"])
    if training.get("refit_of") is not None:  # trained on held-out queries too: never gated on them
        lineage["refit_of"] = training["refit_of"]
    version = registry.next_version(engine, kind)
    final = root / f"v{version}"
    if final.exists():
        shutil.rmtree(final)  # an orphan of a crash between rename and register
    os.replace(tmp / "model", final)  # atomic on one filesystem: the folder appears whole
    return registry.register(engine, kind, registry.stored_path(settings, final), version=version, base=base, lineage=lineage)


def _remove_stale_tmp(root: Path) -> None:
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
