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
    if not parent:
        return
    if int(parent) == os.getppid():
        die_with_parent(int(parent))
    elif not _exists(int(parent)):  # killed while this child was starting: it is an orphan already
        os._exit(1)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> bool:
    """After a cycle: collect garbage and hand the C heap's free pages back to the OS (glibc malloc_trim).

    A cycle loads candidate models and encodes the corpus in the daemon itself (the gate, the re-index); torch
    frees those buffers, but glibc keeps the freed heap pages mapped, so without this the daemon's resident
    memory after its first cycle stays at the cycle's peak for as long as it runs. Returns whether the heap was
    trimmed (False off glibc)."""
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False
