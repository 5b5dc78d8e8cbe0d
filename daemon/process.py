"""Child processes that never outlive the daemon: a SIGKILLed daemon (a power cut, the OOM killer) leaves no
ingest worker committing and no training child writing a model nobody will register."""

from __future__ import annotations

import ctypes
import os
import signal

PARENT_ENV = "RAGLOOP_PARENT_PID"


def die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when ``parent`` dies (prctl PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def child_env() -> dict[str, str]:
    """The environment of a child started with subprocess, naming this process as the one to die with."""
    return {**os.environ, PARENT_ENV: str(os.getpid())}


def die_with_starter() -> None:
    """In a child started with `child_env`: die with the process that started it, if that is our parent (under a
    launcher such as torchrun it is not, and the launcher's process group is stopped by the daemon instead)."""
    parent = os.environ.get(PARENT_ENV)
    if parent and int(parent) == os.getppid():
        die_with_parent(int(parent))
