"""Settings: one validated object parsed from ``config.toml``.

Every field has a default that works on a fresh machine with the examples, and a description that
doubles as the "what to write instead" hint when validation fails. Secrets come only from the
environment (``ANTHROPIC_API_KEY``, ``QDRANT_API_KEY``), never from the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from daemon.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description='one of "debug", "info", "warning", "error"'
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto", description='"auto" (console on a TTY, JSON lines otherwise), "json" or "console"'
    )
    log_queries: bool = Field(
        False, description="true to include user query text in log events (false keeps it out of logs)"
    )


class StoreSettings(_Section):
    url: str = Field(
        "",
        description='SQLAlchemy URL, e.g. "postgresql+psycopg://user@host/db"; empty means SQLite '
        "at <state_dir>/ragloop.db",
    )
    echo: bool = Field(False, description="true to log every SQL statement (debugging only)")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if v and not v.startswith(("sqlite", "postgresql")):
            raise ValueError('must start with "sqlite:///" or "postgresql+psycopg://"')
        return v


class IngestSettings(_Section):
    paths: list[str] = Field(
        default_factory=lambda: ["examples/feedback.jsonl"],
        description='list of glob patterns, e.g. ["/var/log/rag/feedback-*.jsonl*"]; rotated .gz '
        "files matching a pattern are read once, completely",
    )
    k: int = Field(
        10, ge=1, le=1000, description="an event is a miss when no expected id is in retrieved_ids[:k]; 1..1000"
    )
    batch_lines: int = Field(
        2000, ge=1, le=1_000_000, description="lines per transaction (offset committed with the rows); 1..1000000"
    )
    max_line_bytes: int = Field(
        65536, ge=256, description="longer lines are quarantined unread; at least 256"
    )
    max_query_chars: int = Field(4096, ge=1, description="longer queries are quarantined; at least 1")
    max_ids: int = Field(
        1000, ge=1, description="more expected_ids or retrieved_ids than this is quarantined; at least 1"
    )
    require_known_ids: bool = Field(
        True,
        description="true quarantines events whose expected ids are not in the corpus "
        "(replay them with `ragloop quarantine retry` after loading the chunks)",
    )
    quarantine_raw_chars: int = Field(
        2000, ge=0, description="how much of a bad line is kept in quarantine; 0 or more"
    )


class GateSettings(_Section):
    heldout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="share of distinct queries held out from training, between 0 and 1"
    )


class Settings(_Section):
    """The whole configuration. Relative paths are resolved against the config file's folder."""

    state_dir: Path = Field(
        Path("state"), description="folder for the SQLite store, models and the embedded Qdrant"
    )
    log: LogSettings = Field(default_factory=LogSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    gate: GateSettings = Field(default_factory=GateSettings)

    # Where the file was read from; not a setting.
    source: str = Field("<defaults>", exclude=True)

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_dir / 'ragloop.db'}"


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
    return settings


def _explain(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    hint = _field_hint(err["loc"])
    if err["type"] == "extra_forbidden":
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
