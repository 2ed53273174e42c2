"""Many machines: the Ray units and docs/cluster.md agree, and Ray opens no port the docs leave out.

docs/cluster.md tells the operator which ports to open between the cluster's machines, and
shows the ``ray start`` commands that systemd/i2vd-ray-head.service and
i2vd-ray-worker.service run. Here a real head and a real GPU node (on this machine, the node's
ports shifted by ``OFFSET`` so both fit) start with exactly the units' settings, a driver joins
as the daemon does and puts a worker on the node, and every socket their processes listen on
must be a port of the table, on a machine the table names. Then one SIGTERM to each
``ray start``, which is how the units stop them, ends every one of their processes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("ray")

from tests.rayhelper import alive, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "cluster.md"
UNITS = {
    "head": ROOT / "systemd" / "i2vd-ray-head.service",
    "worker": ROOT / "systemd" / "i2vd-ray-worker.service",
}
INSTALLED_RAY = "/opt/i2vd/.venv/bin/ray"
VENV_RAY = Path(sys.executable).parent / "ray"
# The GPU node started beside the head on this one machine takes every port this much higher.
OFFSET = 1000
# The environment variables that move ports Ray has no flag for.
PORT_VARIABLES = ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")
# ``--port=N``, ``--node-manager-port=N``...
PORT_FLAG = re.compile(r"(--(?:[a-z-]+-)?port)=(\d+)")


def port_table() -> dict[int, str]:
    """docs/cluster.md's port table: port -> where ("coordinator" or "every machine")."""
    text = DOCS.read_text()
    table = text[text.index("| Port ") :].split("\n\n", 1)[0]
    ports: dict[int, str] = {}
    for row in table.splitlines()[2:]:
        port, where = (cell.strip() for cell in row.strip("|").split("|")[:2])
        first, _, last = port.partition(" to ")
        for n in range(int(first), int(last or first) + 1):
            ports[n] = where
    return ports


def unit_values(name: str) -> dict[str, list[str]]:
    """Each key of the unit's [Service] section and its values (continued lines joined)."""
    lines = UNITS[name].read_text().replace("\\\n", " ").splitlines()
    values: dict[str, list[str]] = {}
    for line in lines:
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def exec_start(name: str) -> list[str]:
    [command] = unit_values(name)["ExecStart"]
    return shlex.split(command)


def unit_environment(name: str) -> dict[str, str]:
    return dict(v.partition("=")[::2] for v in unit_values(name)["Environment"])


def flag_ports(command: list[str]) -> dict[str, int]:
    """``--*-port=N`` flags of a ``ray start`` command (the worker range as its two ends)."""
    found = {}
    for arg in command:
        m = PORT_FLAG.fullmatch(arg)
        if m:
            found[m.group(1)] = int(m.group(2))
    return found


def docs_command(start: str) -> list[str]:
    """The ``ray start`` command in docs/cluster.md that begins with ``start``."""
    for block in re.findall(r"```sh\n(.*?)```", DOCS.read_text(), re.S):
        text = textwrap.dedent(block).replace("\\\n", " ")
        if text.startswith(start):
            return shlex.split(text)
    raise AssertionError(f"docs/cluster.md shows no {start!r} command")


def test_the_docs_show_the_units_commands() -> None:
    head, node = exec_start("head"), exec_start("worker")
    assert head[0] == node[0] == INSTALLED_RAY
    assert docs_command("ray start --head") == ["ray", *head[1:]]
    docs_node = docs_command("ray start --address")
    assert [a for a in docs_node if not a.startswith("--address")] == [
        "ray",
        *(a for a in node[1:] if not a.startswith("--address")),
    ]


def test_every_port_the_units_fix_is_in_the_table_and_the_table_has_no_other() -> None:
    table = port_table()
    head = flag_ports(exec_start("head"))
    node = flag_ports(exec_start("worker"))
    variables = {v: int(unit_environment("head")[v]) for v in PORT_VARIABLES}
    fixed = {*head.values(), *node.values(), *variables.values()}
    fixed |= set(range(head["--min-worker-port"], head["--max-worker-port"] + 1))
    assert fixed == set(table), "the units fix these ports, the table lists those"
    # A GPU node opens the same ports as the head's node, never one the table keeps to the coordinator.
    assert all(table[p] == "every machine" for p in node.values())
    assert node == {k: v for k, v in head.items() if k in node}
    assert all(table[p] == "coordinator" for p in [head["--port"], head["--ray-client-server-port"]])


def test_ray_units_verify_cleanly(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: install Debian's 'systemd' package")
    for name, unit in UNITS.items():
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_RAY, str(VENV_RAY)))
        proc = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True)
        ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "i2vd" in line]
        assert proc.returncode == 0 and not ours, (name, proc.stdout + proc.stderr)


