"""The daemon: main loop, signals, sd_notify, watchdog, reload.

Signal handlers only put the signal on a queue; the main thread acts on it.
SIGTERM/SIGINT: stop scheduling, let running tenant runs finish within
shutdown_grace, exit 0 (a second signal: exit 1 at once). SIGHUP: re-read and
validate the settings; apply them in place only if valid.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from sqlalchemy.exc import SQLAlchemyError

from bgworkers.db import error_line, limits
from bgworkers.engine import history
from bgworkers.engine.clock import Clock, SystemClock, naive_utc
from bgworkers.engine.history import RunStatus
from bgworkers.engine.logs import configure_logging, get_logger
from bgworkers.engine.runner import BOOKKEEPING_LIMIT, Runner, TickResult
from bgworkers.engine.scheduler import Scheduler, changed_sections, previous_fire, tick_identity
from bgworkers.jobs import BY_NAME, REGISTRY
from bgworkers.service.metrics import Metrics
from bgworkers.service.notify import notify, watchdog_interval
from bgworkers.settings import Settings, SettingsError, load_settings

log = get_logger("bgworkers.daemon")
#: Limit of one history prune (bounded batches; a stuck database ends it).
HOUSEKEEPING_LIMIT = 300.0


class Daemon:
    def __init__(self, config: Path, settings: Settings, clock: Clock | None = None) -> None:
        self.config = config
        self.settings = settings
        self.clock = clock or SystemClock()
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.runner = Runner(settings, BY_NAME, self.clock)
        self.scheduler = Scheduler(self._tick, self._missed, self.clock)
        self.reload_error: str | None = None
        self.last_tick = "no tick yet"
        self.metrics = self.runner.metrics = Metrics()

    # -------------------------------------------------------------- scheduled work

    def _tick(self, job: str, run_time: datetime) -> None:
        settings = self.settings
        tick_at = tick_identity(settings.jobs.get(job), settings.scheduler, run_time)
        # Returns once the tenant runs are queued: a slow tenant delays no other.
        self.runner.tick(job, tick_at, wait=False, on_done=self._tick_done)

    def _tick_done(self, result: TickResult) -> None:
        states = Counter(r.status for r in result.tenants.values())
        self.last_tick = f"{result.job} at {result.tick_at:%H:%M:%S}: " + ", ".join(
            f"{states[s]} {s}"
            for s in (RunStatus.OK, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.MISSED)
            if states[s] or s in (RunStatus.OK, RunStatus.FAILED)
        )
        notify(f"STATUS={self.status()}")

    def _missed(self, job: str, run_time: datetime, reason: str) -> None:
        settings = self.settings
        self.runner.record_missed(
            job, tick_identity(settings.jobs.get(job), settings.scheduler, run_time), reason
        )

    def _catch_up(self) -> None:
        """Run once, per tenant, the last tick of each `catch_up` job that no daemon ran
        (the daemon was down).  A tenant never run before is not caught up."""
        settings, now = self.settings, self.clock.now()
        for spec in REGISTRY:
            job = settings.jobs.get(spec.name)
            tick = previous_fire(job, settings.scheduler, now) if job.catch_up else None
            if not job.enabled or tick is None:
                continue
            try:
                with limits.limited(BOOKKEEPING_LIMIT):
                    last = history.last_ticks(self.runner.dbs.coordination, spec.name)
            except (SQLAlchemyError, limits.RunTimedOut) as exc:
                log.warning("catch_up_failed", job=spec.name, error=error_line(exc))
                continue
            behind = {code for code, at in last.items() if at < naive_utc(tick)}
            if behind:
                log.info("catch_up", job=spec.name, tick=tick.isoformat(), tenants=sorted(behind))
                self.runner.tick(spec.name, tick, among=behind, wait=False, on_done=self._tick_done)

    def _housekeeping(self) -> None:
        cutoff = history.retention_cutoff(
            self.clock.now(), self.settings.scheduler.history_retention
        )
        try:
            with limits.limited(HOUSEKEEPING_LIMIT):
                deleted = history.prune(self.runner.dbs.coordination, cutoff)
        except Exception as exc:
            log.warning("history_prune_failed", error=error_line(exc))
            return
        if deleted:
            log.info("history_pruned", rows=deleted, older_than=cutoff.isoformat())

    def _watch(self) -> None:
        self.runner.flush_history()  # history rows that could not be written earlier
        settings = self.settings
        if settings.jobs.serial_outbox.enabled or settings.jobs.serial_consistency.enabled:
            self.metrics.watch(settings, self.runner.dbs, self.clock.now())

    # -------------------------------------------------------------- lifecycle

    def status(self) -> str:
        jobs = len(self.scheduler.held)
        text = f"{jobs} jobs scheduled; last: {self.last_tick}"
        last_error = self.runner.last_error  # cleared once that job and tenant run ok
        if last_error:
            at, error = last_error
            text += f"; last error {at.astimezone(UTC):%H:%M:%S} UTC: {error.splitlines()[0]}"
        if self.reload_error:
            text = (
                f"reload failed, running on previous settings: "
                f"{self.reload_error.splitlines()[0]}; {text}"
            )
        return text[:500]

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.put(signum)  # SimpleQueue.put is reentrant: safe in a handler

    def run(self) -> int:
        for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(handled, self._on_signal)
        started = time.monotonic()
        self.runner.leases.start()
        self.scheduler.apply(self.settings)
        # The daemon's own work, one call at a time, each first at start.
        self.scheduler.call("catch_up", self._catch_up)
        self.scheduler.call("housekeeping", self._housekeeping, every=timedelta(hours=1))
        self.scheduler.call("watch", self._watch, every=timedelta(minutes=1))
        if self.settings.metrics.listen:
            self.metrics.start(self.settings, self.runner.dbs, self.clock.now())
            self.metrics.serve(self.settings.metrics.listen)
        self.scheduler.start()
        log.info(
            "daemon_started",
            pid=os.getpid(),
            config=str(self.config),
            ms=int((time.monotonic() - started) * 1000),
            jobs=self._next_runs(),
        )
        notify("READY=1", f"STATUS={self.status()}", f"MAINPID={os.getpid()}")
        ping = watchdog_interval()
        while True:
            try:
                signum: int | None = self.signals.get(timeout=min(ping or 1.0, 1.0))
            except queue.Empty:
                signum = None
            if signum == signal.SIGHUP:
                self.reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                return self.stop()
            if ping and self.scheduler.healthy():
                notify("WATCHDOG=1")

    def _next_runs(self) -> dict[str, str]:
        return {
            name: f"{fire:%Y-%m-%d %H:%M:%S%z}" if fire else "paused"
            for name, fire in self.scheduler.next_fire_times().items()
        }

    def reload(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")
        try:
            new = load_settings(self.config)
        except SettingsError as exc:
            self.reload_error = str(exc)
            log.error("reload_failed", error=str(exc), kept="previous settings")
            notify("READY=1", f"STATUS={self.status()}")
            return
        old = self.settings
        if new.metrics != old.metrics:
            log.warning("reload_metrics_needs_restart", listen=new.metrics.listen)
        configure_logging(new.logging, new.secret_values())
        changes = self.scheduler.apply(new)
        self.runner.update(new)
        self.settings, self.reload_error = new, None
        log.info(
            "reload_applied",
            **changes.describe(),
            settings_changed=changed_sections(old, new),
            jobs=self._next_runs(),
        )
        notify("READY=1", f"STATUS={self.status()}")

    def stop(self) -> int:
        grace = self.settings.scheduler.shutdown_grace.total_seconds()
        running = self.runner.inflight()
        notify("STOPPING=1", f"STATUS=stopping: {running} tenant runs to finish")
        log.info("daemon_stopping", running=running, grace_s=grace)
        self.scheduler.stop()

        def second_signal() -> None:
            try:
                signum = self.signals.get_nowait()
            except queue.Empty:
                return
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.warning("daemon_forced_exit", running=self.runner.inflight())
                sys.stderr.flush()
                os._exit(1)

        clean = self.runner.drain(grace, poll=second_signal)
        if not clean:
            # The runs still going are given up: recorded `interrupted`, leases released.
            # Their threads cannot be stopped; exiting closes their connections, so the
            # servers roll their transactions back.
            interrupted = self.runner.interrupt()
            self.runner.close()
            log.warning("shutdown_grace_exceeded", grace_s=grace, interrupted=interrupted)
            log.info("daemon_stopped", interrupted=len(interrupted))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        self.runner.close()
        log.info("daemon_stopped")
        return 0
