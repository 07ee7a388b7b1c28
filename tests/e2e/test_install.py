"""The README's Install and Operate sections, run as written, under a real systemd.

The ```sh blocks under "### Install" and the commands of the table under
"### Operate" are read from README.md and run as root from / with a login-like
environment, inside one sandbox (tests/harness/systemd_sandbox.sh) that shares
the host's network (PyPI for `make install`, the throwaway MariaDB on
127.0.0.1). This checkout is bound read-only, as a release tree may be.
Order: install, the SQLite demo, MariaDB with a password credential, a second
install over local edits, uninstall.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import require
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
HARNESS = REPO / "tests" / "harness" / "systemd_sandbox.sh"
UNIT_FILE = REPO / "deploy" / "systemd" / "bgworkers.service"
WRAPPER = REPO / "deploy" / "bgworkers-cli.sh"
SETTINGS = "/etc/bgworkers/settings.toml"
PASSWORD_FILE = "/etc/bgworkers/credentials/db_password"
TENANT_DB = "/var/lib/bgworkers/demo-data/tenant_default.db"
LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Exit statuses a healthy install may give: status is a monitoring check, and
# WARNING (1) is right for jobs that have not run yet.
ALLOWED_EXIT = {"bgworkers status": {0, 1}}


# ------------------------------------------------------------------ README text


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n#", start + len(title) + 2)
    return text[start : end if end != -1 else len(text)]


def install_blocks() -> list[str]:
    """The ```sh blocks of the Install section: install, SQLite demo, first start."""
    return re.findall(r"```sh\n(.*?)```", section("### Install"), re.S)


def operate_commands() -> list[str]:
    """Every `command` of the Operate table, in table order."""
    rows = [line for line in section("### Operate").splitlines() if line.startswith("| ")]
    commands = []
    for row in rows[1:]:  # not the header
        cell = row.strip("|").split(" | ")[1]
        commands += re.findall(r"`([^`]+)`", cell)
    return commands


def block_lines(block: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def test_readme_names_the_commands_this_test_runs() -> None:
    install, demo, start = install_blocks()
    assert block_lines(install) == ["make install"]
    assert block_lines(demo) == ["bgworkers demo-data --reset"]
    assert "systemctl enable --now bgworkers" in block_lines(start)
    commands = operate_commands()
    for needed in (
        "bgworkers status",
        "bgworkers check-config",
        "bgworkers db check",
        "bgworkers explain <SERIAL>",
        "systemctl reset-failed bgworkers",
        "bgworkers db upgrade",
        "make install",
    ):
        assert needed in commands, needed


def unit_properties(text: str) -> set[tuple[str, str]]:
    keys = {
        "DynamicUser",
        "User",
        "StateDirectory",
        "StateDirectoryMode",
        "WorkingDirectory",
        "UMask",
        "EnvironmentFile",
        "LoadCredential",
        "SetCredential",
    }
    found = set()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in keys:
            found.add((key, value.replace("%S", "/var/lib")))
    return found


def test_cli_wrapper_runs_commands_as_the_unit_runs_the_daemon() -> None:
    """Identity, credentials, state and environment: the unit's, so nothing drifts."""
    unit = unit_properties(UNIT_FILE.read_text())
    wrapper = set()
    for word in shlex.split(WRAPPER.read_text().replace("$ETC", "/etc/bgworkers")):
        key, sep, value = word.partition("=")
        if sep:
            wrapper.add((key, value))
    assert {key for key, _ in unit} >= {"User", "LoadCredential", "StateDirectory"}
    assert unit <= wrapper, unit - wrapper


# ------------------------------------------------------------------ the sandbox


class Box:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def sh(
        self, script: str, *, cwd: str = "/", timeout: float = 60, ok: set[int] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """*script* as root in a login-like environment, from *cwd*."""
        keep = {
            k: v
            for k, v in os.environ.items()
            if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")
        }
        env = [
            "env",
            "-i",
            f"PATH={LOGIN_PATH}",
            "HOME=/root",
            "LANG=C.UTF-8",
            *(f"{k}={v}" for k, v in keep.items()),
        ]
        proc = subprocess.run(
            [
                "bash",
                str(HARNESS),
                "exec",
                str(self.dir),
                *env,
                "sh",
                "-c",
                f"cd {shlex.quote(cwd)} && {script}",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        allowed = ok if ok is not None else {0}
        assert proc.returncode in allowed, (
            f"{script} (in {cwd}): exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
            f"\n{self.journal()}"
        )
        return proc

    def journal(self) -> str:
        proc = subprocess.run(
            [
                "bash",
                str(HARNESS),
                "exec",
                str(self.dir),
                "journalctl",
                "-n",
                "30",
                "--no-pager",
                "-u",
                "bgworkers",
                "-u",
                "run-*",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return f"--- journal:\n{proc.stdout}"

    def write(self, path: str, text: str, mode: str = "644") -> None:
        proc = subprocess.run(
            [
                "bash",
                str(HARNESS),
                "exec",
                str(self.dir),
                "sh",
                "-c",
                'umask 077 && cat >"$1" && chmod "$2" "$1"',
                "_",
                path,
                mode,
            ],
            input=text,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr

    def read(self, path: str) -> str:
        return self.sh(f"cat {shlex.quote(path)}").stdout

    def run_block(self, block: str, timeout: float = 300) -> str:
        """A README block line by line, each from / (make from the source tree)."""
        out = ""
        for line in block_lines(block):
            cwd = str(REPO) if line.startswith("make ") else "/"
            out += self.sh(line, cwd=cwd, timeout=timeout).stdout
        return out

    def operate(self, serial: str, secret: str | None = None) -> dict[str, str]:
        """Every command of the README's Operate table; their outputs."""
        outputs = {}
        for command in operate_commands():
            cwd = str(REPO) if command.startswith("make ") else "/"
            line = command.replace("<SERIAL>", shlex.quote(serial))
            proc = self.sh(line, cwd=cwd, timeout=300, ok=ALLOWED_EXIT.get(command, {0}))
            text = proc.stdout + proc.stderr
            for bad in ("Traceback", "Access denied", "No such file", "unable to open"):
                assert bad not in text, f"{command}:\n{text}"
            if secret:
                assert secret not in text, f"{command} shows the password"
            outputs[command] = text
        assert "BGWORKERS UNKNOWN" not in outputs["bgworkers status"]
        assert "ok" in outputs["bgworkers db check"].lower()
        assert serial in outputs["bgworkers explain <SERIAL>"]
        return outputs


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    """A booted sandbox in which the README's install block has run."""
    require(os.geteuid() == 0, "needs root (namespaces, systemd as PID 1)")
    require(Path("/lib/systemd/systemd").exists(), "systemd missing (apt-get install systemd)")
    require("overlay" in Path("/proc/filesystems").read_text(), "needs overlayfs")
    require(
        all(shutil.which(t) for t in ("unshare", "nsenter", "setpriv", "make")),
        "needs unshare, nsenter, setpriv (util-linux), make",
    )
    sandbox = Box(tmp_path_factory.mktemp("install"))
    env = {
        **os.environ,
        "SANDBOX_BIND": f"{REPO}:ro",
        "SANDBOX_HOSTNET": "1",
        "SANDBOX_MAX_LIFETIME": "900",
        "SANDBOX_BOOT_TIMEOUT": "60",
    }
    try:
        boot = subprocess.run(
            ["bash", str(HARNESS), "boot", str(sandbox.dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert boot.returncode == 0, f"sandbox boot failed:\n{boot.stdout}{boot.stderr}"
        install, _, _ = install_blocks()
        out = sandbox.run_block(install)
        assert "bgworkers install: done" in out, out
        yield sandbox
    finally:
        subprocess.run(
            ["bash", str(HARNESS), "shutdown", str(sandbox.dir)],
            timeout=90,
            check=False,
            capture_output=True,
        )


# One sandbox for the module, its tests in file order: on one worker.
pytestmark = [pytest.mark.root, pytest.mark.xdist_group("install-sandbox")]


def test_install_layout(box: Box) -> None:
    listing = box.sh(
        "stat -c '%n %a %U' /opt/bgworkers/venv /etc/systemd/system/bgworkers.service"
        " /usr/local/bin/bgworkers /etc/bgworkers /etc/bgworkers/settings.toml"
        " /etc/bgworkers/credentials /etc/bgworkers/credentials/db_password"
        " /etc/bgworkers/credentials/serial_salts"
    ).stdout.splitlines()
    assert listing == [
        "/opt/bgworkers/venv 755 root",
        "/etc/systemd/system/bgworkers.service 644 root",
        "/usr/local/bin/bgworkers 755 root",
        "/etc/bgworkers 755 root",
        "/etc/bgworkers/settings.toml 644 root",
        "/etc/bgworkers/credentials 700 root",
        "/etc/bgworkers/credentials/db_password 600 root",
        "/etc/bgworkers/credentials/serial_salts 600 root",
    ]
    assert box.sh("command -v bgworkers").stdout.strip() == "/usr/local/bin/bgworkers"
    # installed, not linked to the source tree
    assert str(REPO) not in box.sh("/opt/bgworkers/venv/bin/pip show -f bgworkers").stdout
    settings = box.read(SETTINGS)
    assert 'core_url = "sqlite:////var/lib/bgworkers/demo-data/core.db"' in settings


def test_sqlite_demo_install_and_operate_from_any_directory(box: Box) -> None:
    _, demo, start = install_blocks()
    box.run_block(demo)
    box.run_block(start)
    assert box.sh("systemctl is-active bgworkers").stdout.strip() == "active"
    serial = box.sh(
        f'python3 -c \'import sqlite3; print(sqlite3.connect("{TENANT_DB}").execute('
        '"SELECT serial_number FROM job_ticket_serial LIMIT 1").fetchone()[0])\''
    ).stdout.strip()
    box.operate(serial)
    # the databases belong to the service's user: the CLI did not create root's files
    owners = box.sh("stat -c %U /var/lib/private/bgworkers/demo-data/*").stdout.split()
    assert owners and "root" not in owners, owners


def test_start_after_fixing_bad_settings_needs_no_reset_failed(box: Box) -> None:
    good = box.read(SETTINGS)
    box.sh("systemctl stop bgworkers")
    box.write(SETTINGS, good + "\n[no_such_section]\n")
    box.sh("systemctl start bgworkers", ok={1})  # exit 2 at start: failed, not retried
    assert box.sh("systemctl is-failed bgworkers", ok={0}).stdout.strip() == "failed"
    box.write(SETTINGS, good)
    box.sh("systemctl start bgworkers")
    assert box.sh("systemctl is-active bgworkers").stdout.strip() == "active"


def test_restart_loop_never_locks_out_the_operator(box: Box) -> None:
    """Failing starts are retried every 5 s past StartLimitBurst; a fixed start is accepted."""
    dropin = "/etc/systemd/system/bgworkers.service.d/50-test-fail.conf"
    box.sh(
        "systemctl stop bgworkers && rm -f /run/bgworkers-test-ok && mkdir -p ${0%/*}".replace(
            "${0%/*}", dropin.rsplit("/", 1)[0]
        )
    )
    box.write(dropin, "[Service]\nExecStartPre=/bin/sh -c 'test -e /run/bgworkers-test-ok'\n")
    try:
        box.sh("systemctl daemon-reload && systemctl start bgworkers", ok={1})
        # six starts: one more than StartLimitBurst, which the old 5-minute window refused
        box.sh(
            "for i in $(seq 60); do n=$(systemctl show -P NRestarts bgworkers);"
            " [ $n -ge 5 ] && exit 0; sleep 0.5; done; exit 1",
            timeout=60,
        )
        assert box.sh("systemctl show -P Result bgworkers").stdout.strip() != "start-limit-hit"
        box.sh("touch /run/bgworkers-test-ok && systemctl start bgworkers")
        assert box.sh("systemctl is-active bgworkers").stdout.strip() == "active"
    finally:
        box.sh(f"rm -f {dropin} && systemctl daemon-reload")


@pytest.fixture
def mariadb(mariadb_server_url: str) -> Iterator[tuple[str, str, str, str]]:
    """A user with a password and its core/tenant URLs (no password in them)."""
    suffix = uuid.uuid4().hex[:8]
    user, password = f"bgw_{suffix}", secrets.token_urlsafe(12) + "#&"
    names = [
        f"bgerp_e2e_{suffix}",
        f"bgerp_e2e_{suffix}_t_default",
        f"bgerp_e2e_{suffix}_t_maison_atelier",
    ]
    root = sa.create_engine(mariadb_server_url, poolclass=NullPool)
    server = make_url(mariadb_server_url)
    with root.begin() as conn:
        conn.execute(
            sa.text(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY :pw"), {"pw": password}
        )
        for name in names:
            conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
            conn.execute(sa.text(f"GRANT ALL ON `{name}`.* TO '{user}'@'127.0.0.1'"))
    base = f"mysql+mysqldb://{user}@{server.host}:{server.port}/bgerp_e2e_{suffix}"
    try:
        yield (
            base + "?charset=utf8mb4",
            base + "_t_{code_lower}?charset=utf8mb4",
            password,
            mariadb_server_url + f"/{names[1]}",
        )
    finally:
        with root.begin() as conn:
            for name in names:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"))
        root.dispose()


@pytest.mark.mariadb
def test_mariadb_with_a_password_credential(box: Box, mariadb: tuple[str, str, str, str]) -> None:
    core_url, tenant_url, password, tenant_root_url = mariadb
    box.sh("systemctl stop bgworkers")
    settings = box.read(SETTINGS)
    settings = re.sub(r"(?m)^core_url = .*$", f'core_url = "{core_url}"', settings)
    settings = re.sub(r"(?m)^tenant_url = .*$", f'tenant_url = "{tenant_url}"', settings)
    box.write(SETTINGS, settings)
    box.write(PASSWORD_FILE, password + "\n", mode="600")
    # root's interpreter alone has neither the credential nor the identity
    raw = box.sh(
        "/opt/bgworkers/venv/bin/bgworkers --config /etc/bgworkers/settings.toml db check",
        ok={1, 2},
    )
    assert "Access denied" in raw.stdout + raw.stderr
    _, demo, start = install_blocks()
    box.run_block(demo)
    box.run_block(start)
    assert box.sh("systemctl is-active bgworkers").stdout.strip() == "active"
    engine = sa.create_engine(tenant_root_url, poolclass=NullPool)
    with engine.connect() as conn:
        serial = conn.execute(
            sa.text("SELECT serial_number FROM job_ticket_serial LIMIT 1")
        ).scalar_one()
    engine.dispose()
    outputs = box.operate(serial, secret=password)
    assert "127.0.0.1" in outputs["bgworkers db check"]


def test_second_install_keeps_local_edits_and_uninstall_keeps_settings_and_data(box: Box) -> None:
    box.write(SETTINGS, box.read(SETTINGS) + "# a local edit\n")
    box.write("/etc/bgworkers/credentials/serial_salts", "# local\n", mode="600")
    before = {
        path: box.read(path)
        for path in (SETTINGS, PASSWORD_FILE, "/etc/bgworkers/credentials/serial_salts")
    }
    install, _, _ = install_blocks()
    out = box.run_block(install)
    assert "settings.toml kept" in out, out
    assert {path: box.read(path) for path in before} == before
    assert box.sh("stat -c %a /etc/bgworkers/credentials/db_password").stdout.strip() == "600"
    box.sh("bgworkers check-config")
    box.sh("make uninstall", cwd=str(REPO))
    gone = box.sh(
        "ls -d /opt/bgworkers/venv /usr/local/bin/bgworkers"
        " /etc/systemd/system/bgworkers.service 2>/dev/null | wc -l"
    ).stdout
    assert gone.strip() == "0"
    assert {path: box.read(path) for path in before} == before
    box.sh("test -d /var/lib/private/bgworkers/demo-data")
    assert box.sh("systemctl is-enabled bgworkers", ok={1, 4}).returncode != 0
