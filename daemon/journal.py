"""The journal: what the daemon tells its operator.

structlog setup (readable on a TTY, one JSON object per line otherwise) and the progress of long work
(a live line on a terminal, and a log event every few seconds). The libraries' own output joins the journal
instead of breaking it: their `logging` records and Python warnings become `library.log` events, and their
progress bars (tqdm, Hugging Face) are off, since ragloop reports progress itself.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import structlog

log = structlog.get_logger(__name__)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Stderr:
    """sys.stderr as it is at each write, not as it was when logging was configured: a CLI call inside a
    test process must not leave structlog writing to a capture stream that pytest has since closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(level: str = "info", fmt: str = "auto", stream=None) -> None:
    """Configure structlog once for the process (the CLI calls this after reading the config)."""
    stream = stream or _Stderr()
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Before any library is imported (the CLI imports them lazily) and inherited by the training child.
    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    root = logging.getLogger()
    if not any(isinstance(h, _ToJournal) for h in root.handlers):
        root.addHandler(_ToJournal())
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)  # the libraries' info is chatter
    logging.captureWarnings(True)


# Library messages that say nothing an operator can act on, kept at debug.
_BENIGN = ("were not sharded",)  # transformers, saving a model on one device


class _ToJournal(logging.Handler):
    """A library's `logging` record (or a Python warning) as a structlog event in the journal."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            level = "debug" if any(b in message for b in _BENIGN) else record.levelname.lower()
            method = getattr(structlog.get_logger(), level if level in _LEVELS else "warning")
            method("library.log", logger=record.name, message=message.strip()[:2000])
        except Exception:  # a log record must never take the process down
            self.handleError(record)


def route_library_logs() -> None:
    """transformers writes to stderr through a handler of its own; send its records to the journal instead."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()


class Progress:
    """Track ``done`` of ``total`` units; report rate and ETA.

    On a TTY it redraws one line on stderr; either way it logs ``<event>`` every ``every_s`` seconds
    and once at the end, so a daemon's journal shows how far a long stage has come.
    """

    def __init__(self, event: str, total: int, unit: str = "items", every_s: float = 10.0, stream=None, **fields: Any):
        self.event, self.total, self.unit, self.every_s, self.fields = event, total, unit, every_s, fields
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.start = self._last_log = time.monotonic()

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self.line() + " " * 4)
            self.stream.flush()
        if now - self._last_log >= self.every_s:
            self._last_log = now
            log.info(self.event, **self.figures())

    def figures(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        return {"done": self.done, "total": self.total, f"{self.unit}_per_s": round(rate, 2),
                "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(elapsed, 1), **self.fields}

    def line(self) -> str:
        f = self.figures()
        pct = 100 * self.done / self.total if self.total else 100.0
        eta = "-" if f["eta_s"] is None else f"{f['eta_s']:.0f}s"
        extra = " ".join(f"{k}={v}" for k, v in self.fields.items())
        return (f"{self.event}: {self.done}/{self.total} {self.unit} ({pct:.0f}%) "
                f"{f[f'{self.unit}_per_s']:.1f}/s eta {eta} {extra}").rstrip()

    def finish(self, **fields: Any) -> dict[str, Any]:
        self.fields.update(fields)
        if self.tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
        figures = self.figures()
        log.info(f"{self.event}.done", **figures)
        return figures
