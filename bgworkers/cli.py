"""Command line: parse, load settings, configure logs, hand off.

Exit statuses: 0 ok, 1 a check found problems or a tenant failed, 2 bad
usage, bad settings, or a command this build does not provide.  `status` is a
monitoring check and uses the Nagios plugin codes instead: 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN (bad usage and bad settings included).  `history` exits 3
when the run history cannot be read.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bgworkers import __version__
from bgworkers.engine.clock import SystemClock, naive_utc
from bgworkers.engine.history import RunStatus
from bgworkers.engine.logs import configure_logging
from bgworkers.engine.scheduler import (
    changed_sections,
    describe_trigger,
    next_fire,
    plans,
    reconcile,
)
from bgworkers.engine.tenancy import Databases
from bgworkers.jobs import BY_NAME, REGISTRY
from bgworkers.settings import Settings, SettingsError, config_path, load_settings

Command = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(config_path(getattr(args, "config", None)))
    configure_logging(settings.logging, settings.secret_values())
    return settings


def _with_databases(args: argparse.Namespace, work: Callable[[Settings, Databases], int]) -> int:
    settings = _settings(args)
    dbs = Databases(settings)
    try:
        return work(settings, dbs)
    finally:
        dbs.dispose()


def cmd_run(args: argparse.Namespace) -> int:
    from bgworkers.service.daemon import Daemon

    settings = _settings(args)
    return Daemon(config_path(getattr(args, "config", None)), settings).run()


def cmd_run_once(args: argparse.Namespace) -> int:
    from bgworkers.engine.logs import quiet_console
    from bgworkers.engine.runner import Runner

    settings = _settings(args)
    spec = BY_NAME[args.job]
    # On a terminal the summary below gives each tenant's counters: no log line repeats them.
    quiet_console("warning", hidden=("job_tenant_result", "job_run_summary"))
    runner = Runner(settings, BY_NAME)
    runner.leases.start()
    try:
        result = runner.tick(spec.name, runner.clock.now(), only=args.tenant, dry_run=args.dry_run)
    finally:
        runner.close()
    if args.json:
        print(json.dumps(result.as_json(spec.counters)))
    else:
        print(f"{spec.name}{' (dry run)' if args.dry_run else ''}: {len(result.tenants)} tenants")
        for code, tenant in result.tenants.items():
            counters = " ".join(f"{k}={v}" for k, v in tenant.counters.items())
            noted = runner.errors.get((spec.name, code))
            reason = (
                ""
                if tenant.status == RunStatus.OK
                else error_text(
                    noted[1].removeprefix(f"{spec.name}/{code}: ") if noted else tenant.error or ""
                )
            )
            print(f"  {code:<20} {tenant.status:<8} {' '.join(filter(None, [counters, reason]))}")
        total = result.total(spec.counters)
        print("  total: " + " ".join(f"{k}={v}" for k, v in total.items()))
    if result.error:
        print(f"bgworkers run-once: {result.error}", file=sys.stderr)
    return 1 if result.failed else 0


def error_text(error: str) -> str:
    """One line of a run's error: of a traceback, the exception's own first line (never
    SQLAlchemy's SQL, parameters or "Background on this error at" link)."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Traceback"):
        return lines[0] if lines else ""
    heads = [line for line in lines if re.match(r"[A-Za-z_][\w.]*: ", line)]
    return heads[-1] if heads else lines[-1]


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(f"{settings.source}: ok")
    print(json.dumps(settings.public_dict(), indent=2))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from bgworkers.engine import pauses

    settings = _settings(args)
    now = SystemClock().now()
    paused, unknown = _pauses(settings)
    rows = [("JOB", "ENABLED", "TRIGGER", "LEASE GROUP", "NEXT RUN (UTC)", "PAUSED")]
    for spec in REGISTRY:
        job = settings.jobs.get(spec.name)
        fire = next_fire(job, settings.scheduler, now) if job.enabled else None
        rows.append(
            (
                spec.name,
                "yes" if job.enabled else "no",
                describe_trigger(job),
                spec.lease_group,
                f"{fire:%Y-%m-%d %H:%M:%S}" if fire else "-",
                pauses.describe_job(paused, spec.name) if unknown is None else "?",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    if unknown is not None:
        print(f"(PAUSED unknown: {unknown})")
    _reload_preview(settings)
    return 0


def _pauses(settings: Settings) -> tuple[dict[tuple[str, str], Any], str | None]:
    """The pauses for `jobs`, or why they are unknown; `jobs` itself never fails on them
    (and never creates a SQLite file that is not there)."""
    from sqlalchemy.exc import SQLAlchemyError

    from bgworkers.db import error_line, limits
    from bgworkers.db.dialects import missing_sqlite_file
    from bgworkers.engine import pauses

    dbs = Databases(settings)
    try:
        url = dbs.url(settings.database.coordination_url or settings.database.core_url)
        if (missing := missing_sqlite_file(url)) is not None:
            return {}, f"no database at {missing}"
        with limits.limited(pauses.READ_LIMIT):
            return pauses.read(dbs.coordination), None
    except (SQLAlchemyError, limits.RunTimedOut) as exc:
        return {}, f"coordination database: {error_line(exc)}"
    finally:
        dbs.dispose()


def _reload_preview(other: Settings) -> None:
    """With --config OTHER: what a reload from the default settings file to OTHER changes."""
    current_path = config_path(None)
    if not current_path.exists() or Path(other.source).resolve() == current_path.resolve():
        return
    try:
        current = load_settings(current_path)
    except SettingsError as exc:
        print(f"\n(no reload preview: {exc})")
        return
    changes = reconcile(plans(current), plans(other))
    sections = changed_sections(current, other)
    print(f"\nA reload from {current_path} to {other.source} would:")
    for verb, names in changes.describe().items():
        print(f"  {verb}: {', '.join(names)}")
    if sections:
        print(f"  apply changed settings: {', '.join(sections)}")
    if not changes and not sections:
        print("  change nothing")


def cmd_db_init(args: argparse.Namespace) -> int:
    from bgworkers.service import dbadmin

    return _with_databases(args, lambda s, d: dbadmin.init(s, d, args.tenant, print))


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from bgworkers.service import dbadmin

    return _with_databases(
        args, lambda s, d: dbadmin.upgrade(s, d, args.tenant, args.dry_run, print)
    )


def cmd_db_check(args: argparse.Namespace) -> int:
    from bgworkers.service import dbadmin

    return _with_databases(args, lambda s, d: dbadmin.check(s, d, print))


def cmd_outbox_requeue(args: argparse.Namespace) -> int:
    from bgworkers.jobs.outbox import admin as outbox_admin

    return _with_databases(
        args,
        lambda s, d: outbox_admin.requeue(
            s, d, args.tenant, args.id, args.all_dead, args.dry_run, print
        ),
    )


def cmd_outbox_stats(args: argparse.Namespace) -> int:
    from bgworkers.jobs.outbox import admin as outbox_admin

    return _with_databases(args, lambda s, d: outbox_admin.stats(s, d, args.tenant, print))


def cmd_history(args: argparse.Namespace) -> int:
    from bgworkers.service import history_cli
    from bgworkers.service.status import database_label

    def work(settings: Settings, dbs: Databases) -> int:
        label = database_label(
            dbs, settings.database.coordination_url or settings.database.core_url
        )
        return history_cli.show(
            dbs.coordination,
            print,
            lambda text: print(text, file=sys.stderr),
            job=args.job,
            tenant=args.tenant,
            since=args.since,
            statuses=[s for group in args.status or [] for s in group],
            limit=args.limit,
            as_json=args.json,
            label=label,
        )

    return _with_databases(args, work)


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    from bgworkers.jobs.serials import quarantine

    return _with_databases(
        args,
        lambda s, d: quarantine.list_rows(
            s, d, args.tenant, args.reason, args.all, args.json, print, limit=args.limit
        ),
    )


def cmd_quarantine_resolve(args: argparse.Namespace) -> int:
    from bgworkers.jobs.serials import quarantine

    return _with_databases(
        args, lambda s, d: quarantine.resolve_rows(s, d, args.tenant, args.id, print)
    )


def cmd_pause(args: argparse.Namespace) -> int:
    from bgworkers.engine import pauses

    return _with_databases(
        args, lambda s, d: pauses.pause(s, d, args.job, args.tenant, args.reason, print)
    )


def cmd_resume(args: argparse.Namespace) -> int:
    from bgworkers.engine import pauses

    return _with_databases(args, lambda s, d: pauses.resume(s, d, args.job, args.tenant, print))


def cmd_status(args: argparse.Namespace) -> int:
    """A monitoring check: every way it can end is an answer on stdout and a Nagios code."""
    from bgworkers.service import status

    now = SystemClock().now()
    try:
        settings = _settings(args)
    except SettingsError as exc:  # the daemon may be fine on its last valid settings
        return status.emit(status.Check(now, error=f"invalid settings: {exc}"), args.json, print)
    dbs = Databases(settings)
    try:
        return status.report(
            settings,
            dbs,
            now,
            args.json,
            print,
            job=args.job,
            tenant=args.tenant,
            err=lambda text: print(text, file=sys.stderr),
        )
    finally:
        dbs.dispose()


def cmd_explain(args: argparse.Namespace) -> int:
    from bgworkers.jobs.serials import explain_text

    return _with_databases(
        args,
        lambda s, d: explain_text.explain(s, d, args.serial, args.tenant, print, as_json=args.json),
    )


def cmd_demo_data(args: argparse.Namespace) -> int:
    from bgworkers import demo

    at = None
    if args.at:
        at = datetime.fromisoformat(args.at)
        at = naive_utc(at)
    return _with_databases(
        args,
        lambda s, d: demo.generate(
            s,
            d,
            tenants=args.tenants,
            scale=args.scale,
            seed=args.seed,
            at=at,
            reset=args.reset,
            out=print,
        ),
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="settings file (default: $BGWORKERS_CONFIG, else ./settings.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="bgworkers",
        parents=[common],
        description="Background jobs of the Bellavier ERP: serial consistency, serial link "
        "outbox, dashboard refresh; one daemon for every tenant.",
    )
    parser.add_argument("--version", action="version", version=f"bgworkers {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        func: Command,
        help_text: str,
        target: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        p = target.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    add(
        "run",
        cmd_run,
        "run the daemon: schedule every enabled job for every tenant (systemd Type=notify)",
    )
    p = add(
        "run-once",
        cmd_run_once,
        "run one tick of one job now, through the same runner as the daemon",
    )
    p.add_argument(
        "job", choices=sorted(BY_NAME), metavar="JOB", help=f"one of: {', '.join(BY_NAME)}"
    )
    p.add_argument("--tenant", metavar="CODE", help="only this tenant")
    p.add_argument(
        "--dry-run", action="store_true", help="write nothing, report what would be done"
    )
    p.add_argument("--json", action="store_true", help="print the counters as one JSON object")
    add("jobs", cmd_jobs, "list jobs with trigger, lease group and next fire time")
    p = add(
        "status",
        cmd_status,
        "monitoring check (Nagios plugin): per enabled job and tenant the state, last "
        "run, last success, next tick and the error of a failed run; exit 0 OK, "
        "1 WARNING (no success for two intervals, or never), 2 CRITICAL (latest run "
        "partial, failed, timed_out or abandoned, or tenant refused), 3 UNKNOWN "
        "(settings or a database unusable, bad usage)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: verdict, exit_code, summary, counts, pairs; times ISO 8601 UTC",
    )
    p.add_argument(
        "--job",
        metavar="NAME",
        choices=sorted(BY_NAME),
        help=f"only this job, one of: {', '.join(BY_NAME)}",
    )
    p.add_argument("--tenant", metavar="CODE", help="only this tenant (exact code)")
    add(
        "check-config",
        cmd_check_config,
        "validate settings and print the effective values (secrets masked)",
    )

    p = add("db", lambda a: 2, "database schema: init, upgrade, check")
    db = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = add(
        "init",
        cmd_db_init,
        "create the ERP schema on empty core and tenant databases "
        "(demo, tests, benchmarks); databases with tables are left alone",
        db,
    )
    p.add_argument("--tenant", metavar="CODE", nargs="+", help="only these tenants")
    p = add(
        "upgrade",
        cmd_db_upgrade,
        "apply this project's additive schema changes to core and every tenant",
        db,
    )
    p.add_argument("--tenant", metavar="CODE", help="only this tenant (and the core side)")
    p.add_argument("--dry-run", action="store_true", help="print the SQL instead of running it")
    add("check", cmd_db_check, "report missing tables and columns per database (exit 1 if any)", db)

    p = add("outbox", lambda a: 2, "serial link outbox: stats, requeue dead rows")
    outbox = p.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    p = add(
        "stats",
        cmd_outbox_stats,
        "rows per status and the age of the oldest pending row, per tenant",
        outbox,
    )
    p.add_argument("--tenant", metavar="CODE", help="only this tenant")
    p = add(
        "requeue",
        cmd_outbox_requeue,
        "put dead rows back to pending with a fresh retry budget",
        outbox,
    )
    p.add_argument("--tenant", metavar="CODE", required=True, help="the tenant")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", metavar="N", type=int, nargs="+", help="these outbox row ids")
    which.add_argument("--all-dead", action="store_true", help="every dead row of the tenant")
    p.add_argument("--dry-run", action="store_true", help="say what would be requeued")

    _add_operator_commands(add)

    p = add(
        "explain",
        cmd_explain,
        "everything known about one serial in core and the tenants, and what the serial "
        "check would conclude about it (reads only)",
    )
    p.add_argument("serial", metavar="SERIAL", help="the serial, exactly as stored")
    p.add_argument("--tenant", metavar="CODE", help="only this tenant (default: every active one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add(
        "demo-data",
        cmd_demo_data,
        "fill the configured databases with synthetic ERP data (demo, tests, benchmarks)",
    )
    p.add_argument("--tenants", type=_positive_int, default=2, help="number of tenants (2)")
    p.add_argument(
        "--scale",
        type=_positive_float,
        default=1.0,
        help="size: about 1,000 serials per tenant per unit (1)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed; same seed, same data (1)")
    p.add_argument(
        "--at",
        metavar="ISO-TIME",
        help="anchor time of the data (default: now); same seed and --at, same rows",
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="delete existing ERP rows in the configured databases first",
    )
    return parser


def _add_operator_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """history, quarantine list|resolve, pause, resume."""
    from bgworkers.jobs.serials import quarantine
    from bgworkers.service import history_cli

    jobs = ", ".join(BY_NAME)
    p = add(
        "history",
        cmd_history,
        "run history, newest first: tick, start (UTC), duration, outcome, host, counters, "
        "the error's first line; exit 3 when it cannot be read",
    )
    p.add_argument(
        "job",
        nargs="?",
        choices=sorted(BY_NAME),
        metavar="JOB",
        help=f"only this job, one of: {jobs}",
    )
    p.add_argument("--tenant", metavar="CODE", help="only this tenant (exact code)")
    p.add_argument(
        "--since",
        metavar="TIME",
        type=history_cli.since_type(lambda: SystemClock().now()),
        help="runs started at or after TIME: ISO (UTC unless an offset is given) "
        "or a duration ago: 30m, 2h, 1d, 1w",
    )
    p.add_argument(
        "--status",
        metavar="S",
        action="append",
        type=history_cli.statuses_type,
        help=f"only these outcomes (repeat or comma-separate): {', '.join(history_cli.STATUSES)}",
    )
    p.add_argument(
        "--limit",
        metavar="N",
        type=history_cli.limit_type,
        default=history_cli.DEFAULT_LIMIT,
        help=f"at most N runs (default {history_cli.DEFAULT_LIMIT}, "
        f"at most {history_cli.MAX_LIMIT})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: runs (times ISO 8601 with offset), limit, more",
    )

    p = add("quarantine", lambda a: 2, "quarantined serials per tenant: list, resolve")
    actions = p.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    p = add(
        "list",
        cmd_quarantine_list,
        "open quarantine rows per tenant, newest first (reads only)",
        actions,
    )
    p.add_argument("--tenant", metavar="CODE", help="only this tenant (default: every active one)")
    p.add_argument(
        "--reason",
        metavar="R",
        choices=quarantine.REASONS,
        help=f"only this reason, one of: {', '.join(quarantine.REASONS)}",
    )
    p.add_argument("--all", action="store_true", help="resolved rows too")
    p.add_argument(
        "--limit",
        metavar="N",
        type=history_cli.limit_type,
        default=quarantine.DEFAULT_LIMIT,
        help=f"at most N rows per tenant (default {quarantine.DEFAULT_LIMIT})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = add(
        "resolve",
        cmd_quarantine_resolve,
        "mark quarantine rows resolved (sets resolved_at on rows still open)",
        actions,
    )
    p.add_argument("--tenant", metavar="CODE", required=True, help="the tenant")
    p.add_argument("id", metavar="ID", type=_positive_int, nargs="+", help="serial_quarantine ids")

    p = add(
        "pause",
        cmd_pause,
        "pause a job for one tenant or all: every replica skips it (history: skipped) "
        "until `resume`",
    )
    p.add_argument("job", choices=sorted(BY_NAME), metavar="JOB", help=f"one of: {jobs}")
    p.add_argument("--tenant", metavar="CODE", help="only this tenant (default: all tenants)")
    p.add_argument("--reason", metavar="TEXT", help="why (shown in history, status and jobs)")
    p = add("resume", cmd_resume, "lift a pause; without --tenant every pause of the job")
    p.add_argument("job", choices=sorted(BY_NAME), metavar="JOB", help=f"one of: {jobs}")
    p.add_argument("--tenant", metavar="CODE", help="only this tenant's pause")


def _command(argv: list[str]) -> str | None:
    """The command word of a command line (the first word that is not --config's)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _parse(argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed arguments, or the exit status when there is nothing to run: 0 after --help
    or --version, 2 for bad usage (for `status` UNKNOWN, 3, said on stdout too).  argparse
    exits; this returns, so that `main` can be called in a process that goes on."""
    argv = sys.argv[1:] if argv is None else argv
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        sys.stderr.write(errors.getvalue())
        if exc.code == 2 and _command(argv) == "status":
            message = errors.getvalue().strip().splitlines()[-1:] or ["bad usage"]
            print(f"BGWORKERS UNKNOWN - {message[0]}")
            return 3
        return exc.code if isinstance(exc.code, int) else 0
    sys.stderr.write(errors.getvalue())
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command line; its exit status is returned, never raised."""
    args = _parse(argv)
    if isinstance(args, int):
        return args
    try:
        status: int = args.func(args)
        return status
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
