"""`faasd install`: the systemd unit, `/etc/faasd/faasd.yaml`, the state directories.

The plan is a list of steps computed first and carried out second, so `--dry-run` prints
exactly what a real run would do. The unit text here is the one in `systemd/faasd.service`
(a test keeps them equal).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

UNIT_PATH = Path("/etc/systemd/system/faasd.service")
CONFIG_PATH = Path("/etc/faasd/faasd.yaml")
STATE_DIRS = (Path("/var/lib/faasd"), Path("/var/lib/faasd/functions"))

UNIT_TEMPLATE = """\
# faasd: serverless ONNX functions. Installed by `faasd install`.
# systemd accepts comments only on their own lines, never after a value.
[Unit]
Description=faasd - serverless ONNX inference functions
Wants=network-online.target
After=network-online.target

[Service]
# READY=1 once the listener is bound and the functions are loaded; WATCHDOG=1 every 15 s
Type=notify
NotifyAccess=main
# the state directory is the one faasd.yaml names (`faasd token create` reads it there too)
ExecStart={exec_start} up --config /etc/faasd/faasd.yaml
WorkingDirectory=/var/lib/faasd
StateDirectory=faasd
RuntimeDirectory=faasd
EnvironmentFile=-/etc/default/faasd
Restart=on-failure
RestartSec=5s
# model loading can be slow; stopping drains in-flight calls first
TimeoutStartSec=300
TimeoutStopSec=60
WatchdogSec=30
# SIGTERM to the daemon only (it drains, then stops its sandboxes); SIGKILL to stragglers
KillMode=mixed
# the daemon creates per-sandbox cgroups (cpu quota, cpuset, memory limit) below its own
Delegate=yes
LimitNOFILE=1048576
TasksMax=infinity
# protect the daemon; sandboxes raise their own oom_score_adj
OOMScoreAdjust=-500
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome={protect_home}
PrivateTmp={private_tmp}

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Step:
    """One thing the installer does: write a file, make a directory, or run a command."""

    kind: str  # "write" | "mkdir" | "run"
    target: str
    content: str = ""

    def describe(self) -> str:
        if self.kind == "write":
            return f"write {self.target} ({len(self.content.encode())} bytes)"
        if self.kind == "mkdir":
            return f"mkdir -p {self.target}"
        return self.target


HOME_PREFIXES = ("/home/", "/root/", "/run/user/")
TMP_PREFIXES = ("/tmp/", "/var/tmp/")


def render_unit(exec_start: str) -> str:
    """The unit for `exec_start`. A faasd installed under a home directory (a clone's .venv)
    must stay readable, so ProtectHome= is then read-only instead of yes; one under /tmp or
    /var/tmp would vanish behind a private /tmp, so PrivateTmp= is then off."""
    protect_home = "read-only" if exec_start.startswith(HOME_PREFIXES) else "yes"
    private_tmp = "no" if exec_start.startswith(TMP_PREFIXES) else "yes"
    return UNIT_TEMPLATE.format(exec_start=exec_start, protect_home=protect_home,
                                private_tmp=private_tmp)


def default_config_text() -> str:
    """The documented defaults (configs/faasd.yaml next to the sources), or generated ones."""
    shipped = Path(__file__).resolve().parent.parent / "configs" / "faasd.yaml"
    if shipped.is_file():
        return shipped.read_text().replace("\nstate_dir: state\n", "\nstate_dir: /var/lib/faasd\n")
    from faasd.config import DaemonConfig

    defaults = DaemonConfig()
    doc = {"host": defaults.host, "port": defaults.port, "scheduler": defaults.scheduler}
    return "# faasd daemon settings; see the README for every key.\n" + yaml.safe_dump(doc)


def faasd_executable() -> str:
    """The faasd that runs this command (not whichever `faasd` comes first on PATH)."""
    running = Path(sys.argv[0])
    if running.name == "faasd" and running.is_file():
        return str(running.resolve())
    beside = Path(sys.executable).with_name("faasd")
    if beside.is_file():
        return str(beside)
    found = shutil.which("faasd")
    return str(Path(found).resolve()) if found else str(beside)


class InstallError(Exception):
    """The installation cannot go on; the message says why and what to do instead."""


#: Where a host booted with systemd keeps its runtime state (sd_booted(3) tests the same).
SYSTEMD_RUN_DIR = Path("/run/systemd/system")


#: Debian's bubblewrap confines the sandboxes; without it the daemon refuses to start.
SANDBOX_PACKAGE_STEP = "apt-get install -y bubblewrap"


def systemd_running() -> bool:
    """Whether this host was booted with systemd (what sd_booted(3) tests)."""
    return SYSTEMD_RUN_DIR.is_dir()


def plan(exec_start: str, config_exists: bool, have_bwrap: bool | None = None,
         systemd: bool = True) -> list[Step]:
    """`have_bwrap`: None to look on this host. `systemd`: whether systemd runs here; if not,
    everything is set up but the service is not enabled or started (a container, say: the
    unit is there for a host that boots with systemd)."""
    if have_bwrap is None:
        have_bwrap = shutil.which("bwrap") is not None
    steps = [] if have_bwrap else [Step("run", SANDBOX_PACKAGE_STEP)]
    steps += [Step("mkdir", str(d)) for d in (*STATE_DIRS, CONFIG_PATH.parent)]
    if not config_exists:  # never overwrite an administrator's settings
        steps.append(Step("write", str(CONFIG_PATH), default_config_text()))
    steps.append(Step("write", str(UNIT_PATH), render_unit(exec_start)))
    if systemd:
        steps += [
            Step("run", "systemctl daemon-reload"),
            Step("run", "systemctl enable --now faasd"),
        ]
    return steps


def apply(steps: list[Step]) -> None:
    """Carry out `steps`, in order. InstallError at the first step that fails, naming it (the
    steps before it stay done: running the installation again redoes them all)."""
    for step in steps:
        try:
            _apply(step)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise InstallError(f"faasd install stopped at `{step.describe()}`: {exc}") from None


def _apply(step: Step) -> None:
    if step.kind == "mkdir":
        Path(step.target).mkdir(parents=True, exist_ok=True)
    elif step.kind == "write":
        path = Path(step.target)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(step.content)
        tmp.replace(path)
    else:
        subprocess.run(step.target.split(), check=True)


def next_steps(exec_start: str, systemd: bool = True) -> str:
    """What to do after an installation: where things are, how to start it where systemd
    does not run, and how to serve other hosts."""
    faasd = exec_start.split()[-1] if exec_start.startswith("/usr/bin/env") else exec_start
    where = f"(settings: {CONFIG_PATH}, state: {STATE_DIRS[0]})"
    if systemd:
        head = f"faasd is installed and running on 127.0.0.1 {where}."
        restart = "sudo systemctl restart faasd"
        log = "Follow its log with: journalctl -u faasd -f"
    else:
        head = (f"faasd is installed {where}, but systemd does not run on this host, so it is "
                "not running as a service (the unit is in place for a host that boots with "
                f"systemd). Start it with:\n  sudo {faasd} up --config {CONFIG_PATH}\n"
                "under the supervisor this host uses, to keep it running.")
        restart = "start it again"
        log = "It logs to standard error."
    return (
        f"{head}\n"
        "To serve other machines, which needs an API token:\n"
        f"  sudo {faasd} token create --scope admin     # its last word is the token\n"
        f"  set host: 0.0.0.0 in {CONFIG_PATH}, then {restart}\n"
        f"{log}"
    )
