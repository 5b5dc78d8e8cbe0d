"""Settings: one validated object parsed from ``config.toml``.

Every field has a default that works on a fresh machine with the examples, and a description that
doubles as the "what to write instead" hint when validation fails. Secrets come only from the
environment (``ANTHROPIC_API_KEY``, ``QDRANT_API_KEY``), never from the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from daemon.config.sections import (GateSettings, IndexSettings, IngestSettings, LogSettings, QdrantSettings,
                                    RetentionSettings, ScheduleSettings, ServiceSettings, ServingSettings, StoreSettings, SynthSettings,
                                    Section)
from daemon.config.training import TrainSettings
from daemon.errors import ConfigError


class Settings(Section):
    """The whole configuration. Relative paths are resolved against the config file's folder."""

    state_dir: Path = Field(
        Path("state"), description="folder for the SQLite store, models and the embedded Qdrant"
    )
    log: LogSettings = Field(default_factory=LogSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    qdrant: QdrantSettings = Field(default_factory=QdrantSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    synth: SynthSettings = Field(default_factory=SynthSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    # Where the file was read from; not a setting.
    source: str = Field("<defaults>", exclude=True)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_dir / 'ragloop.db'}"

    @property
    def qdrant_path(self) -> Path:
        return Path(self.qdrant.path) if self.qdrant.path else self.state_dir / "qdrant"

    @property
    def manifest_path(self) -> Path:
        return Path(self.serving.manifest_path) if self.serving.manifest_path else self.state_dir / "serving.json"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"


def load_settings(path: str | Path | None) -> Settings:
    """Read and validate a config file; ``None`` gives the defaults.

    Raises:
        ConfigError: listing every bad field with what to write instead.
    """
    if path is None:
        return _resolve(Settings(), Path.cwd())
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found; pass --config PATH or create config.toml"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    return settings_from_dict(raw, str(path), base_dir=path.resolve().parent)


def settings_from_dict(raw: dict[str, Any], source: str, base_dir: Path) -> Settings:
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, [_explain(e) for e in exc.errors()]) from None
    settings.source = source
    return _resolve(settings, base_dir)


def _resolve(settings: Settings, base_dir: Path) -> Settings:
    if not settings.state_dir.is_absolute():
        settings.state_dir = (base_dir / settings.state_dir).resolve()
    settings.ingest.paths = [p if Path(p).is_absolute() else str(base_dir / p) for p in settings.ingest.paths]
    for section, key in ((settings.qdrant, "path"), (settings.serving, "manifest_path")):
        value = getattr(section, key)
        if value and not Path(value).is_absolute():
            setattr(section, key, str((base_dir / value).resolve()))
    return settings


# Settings whose meaning changed: an old config gets told what to write instead.
_RENAMED = {"gate.max_guard_drop": "gate.guard_margin (a veto now needs a significant drop beyond it)",
            "gate.bootstrap_samples": "gate.permutation_samples (the gate's test is a sign-flip randomization test)"}


def _explain(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    hint = _field_hint(err["loc"])
    if err["type"] == "extra_forbidden":
        if loc in _RENAMED:
            return f"{loc}: replaced by {_RENAMED[loc]}; see docs/architecture.md (Gate) for what it means now"
        return f"{loc}: unknown setting; remove it or check its spelling against config.toml"
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}{got}; write {hint}" if hint else f"{loc}: {msg}{got}"


def _field_hint(loc: tuple[Any, ...]) -> str | None:
    model: type[BaseModel] | None = Settings
    field = None
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            break
        field = model.model_fields[part]
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return field.description if field is not None else None
