"""The shipped monitoring against the real tools: promtool checks and unit-tests the
alert rules and lints a real scrape of a running daemon, in which every metric the
rules and the Grafana dashboard query exists."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import daemon, heartbeat_settings
from helpers import DbUrls, MakeWorld, require

from bgworkers.demo.harness import NotifyListener

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "bgworkers.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "bgworkers.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "bgworkers.json"
#: Series Prometheus makes itself, not scraped from the daemon.
SYNTHETIC = {"up"}
#: Names in PromQL that are not metrics: functions, keywords, aggregations, label names.
NOT_METRICS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "or",
    "and",
    "unless",
    "time",
    "increase",
    "rate",
    "histogram_quantile",
    "job",
    "instance",
    "job_name",
    "tenant",
    "status",
    "event",
    "reason",
    "le",
    "version",
    "python",
    "bool",
    "offset",
}


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool is not installed (Debian package prometheus)")
    assert path is not None
    return path


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=RULES.parent,
    )


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: its identifiers, less strings, label
    matchers, ranges and the words of PromQL and label names."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - NOT_METRICS


def rule_exprs() -> list[str]:
    """Each rule's expr: a one-line value or a `|` block (indented deeper than `expr:`)."""
    pattern = r"^(\s+)expr: \|\n((?:\1\s+.*\n)+)|^\s+expr: (.+)$"
    return [block or line for _, block, line in re.findall(pattern, RULES.read_text(), re.M)]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    for var in doc["templating"]["list"]:
        query = var.get("definition", "")
        if query.startswith("label_values("):
            found.append(query[len("label_values(") :].split(",")[0])
    return found


def test_rules_check_and_unit_tests_pass() -> None:
    check = run("check", "rules", str(RULES))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    unit = run("test", "rules", str(RULE_TESTS))
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_every_rule_has_for_severity_summary_and_description_and_a_test() -> None:
    text = RULES.read_text()
    alerts = re.findall(r"^  - alert: (\w+)$", text, re.M)
    blocks = re.split(r"^  - alert: ", text, flags=re.M)[1:]
    assert len(alerts) == len(blocks) == 10
    for name, block in zip(alerts, blocks, strict=True):
        assert re.search(r"^    for: \d+m$", block, re.M), name
        assert re.search(r"^      severity: (warning|critical)$", block, re.M), name
        assert "      summary: " in block and "      description: " in block, name
    tests = RULE_TESTS.read_text()
    for name in alerts:
        firing = re.search(rf"alertname: {name}\n    exp_alerts:\n    - exp_labels", tests)
        quiet = re.search(rf"alertname: {name}(, exp_alerts: \[\]|\n    exp_alerts: \[\])", tests)
        assert firing and quiet, f"{name}: a test firing and one not firing"


@pytest.fixture
def scrape(tmp_path: Path, make_world: MakeWorld) -> Iterator[str]:
    """The text of /metrics of a running daemon (heartbeat every 1 s, outbox watch on)."""
    urls = DbUrls(
        "sqlite", f"sqlite:///{tmp_path}/core.db", f"sqlite:///{tmp_path}/tenant_{{code_lower}}.db"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = heartbeat_settings(
        tmp_path / "settings.toml",
        urls,
        every="1s",
        extra=f"""
[metrics]
listen = "127.0.0.1:{port}"
[jobs.serial_outbox]
enabled = true
every = "1h"
""",
    )
    make_world(config, ["DEFAULT", "maison_atelier"], erp_schema=True)
    listener = NotifyListener()
    try:
        with daemon(config, {"NOTIFY_SOCKET": listener.path}, tmp_path / "d.log") as proc:
            listener.wait_for("READY")

            def get() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    return str(resp.read().decode())

            deadline = time.monotonic() + 20
            text = get()
            while time.monotonic() < deadline and (
                "bgworkers_watch_last_success_timestamp_seconds{" not in text
                or 'bgworkers_last_success_timestamp_seconds{job_name="heartbeat"' not in text
            ):
                time.sleep(0.2)
                text = get()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    finally:
        listener.close()
    yield text


def test_a_real_scrape_passes_promtool_and_has_every_queried_metric(scrape: str) -> None:
    lint = run("check", "metrics", stdin=scrape)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == "" and lint.stderr.strip() == "", lint.stdout + lint.stderr

    names = {
        line.split("{")[0].split(" ")[0]
        for line in scrape.splitlines()
        if line and not line.startswith("#")
    }
    assert 'job="' not in scrape and 'instance="' not in scrape  # target labels stay Prometheus'
    for source, exprs in (("rules", rule_exprs()), ("dashboard", dashboard_exprs())):
        assert exprs, source
        used = set().union(*(metric_names(e) for e in exprs)) - SYNTHETIC
        assert used, source
        missing = used - names
        assert not missing, f"{source} query metrics the daemon does not export: {missing}"

    statuses = {
        "ok",
        "partial",
        "failed",
        "timed_out",
        "interrupted",
        "abandoned",
        "skipped",
        "missed",
    }
    for tenant in ("DEFAULT", "maison_atelier"):
        for status in statuses:
            assert (
                f'bgworkers_runs_total{{job_name="serial_outbox",status="{status}",'
                f'tenant="{tenant}"}}'
            ) in scrape
    assert 'bgworkers_job_interval_seconds{job_name="heartbeat"} 1.0' in scrape
    assert 'bgworkers_job_interval_seconds{job_name="serial_outbox"} 3600.0' in scrape
    assert re.search(r'bgworkers_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0', scrape)
    assert 'bgworkers_watch_up{tenant="maison_atelier"} 1.0' in scrape
