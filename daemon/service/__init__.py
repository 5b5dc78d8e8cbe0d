"""Service: the daemon's lifecycle and scheduler, one cycle of the loop, its locks, and systemd's protocol."""

from daemon.service.cycle import CycleReport, cycle_due, run_cycle, train_pair_count
from daemon.service.daemon import Daemon, check_health
from daemon.service.lock import InstanceLock
from daemon.service.systemd import Notifier

__all__ = ["CycleReport", "run_cycle", "train_pair_count", "cycle_due", "Daemon", "check_health", "InstanceLock",
           "Notifier"]
