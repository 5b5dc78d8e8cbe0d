"""The serving manifest (``serving.json``): what ragloop's gate approved, as production must serve it.

ragloop rewrites it atomically after every promotion and rollback. Format 2 holds paths relative to the
manifest's folder (so a state directory can move or be mounted elsewhere), names the concrete collection
(the client queries it, not the alias, so a query encoder is never paired with another version's vectors),
and names the environment variable that holds a Qdrant server's API key, never the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 2


class ManifestError(ValueError):
    """The manifest cannot be read or does not describe a pipeline; the message says what to fix."""


@dataclass(frozen=True)
class EmbedderRef:
    version: int
    path: Path
    documents_version: int  # the embedder version whose document vectors the collection holds


@dataclass(frozen=True)
class RerankerRef:
    version: int
    path: Path
    fusion_weight: float  # final = (1 - w) * first stage + w * reranker, each min-max per query
    rerank_depth: int  # how many first-stage candidates it reorders


@dataclass(frozen=True)
class Manifest:
    """One serving pipeline. ``version`` names it; every answer a `Retriever` gives carries it."""

    source: Path
    alias: str
    collection: str
    embedder: EmbedderRef
    reranker: RerankerRef | None
    qdrant_url: str | None
    qdrant_path: Path | None  # embedded Qdrant: a store holding only ``collection``, written for readers
    api_key_env: str | None
    written_at: str

    @property
    def version(self) -> str:
        """e.g. ``docs__v3/e4/r2``: the collection, the query encoder and the reranker that rank together."""
        return f"{self.collection}/e{self.embedder.version}/r{self.reranker.version if self.reranker else 0}"


def read_manifest(path: str | Path, root: str | Path | None = None) -> Manifest:
    """Parse ``serving.json``. Relative paths in it resolve against ``root`` (default: the manifest's folder).

    Raises:
        ManifestError: the file is missing, not JSON, of an unknown format, or lacks a field.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"no serving manifest at {path}: ragloop writes it after its first index build "
                            "(`ragloop index build` or the first cycle); check serving.manifest_path") from None
    except PermissionError:
        raise ManifestError(f"cannot read {path}: add this service's user to the group that owns it "
                            "(serving.manifest_group; the systemd unit's group is ragloop)") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not JSON ({exc})") from None
    return parse_manifest(raw, path, Path(root) if root is not None else path.parent)


def parse_manifest(raw: dict[str, Any], source: Path, root: Path) -> Manifest:
    fmt = raw.get("format")
    if fmt != FORMAT:
        raise ManifestError(f"{source}: manifest format {fmt!r}, this client reads format {FORMAT}; "
                            "upgrade ragloop (it rewrites the manifest at start) or this client to the same release")
    try:
        emb, rr, q = raw["embedder"], raw.get("reranker"), raw["qdrant"]
        embedder = EmbedderRef(int(emb["version"]), _resolve(root, emb["path"]),
                               int(emb.get("documents_version", emb["version"])))
        reranker = (RerankerRef(int(rr["version"]), _resolve(root, rr["path"]), float(rr["fusion_weight"]),
                                int(rr["rerank_depth"])) if rr else None)
        url, qpath = q.get("url"), q.get("path")
        if bool(url) == bool(qpath):
            raise ManifestError(f"{source}: qdrant must have exactly one of url and path, got {sorted(q)}")
        return Manifest(source, str(raw["alias"]), str(raw["collection"]), embedder, reranker, url or None,
                        _resolve(root, qpath) if qpath else None, q.get("api_key_env"), str(raw.get("written_at", "")))
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{source}: missing or malformed field {exc}") from None


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (root / p)
