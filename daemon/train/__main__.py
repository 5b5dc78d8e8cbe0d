"""The training child's entry point: ``python -m daemon.train JOB.json`` (daemon/train/job.py starts it).

A module of its own, so that running it does not import daemon/train/child.py twice (once as the package's
and once as ``__main__``).
"""

import os
import signal
import sys
from pathlib import Path

from daemon.process import die_with_starter

# First, before the seconds of importing torch: a daemon SIGKILLed while this child starts leaves no child training
# on, writing a model nobody registers (bench/live.py caught one killed in that window).
die_with_starter()

from daemon.journal import configure_logging  # noqa: E402
from daemon.train.child import fit  # noqa: E402
from daemon.train.job import TrainJob  # noqa: E402


def main(job_path: str) -> int:
    job = TrainJob.model_validate_json(Path(job_path).read_text())
    configure_logging(job.settings.log.level, job.settings.log.format)
    # SIGTERM from the parent: stop at once; the parent deletes the temporary folder.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    fit(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