def test_the_docs_give_the_units_security_figures(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found: install Debian's 'systemd' package")
    for unit in UNITS.values():
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED_RAY, str(VENV_RAY)))
        proc = subprocess.run(
            [analyze, "security", "--offline=yes", "--no-pager", str(copy)], capture_output=True, text=True
        )
        if "--offline" in proc.stderr:
            pytest.skip(f"this systemd-analyze cannot rate a unit file: {proc.stderr.strip()}")
        [figure] = re.findall(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", proc.stdout)
        docs = " ".join(DOCS.read_text().split())
        assert f"`{unit.stem}` at exposure level **{figure[0]} {figure[1]}**" in docs


# -- a real head and GPU node -------------------------------------------------------------


class Node:
    """``ray start --block`` in its own session, as systemd runs the unit."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
        self.log = log

    def processes(self) -> list:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def listening(procs: list) -> set[tuple[int, str]]:
    """(port, address) of every socket ``procs`` listen on."""
    found = set()
    for proc in procs:
        try:
            found |= {
                (c.laddr.port, c.laddr.ip) for c in proc.net_connections("inet") if c.status == "LISTEN"
            }
        except psutil.Error:
            continue  # a process that came and went
    return found


def shifted(command: list[str]) -> list[str]:
    """``command`` with every ``--*-port=N`` moved to N + OFFSET."""
    return [
        f"{m.group(1)}={int(m.group(2)) + OFFSET}" if (m := PORT_FLAG.fullmatch(a)) else a for a in command
    ]


@pytest.fixture
def session_dirs() -> Iterator[tuple[Path, Path]]:
    # Short paths: Ray's socket paths must fit in 107 bytes.
    dirs = (Path(tempfile.mkdtemp(prefix="i2vd-ray-")), Path(tempfile.mkdtemp(prefix="i2vd-ray-")))
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_a_head_and_a_gpu_node_listen_only_on_the_ports_in_the_table(
    tmp_path: Path, session_dirs: tuple[Path, Path]
) -> None:
    table = port_table()
    taken = {c.laddr.port for c in psutil.net_connections("inet") if c.status == "LISTEN"} & set(table)
    if taken:
        pytest.skip(f"ports of the table are taken on this machine: {sorted(taken)}")
    token = tmp_path / "ray-token"
    token.write_text("0" * 64)
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env = {**env, **unit_environment("head"), "RAY_AUTH_TOKEN_PATH": str(token)}
    head_dir, node_dir = session_dirs

    def as_unit(name: str, temp_dir: Path) -> list[str]:
        command = [str(VENV_RAY), *exec_start(name)[1:]]
        return [f"--temp-dir={temp_dir}" if a.startswith("--temp-dir=") else a for a in command]

    started: list = []
    head = Node(as_unit("head", head_dir), env, tmp_path / "head.log")
    nodes = [head]
    try:
        # The head's runtime-env agent listens on the machine's cluster address: the GPU node's way in.
        def agent_address() -> set[str]:
            return {ip for port, ip in listening(head.processes()) if port == 6382}

        [address] = wait_for(agent_address, 180, "the head to start")
        node_env = {**env, "I2VD_RAY_HEAD": f"{address}:6379"}
        node_command = [a.replace("${I2VD_RAY_HEAD}", f"{address}:6379") for a in as_unit("worker", node_dir)]
        node = Node(shifted(node_command), node_env, tmp_path / "node.log")
        nodes.append(node)
        # A driver joins as the daemon does and puts a worker on the node (the head has no CPU).
        driver_code = textwrap.dedent(
            f"""
            import os, time, ray

            class Worker:
                def pid(self):
                    return os.getpid()

            ray.init(address="{address}:6379", log_to_driver=False, configure_logging=False)
            worker = ray.remote(num_cpus=1)(Worker).remote()
            print(ray.get(worker.pid.remote()), flush=True)
            time.sleep(600)
            """
        )
        driver = subprocess.Popen(
            [sys.executable, "-c", driver_code], env=env, stdout=subprocess.PIPE, start_new_session=True
        )
        try:
            assert driver.stdout is not None
            worker_pid = int(driver.stdout.readline() or 0)
            assert worker_pid, (tmp_path / "node.log").read_text()[-3000:]
            started = head.processes() + node.processes() + [psutil.Process(driver.pid)]

            on_head = listening([*head.processes(), psutil.Process(driver.pid)])
            on_node = listening(node.processes())
            assert {6379, 6380, 6381} <= {port for port, _ in on_head}  # the check below has teeth
            assert any(port - OFFSET in range(10002, 10200) for port, _ in on_node)  # the worker
            assert {port for port, _ in on_head} <= set(table), sorted(on_head)
            node_ports = {port - OFFSET for port, _ in on_node}
            assert node_ports <= set(table), sorted(on_node)
            assert all(table[p] == "every machine" for p in node_ports), sorted(on_node)
        finally:
            driver.send_signal(signal.SIGTERM)
            driver.wait(60)
        # How the units stop them: one SIGTERM to each `ray start` (KillMode=mixed); it exits 1.
        for n in reversed(nodes):
            n.proc.send_signal(signal.SIGTERM)
        assert [n.proc.wait(120) for n in nodes] == [1, 1]
        wait_for(lambda: not alive(started), 60, "every process of the head and the node to end")
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                os.killpg(n.proc.pid, signal.SIGKILL)
                n.proc.wait(30)
        for p in alive(started):
            p.kill()
