"""`faasd install`: the plan, the unit file in the repo, and systemd's own verdict on it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from faasd import install
from faasd.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_repo_unit_is_what_install_writes() -> None:
    assert (REPO / "systemd" / "faasd.service").read_text() == install.render_unit(
        "/usr/bin/env faasd")


def test_unit_has_the_required_settings() -> None:
    unit = install.render_unit("/usr/bin/env faasd")
    for line in ("Type=notify", "KillMode=mixed", "Restart=on-failure", "StateDirectory=faasd",
                 "Delegate=yes", "WatchdogSec=30", "NotifyAccess=main"):
        assert line in unit.splitlines()


def test_a_faasd_under_a_home_directory_stays_readable() -> None:
    assert "ProtectHome=read-only" in install.render_unit("/home/ann/faasd/.venv/bin/faasd")
    assert "ProtectHome=yes" in install.render_unit("/usr/local/bin/faasd")


def test_a_faasd_under_tmp_is_not_hidden_behind_a_private_tmp() -> None:
    for path in ("/tmp/faasd/.venv/bin/faasd", "/var/tmp/faasd/.venv/bin/faasd"):
        assert "\nPrivateTmp=no\n" in install.render_unit(path)
    assert "\nPrivateTmp=yes\n" in install.render_unit("/usr/local/bin/faasd")


def test_plan_never_overwrites_an_existing_config() -> None:
    fresh = install.plan("/usr/bin/faasd", config_exists=False)
    kept = install.plan("/usr/bin/faasd", config_exists=True)
    assert str(install.CONFIG_PATH) in [s.target for s in fresh]
    assert str(install.CONFIG_PATH) not in [s.target for s in kept]
    assert [s.target for s in fresh][-2:] == ["systemctl daemon-reload",
                                              "systemctl enable --now faasd"]


def test_dry_run_prints_the_plan_and_writes_nothing(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "systemd_running", lambda: True)
    existed = install.UNIT_PATH.exists()
    assert main(["install", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mkdir -p /var/lib/faasd" in out
    assert "systemctl enable --now faasd" in out
    assert "Type=notify" in out
    assert install.UNIT_PATH.exists() == existed


@pytest.mark.parametrize("unit", ["faasd.service", "faasd@.service"])
def test_systemd_analyze_verify_accepts_the_units(unit: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    target = tmp_path / unit.replace("@.", "@node1.")
    shutil.copy(REPO / "systemd" / unit, target)
    result = subprocess.run(["systemd-analyze", "verify", str(target)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "faasd" not in result.stderr, result.stderr


def test_systemd_analyze_verify_accepts_what_install_would_write(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = tmp_path / "faasd.service"
    unit.write_text(install.render_unit(install.faasd_executable()))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_host_without_bubblewrap_gets_it_first() -> None:
    missing = install.plan("/usr/bin/faasd", config_exists=True, have_bwrap=False)
    present = install.plan("/usr/bin/faasd", config_exists=True, have_bwrap=True)
    assert missing[0] == install.Step("run", install.SANDBOX_PACKAGE_STEP)
    assert missing[1:] == present
    assert all("bubblewrap" not in step.target for step in present)


def test_a_host_without_systemd_is_set_up_and_told_how_to_start_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A container, say: everything is written, no systemctl runs (it would fail), and the
    closing lines say how to start faasd and expose it."""
    monkeypatch.setattr(install, "SYSTEMD_RUN_DIR", tmp_path / "no-systemd")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    planned = install.plan("/usr/bin/faasd", config_exists=True, have_bwrap=True,
                           systemd=False)
    assert not any("systemctl" in step.target for step in planned)
    assert str(install.UNIT_PATH) in [step.target for step in planned]
    written = tmp_path / "etc" / "faasd.yaml"
    monkeypatch.setattr(install, "plan", lambda *a, **k: [
        install.Step("mkdir", str(written.parent)),
        install.Step("write", str(written), "host: 127.0.0.1\n")])
    assert main(["install"]) == 0
    out = capsys.readouterr().out
    assert written.read_text() == "host: 127.0.0.1\n"
    assert "systemd does not run on this host" in out
    assert f"up --config {install.CONFIG_PATH}" in out and "token create --scope admin" in out


def test_a_step_that_fails_is_named(tmp_path: Path) -> None:
    done = tmp_path / "made"
    with pytest.raises(install.InstallError, match="stopped at `false`"):
        install.apply([install.Step("mkdir", str(done)), install.Step("run", "false"),
                       install.Step("mkdir", str(tmp_path / "never"))])
    assert done.is_dir() and not (tmp_path / "never").exists()


def test_the_unit_runs_the_faasd_that_installs_it(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    running = tmp_path / "venv" / "bin" / "faasd"
    running.parent.mkdir(parents=True)
    running.write_text("#!/bin/sh\n")
    elsewhere = tmp_path / "path"
    elsewhere.mkdir()
    (elsewhere / "faasd").write_text("#!/bin/sh\n")
    (elsewhere / "faasd").chmod(0o755)
    monkeypatch.setenv("PATH", str(elsewhere))  # another faasd first on PATH
    monkeypatch.setattr("sys.argv", [str(running), "install"])
    assert install.faasd_executable() == str(running)


def test_after_installing_it_says_how_to_serve_other_hosts() -> None:
    text = install.next_steps("/opt/faasd/bin/faasd")
    assert "sudo /opt/faasd/bin/faasd token create --scope admin" in text
    assert "host: 0.0.0.0" in text and "systemctl restart faasd" in text
