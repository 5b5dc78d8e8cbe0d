"""Typed errors. Each message says what is wrong and what to do about it.

Only ``daemon.cli`` turns these into exit codes; library code raises and never exits.
"""

from __future__ import annotations


class RagloopError(Exception):
    """Base class for every error ragloop raises on purpose."""

    exit_code = 1


class ConfigError(RagloopError):
    """The configuration is invalid. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


class StartupError(RagloopError):
    """A dependency (store, Qdrant) cannot be reached at start."""

    exit_code = 3


class StoreError(RagloopError):
    """The store cannot be opened or migrated."""

    exit_code = 3


class CorpusError(RagloopError):
    """A corpus file has bad lines; nothing of it was loaded."""

    def __init__(self, path: str, problems: list[tuple[int, str]], max_shown: int = 20):
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  line {n}: {why}" for n, why in problems[:max_shown])
        more = f"\n  ... and {len(problems) - max_shown} more" if len(problems) > max_shown else ""
        super().__init__(
            f"{path}: {len(problems)} bad line(s), nothing was loaded; fix them and load again:\n{shown}{more}"
        )


class RegistryError(RagloopError):
    """No model version fits the request: none with that number, none serving, none to roll back to."""


class LogLineError(ValueError):
    """One feedback log line is unusable. The ingester quarantines it with this reason."""


class LockedError(RagloopError):
    """Another process holds a resource ragloop needs exclusively."""

    exit_code = 3
