"""The systemd units pass ``systemd-analyze verify`` and keep the settings the daemon relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
INSTALLED_BINARY = "/opt/i2vd/.venv/bin/i2vd"
# verify checks that ExecStart's program exists: point it at this venv's console script.
VENV_BINARY = Path(sys.executable).parent / "i2vd"


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip(
            "systemd-analyze not found: install Debian's 'systemd' package (scripts/test.sh does as root)"
        )
    return exe


def verify(unit: Path) -> list[str]:
    """Run verify on ``unit``; the lines it printed about our units (warnings included).

    verify exits 0 on unknown keys and unparsable values (it only warns), so the
    printed lines are what must be empty; lines about the system's own units are not ours.
    """
    if not VENV_BINARY.exists():
        pytest.skip(f"{VENV_BINARY} missing: install the package into the venv (scripts/setup.sh)")
    proc = subprocess.run(
        [analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "i2vd" in line]
    if proc.returncode != 0:
        lines.append(f"exit status {proc.returncode}: {proc.stderr.strip()}")
    return lines


def copy_unit(name: str, dest: Path, *, as_name: str | None = None, extra: str = "") -> Path:
    text = (UNITS / name).read_text()
    assert INSTALLED_BINARY in text
    text = text.replace(INSTALLED_BINARY, str(VENV_BINARY))
    if extra:
        text = text.replace("[Service]\n", f"[Service]\n{extra}\n", 1)
    path = dest / (as_name or name)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "as_name"),
    [("i2vd.service", None), ("i2vd@.service", None), ("i2vd@.service", "i2vd@team.service")],
)
def test_units_verify_cleanly(tmp_path: Path, name: str, as_name: str | None) -> None:
    assert verify(copy_unit(name, tmp_path, as_name=as_name)) == []


def test_verify_check_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad time span are reported."""
    unit = copy_unit("i2vd.service", tmp_path, extra="WatchdogSecs=1min\nRestartSec=soon")
    problems = verify(unit)
    assert any("WatchdogSecs" in line for line in problems)
    assert any("soon" in line for line in problems)


def directives(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def seconds(span: str) -> float:
    """A systemd time span such as ``15min``, ``10`` or ``1h 30s`` in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hr": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span))


@pytest.mark.parametrize("name", ["i2vd.service", "i2vd@.service"])
def test_unit_settings(name: str) -> None:
    d = directives(name)
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["KillSignal"] == ["SIGTERM"] and d["KillMode"] == ["mixed"]
    assert d["Restart"] == ["on-failure"] and d["User"] == ["i2vd"] and d["UMask"] == ["0002"]
    # A warm stop may take watch.stop_grace; systemd must not SIGKILL before it is over.
    grace = Settings().watch.stop_grace
    assert seconds(d["TimeoutStopSec"][0]) >= grace + 60
    assert 0 < seconds(d["WatchdogSec"][0]) <= 3600
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "closed" in d["DevicePolicy"]
    assert any("nvidia-uvm" in v for v in d["DeviceAllow"])
    assert "/srv/i2vd" in d["ReadWritePaths"]
    assert "MemoryDenyWriteExecute" not in d and "PrivateDevices" not in d  # both break CUDA
    # One capability, CAP_LEASE: leases on share users' files tell a stalled upload from a
    # finished one (tests/e2e/test_systemd_boot.py proves it under a real systemd).
    assert d["CapabilityBoundingSet"] == ["CAP_LEASE"] and d["AmbientCapabilities"] == ["CAP_LEASE"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectHome"] == ["yes"]


@pytest.mark.parametrize("name", ["i2vd.service", "i2vd@.service"])
def test_every_directive_is_commented(name: str) -> None:
    lines = (UNITS / name).read_text().splitlines()
    bare = [
        line
        for before, line in zip(["#", *lines], lines, strict=False)
        if line and not line.startswith(("#", "[")) and not before.startswith("#")
    ]
    assert bare == [], f"directives without a comment line above them: {bare}"


def test_template_reads_the_instance_config() -> None:
    d = directives("i2vd@.service")
    assert d["ExecStart"] == [f"{INSTALLED_BINARY} run --config /etc/i2vd/%i.toml"]
    assert directives("i2vd.service")["ExecStart"] == [
        f"{INSTALLED_BINARY} run --config /etc/i2vd/config.toml"
    ]


def test_install_script(tmp_path: Path) -> None:
    script = UNITS / "install.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    # The config it would write: the example with absolute folders, the real model, the cache.
    out = subprocess.run(
        [str(script), "--print-config", "--folders", "/srv/media/i2vd"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config = tmp_path / "config.toml"
    config.write_text(out)
    settings = load_settings(config)
    assert settings.paths.inbox == Path("/srv/media/i2vd/inbox")
    assert settings.paths.failed == Path("/srv/media/i2vd/failed")
    assert settings.model.id == "ali-vilab/i2vgen-xl"
    assert settings.model_cache_dir == Path("/var/cache/i2vd/models")
    bad = subprocess.run([str(script), "--print-config", "--folders", "rel"], capture_output=True, text=True)
    assert bad.returncode == 2 and "absolute" in bad.stderr


@pytest.mark.parametrize("name", ["i2vd.service", "i2vd@.service"])
def test_units_keep_share_users_out_and_filter_system_calls(name: str) -> None:
    """The security model of docs/security.md, as the units carry it (the boot test runs them)."""
    d = directives(name)
    # Its own group, which share users are not in; the share group as a supplementary one.
    assert d["Group"] == ["i2vd"] and d["SupplementaryGroups"] == ["i2vd-share"]
    filters = " ".join(d["SystemCallFilter"])
    assert filters.startswith("~")
    for group in ("@debug", "@module", "@mount", "@raw-io", "@reboot", "@swap", "@clock"):
        assert group in filters
    # OpenMP and the CUDA driver set affinities (@resources); a denied call fails, it does not kill.
    assert "@resources" not in filters and d["SystemCallErrorNumber"] == ["EPERM"]
    assert d["RestrictSUIDSGID"] == ["yes"] and d["RemoveIPC"] == ["yes"]
    assert int(d["TasksMax"][0]) > 0
    assert d["CacheDirectoryMode"] == ["0750"] and d["StateDirectoryMode"] == ["0750"]


def test_install_script_refuses_the_services_own_group_as_share_group() -> None:
    script = UNITS / "install.sh"
    bad = subprocess.run([str(script), "--share-group", "i2vd"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "service's own group" in bad.stderr
