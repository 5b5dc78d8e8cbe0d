"""The daemon: apscheduler drives ingest and retrain cycles; systemd supervises it.

Lifecycle (uvicorn/arq style): construction is cheap; `startup()` can fail (store or Qdrant
unreachable: exit 3; another daemon on this state dir or database: exit 3); `run()` is
startup -> loop -> shutdown. Signal handlers only set flags. SIGTERM/SIGINT stop scheduling, let an
ingest batch commit, cancel a training child (nothing half-registered), never interrupt an alias swap,
and exit 0 within `service.shutdown_timeout_s`; a second SIGINT exits at once. SIGHUP re-reads the
config file (schedule, training, gate settings; the store and state dir need a restart).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import structlog

from daemon.config import Settings, load_settings
from daemon.errors import RagloopError
from daemon.ingest.reader import ingest_once
from daemon.models import registry
from daemon.process import release_memory, rss_bytes
from daemon.serve import open_vectors, refresh_serving_index, republish_if_stale
from daemon.service.cycle import cycle_due, run_cycle
from daemon.service.lock import InstanceLock
from daemon.service.systemd import Notifier
from daemon.store.db import COUNTERS, HEARTBEAT, SCHEDULE, get_state, open_store, put_state, utcnow
from daemon.train.job import TrainCancelled

log = structlog.get_logger(__name__)


class Daemon:
    def __init__(self, settings: Settings, config_path: str | None = None, notifier: Notifier | None = None):
        self.settings, self.config_path = settings, config_path
        self.notifier = notifier or Notifier()
        self.stop = threading.Event()  # set by SIGTERM/SIGINT
        self.cancel = threading.Event()  # tells a running cycle to stop its training child
        self.reload = threading.Event()  # set by SIGHUP
        self.cycle_lock = threading.Lock()  # one cycle at a time, whichever trigger fired
        self.stage = "starting"
        self.started = time.monotonic()
        self.totals = {"ingest_passes": 0, "events": 0, "cycles": 0, "errors": 0}
        self.engine = self.lock = self.scheduler = self.metrics = self.metrics_server = None
        self._sigints = 0
        self._forced = False
        self._synth_off: str | None = "unknown"

    # -- lifecycle -------------------------------------------------------------------------------
    def startup(self) -> None:
        """Open the store, take the instance lock, check Qdrant, register the base embedder."""
        self.engine = open_store(self.settings.store_url, echo=self.settings.store.echo)
        self.lock = InstanceLock(self.settings.state_dir, self.engine)
        self.lock.acquire()
        with open_vectors(self.settings):
            pass  # reachable (server) or openable (embedded); closed again so search/status can use it
        registry.relativize_paths(self.engine, self.settings)  # absolute paths an older release stored
        registry.ensure_base_embedder(self.engine, self.settings)
        republish_if_stale(self.engine, self.settings)  # a manifest an older release wrote: its clients' format
        if self.settings.service.metrics_addr:
            from daemon.observe.prometheus import Metrics, serve_metrics

            self.metrics = Metrics(self.engine, self.settings)
            self.metrics_server = serve_metrics(self.metrics, self.settings.service.metrics_addr)
        self._heartbeat()
        self._synth_enabled()  # says once whether synthesis is on
        log.info("service.started", pid=os.getpid(), state_dir=str(self.settings.state_dir),
                 config=self.config_path, systemd=self.notifier.enabled)

    def run(self, once: bool = False) -> int:
        self._install_signals()
        self.startup()
        try:
            if once:
                self._run_once()
            else:
                self._loop()
        finally:
            self.shutdown()
        if self._forced:
            # Work outlived service.shutdown_timeout_s (an evaluation, say; never a half swap, which is
            # one call). Its threads are not daemonic, so leave without waiting for them.
            os._exit(0)
        return 0

    def _run_once(self) -> None:
        self.notifier.ready("running every due stage once")
        self.ingest()
        self.maybe_cycle(reason="once")

    def _loop(self) -> None:
        self._start_scheduler()
        self.notifier.ready(f"idle; ingesting every {self.settings.schedule.ingest_interval_s:g}s")
        interval = self.notifier.watchdog_interval_s
        tick = min(1.0, interval) if interval else 1.0
        while not self.stop.wait(tick):
            if interval:
                self.notifier.watchdog()
            if self.reload.is_set():
                self.reload.clear()
                self._reload()

    def shutdown(self) -> None:
        self.stage = "stopping"
        self.notifier.stopping("stopping: letting running work finish")
        self.cancel.set()
        if self.scheduler is not None:
            done = threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True}, daemon=True)
            done.start()
            done.join(self.settings.service.shutdown_timeout_s)
            if done.is_alive():
                self._forced = True
                log.error("service.shutdown_timeout", timeout_s=self.settings.service.shutdown_timeout_s,
                          stage=self.stage)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self.engine is not None:
            self._heartbeat(stopped=True)
        if self.lock is not None:
            self.lock.release()
        log.info("service.stopped", uptime_s=round(time.monotonic() - self.started, 1), **self.totals)
        if self.engine is not None:
            self.engine.dispose()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())

    def _on_stop(self, signum, _frame) -> None:
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                os._exit(130)  # second Ctrl-C: the operator means it
        self.stop.set()
        self.cancel.set()

    # -- jobs -----------------------------------------------------------------------------------
    def _start_scheduler(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        # A check skipped while a cycle runs is the design (one cycle at a time), not a warning.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)

        # Two threads: ingest keeps running while a cycle's training child works. max_instances=1 and
        # coalesce: a job never overlaps itself, and missed runs collapse into one.
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(2)},
                                             job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": None}, timezone="UTC")
        self._add_jobs()
        self.scheduler.start()

    def _add_jobs(self) -> None:
        from apscheduler.triggers.cron import CronTrigger

        s, now = self.settings, utcnow()
        self.scheduler.add_job(self.ingest, "interval", seconds=s.schedule.ingest_interval_s, id="ingest",
                               next_run_time=now, replace_existing=True)
        self.scheduler.add_job(self.maybe_cycle, "interval", seconds=s.schedule.check_interval_s, id="retrain-check",
                               kwargs={"reason": "new pairs"}, replace_existing=True)
        if s.schedule.retrain_cron:
            self.scheduler.add_job(self.maybe_cycle, CronTrigger.from_crontab(s.schedule.retrain_cron, timezone="UTC"),
                                   id="retrain-cron", kwargs={"reason": "cron"}, replace_existing=True)
        elif self.scheduler.get_job("retrain-cron"):
            self.scheduler.remove_job("retrain-cron")
        self.scheduler.add_job(self._heartbeat, "interval", seconds=s.service.heartbeat_interval_s, id="heartbeat",
                               replace_existing=True)
        self.scheduler.add_job(self.synthesize, "interval", seconds=s.schedule.synth_interval_s, id="synth",
                               replace_existing=True)

    def ingest(self) -> None:
        """One ingest pass. Never raises: a failure is logged and retried at the next interval."""
        try:
            t0 = time.monotonic()
            rep = ingest_once(self.engine, self.settings, stop=self.stop)
            if self.metrics is not None:
                self.metrics.observe("ingest", time.monotonic() - t0)
            self.totals["ingest_passes"] += 1
            self.totals["events"] += rep.events
        except Exception as exc:  # disk full, store briefly down, ...: back off to the next run
            self.totals["errors"] += 1
            log.error("service.ingest_failed", error=str(exc), retry_in_s=self.settings.schedule.ingest_interval_s)

    def synthesize(self) -> None:
        """A synthesis batch in idle time: never while a cycle runs. Off without an API key (said once)."""
        from daemon.ingest.synth import run_synthesis

        if not self._synth_enabled() or self.stop.is_set() or not self.cycle_lock.acquire(blocking=False):
            return
        try:
            run_synthesis(self.engine, self.settings)
        except Exception as exc:  # a bad API answer or an outage: logged, retried next interval
            self.totals["errors"] += 1
            log.error("service.synth_failed", error=str(exc))
        finally:
            self.cycle_lock.release()

    def _synth_enabled(self) -> bool:
        """Whether synthesis can run; logs a change of state once, not at every interval."""
        from daemon.ingest.synth import disabled_reason

        why = disabled_reason(self.settings)
        if why != self._synth_off:
            log.info("synth.off" if why else "synth.on", reason=why, model=self.settings.synth.model)
            self._synth_off = why
        return why is None

    def maybe_cycle(self, reason: str) -> None:
        """Run a cycle if one is due and none is running."""
        if self.stop.is_set() or not self.cycle_lock.acquire(blocking=False):
            return
        ran = False
        try:
            ran = self._refresh_index()  # it loads a model too: trim the heap after it
            due, why = cycle_due(self.engine, self.settings, force=reason == "cron")
            if not due:
                log.debug("service.cycle_not_due", reason=why)
                return
            ran = True
            self._set_stage(f"cycle ({reason}): {why}")
            report = run_cycle(self.engine, self.settings, cancel=self.cancel, on_stage=self._set_stage)
            self.totals["cycles"] += 1
            if self.metrics is not None:
                self.metrics.observe_cycle(report.stages)
            put_state(self.engine, COUNTERS, {"cycles": (get_state(self.engine, COUNTERS) or {}).get("cycles", 0) + 1})
            log.info("service.cycle", reason=reason, decisions=report.decisions, duration_s=report.duration_s)
        except TrainCancelled:
            log.info("service.cycle_cancelled", reason="shutting down; nothing was registered")
        except RagloopError as exc:
            self.totals["errors"] += 1
            log.error("service.cycle_failed", error=str(exc))
        except Exception as exc:  # the daemon outlives a failed cycle; the next trigger tries again
            self.totals["errors"] += 1
            log.exception("service.cycle_failed", error=str(exc))
        finally:
            before = rss_bytes() if ran else None
            if ran and release_memory():
                after = rss_bytes()
                if before and after:
                    log.info("service.memory_released", rss_mb_before=round(before / 2**20),
                              rss_mb_after=round(after / 2**20))
            if self.stage != "idle":
                self._set_stage("idle")
            self.cycle_lock.release()

    def _refresh_index(self) -> bool:
        """A corpus loaded since the serving collection was built: re-index it now (under the cycle lock, so no
        promotion swaps the alias meanwhile), not at the next promotion. A failure is logged; the old collection
        keeps serving. Returns whether it re-indexed (or tried)."""
        try:
            r = refresh_serving_index(self.engine, self.settings, on_stage=self._set_stage)
        except Exception as exc:  # the daemon outlives it; `ragloop index build` retries by hand
            self.totals["errors"] += 1
            log.error("index.refresh_failed", error=str(exc),
                      fix="see the error; `ragloop index build` retries, as does the next corpus load")
            return True
        if r is not None:
            log.info("index.refreshed", collection=r.collection, previous=r.previous, chunks=r.chunks,
                     encoded=r.encoded, seconds=r.seconds)
        return r is not None

    # -- reporting ------------------------------------------------------------------------------
    def _set_stage(self, stage: str) -> None:
        if stage == self.stage:
            return
        self.stage = stage
        self.notifier.status(stage)
        log.info("service.stage", stage=stage)

    def _heartbeat(self, stopped: bool = False) -> None:
        try:
            now = utcnow()
            put_state(self.engine, HEARTBEAT, {"at": now.isoformat(), "unix": now.timestamp(), "pid": os.getpid(),
                                               "stage": "stopped" if stopped else self.stage, "stopped": stopped})
            if self.scheduler is not None and not stopped:
                put_state(self.engine, SCHEDULE, {j.id: j.next_run_time.isoformat() if j.next_run_time else None
                                                  for j in self.scheduler.get_jobs()})
        except Exception as exc:  # a heartbeat that cannot be written shows up in `ragloop check`
            log.warning("service.heartbeat_failed", error=str(exc))

    def _reload(self) -> None:
        if self.config_path is None:
            log.warning("service.reload_skipped", reason="no config file to re-read")
            return
        try:
            new = load_settings(self.config_path)
        except RagloopError as exc:
            log.error("service.reload_failed", error=str(exc), kept="the running configuration")
            return
        if (new.store_url, new.state_dir) != (self.settings.store_url, self.settings.state_dir):
            log.warning("service.reload_partial", reason="store.url and state_dir changes need a restart")
            new.store.url, new.state_dir = self.settings.store.url, self.settings.state_dir
        self.settings = new
        if self.scheduler is not None:
            self._add_jobs()
        log.info("service.reloaded", config=self.config_path)


def check_health(engine, settings: Settings) -> tuple[bool, str]:
    """For `ragloop check`: is the daemon's last heartbeat fresh?"""
    hb = get_state(engine, HEARTBEAT)
    if hb is None:
        return False, "no heartbeat: the daemon has never run on this store"
    age = utcnow().timestamp() - hb["unix"]
    if hb.get("stopped"):
        return False, f"the daemon stopped {age:.0f}s ago (pid {hb['pid']})"
    if age > settings.service.heartbeat_max_age_s:
        return False, f"last heartbeat {age:.0f}s ago > service.heartbeat_max_age_s (pid {hb['pid']}, stage {hb['stage']})"
    return True, f"alive: heartbeat {age:.0f}s ago, pid {hb['pid']}, stage {hb['stage']}"
