"""``[cluster] backend = "ray"``: jobs on Ray workers, on a real local Ray (GPUs faked on this CPU).

Every test starts and stops its own Ray (a private one, or a multi-node one on this machine from
``ray.cluster_utils``) and checks that no Ray process is left behind. Workers run the stub (which
sleeps like a slow GPU) or the tiny model on CPUs; jobs arrive with the shipped ``[watch]`` values.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from daemon.config import Settings, load_settings
from tests.helpers import write_config

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from daemon.cluster.ray_executor import RayExecutor  # noqa: E402
from daemon.service.loop import Service  # noqa: E402
from tests.rayhelper import as_users_run_it, drop, inbox_digests, ray_processes, records, wait_for  # noqa: E402

CLI = [sys.executable, "-m", "daemon.cli"]
FAKE_GPUS = {"num_cpus": 2, "num_gpus": 2}


@pytest.fixture(autouse=True, scope="module")
def no_ray_token_in_this_process() -> Iterator[None]:
    """The Rays started inside pytest run without token authentication.

    Ray's in-process multi-node helper (``ray.cluster_utils``) cannot start nodes under token
    authentication, and the first ``ray.init`` of a process fixes the mode for the rest of it.
    The daemons these tests start as ``i2vd`` processes run as users run them: with tokens.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        yield


@pytest.fixture(autouse=True)
def no_ray_left() -> Iterator[None]:
    """Each test leaves no Ray process behind (those of other runs on this machine are not ours)."""
    before = ray_processes()
    yield
    deadline = time.monotonic() + 30
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left behind: {left}"


def settings_for(tmp_path: Path, model: str, cluster: dict[str, object], **sections: Any) -> Settings:
    gen = {"num_frames": 4, "steps": 8, "resolution": "512p", **sections.pop("generation", {})}
    return load_settings(
        write_config(tmp_path, model, gen, cluster={"backend": "ray", **cluster}, **sections)
    )


def busy(executor: RayExecutor, min_step: int = 1) -> list[Any]:
    return [w for w in executor.board.snapshot() if w.job and (w.step or 0) >= min_step]


def pid_of(executor: RayExecutor, name: str) -> int:
    [info] = [info for n, _, info in executor.workers() if n == name]
    return int(info.pid)


# -- without Ray running: the config, what travels back, what status and the page show ----


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"workers": 0}, 'must be "auto" or a number of workers'),
        ({"address": "somewhere"}, "HOST:PORT"),
        ({"gpus_per_worker": 0, "cpus_per_worker": 0}, "set cpus_per_worker above 0"),
        ({"backend": "slurm"}, "cluster.backend"),
    ],
)
def test_cluster_settings_that_cannot_work_are_refused_naming_the_key(
    tmp_path: Path, cluster: dict[str, object], message: str
) -> None:
    from daemon.config import ConfigError

    with pytest.raises(ConfigError, match="cluster") as caught:
        settings_for(tmp_path, "stub", cluster)
    assert message in str(caught.value)


def test_files_encoded_on_a_worker_are_published_only_when_intact(tmp_path: Path) -> None:
    from daemon.encode.ffmpeg import select_ffmpeg
    from daemon.encode.onepass import encode_job
    from daemon.job.encoded import EncodedFiles, TransferError

    frames = np.zeros((4, 48, 64, 3), dtype=np.uint8)
    worker_dir, out = tmp_path / "worker", tmp_path / "out"
    worker_dir.mkdir()
    out.mkdir()
    ffmpeg = select_ffmpeg(None)
    enc = encode_job(frames, 8, worker_dir, "cup", {}, ffmpeg=ffmpeg)
    files = EncodedFiles.collect(enc, ffmpeg.version)
    published = files.publish(out)
    assert published.master.read_bytes() == (worker_dir / "cup.mp4").read_bytes()
    damaged = EncodedFiles(**{**files.__dict__, "files": {"cup.mp4": b"not the clip"}, "master": "cup.mp4"})
    (out / "cup.mp4").unlink()
    with pytest.raises(TransferError, match="damaged"):
        damaged.publish(out)
    assert not (out / "cup.mp4").exists()  # nothing half-published


def test_status_and_the_share_page_show_every_worker() -> None:
    from daemon.listeners.page_render import _now_box
    from daemon.service.status_file import render

    status = {
        "state": "busy",
        "current": {"job": "cup_1", "worker": "ray-0", "step": 3, "total": 8},
        "in_flight": [
            {"job": "cup_1", "worker": "ray-0", "step": 3, "total": 8},
            {"job": "bowl_1", "worker": "ray-1", "step": 5, "total": 8},
        ],
        "workers": [
            {
                "name": "ray-0",
                "host": "gpu1",
                "device": "NVIDIA H200 (GPU 0)",
                "state": "busy",
                "job": "cup_1",
            },
            {
                "name": "ray-1",
                "host": "gpu2",
                "device": "NVIDIA H200 (GPU 0)",
                "state": "busy",
                "job": "bowl_1",
            },
            {
                "name": "ray-2",
                "host": "gpu3",
                "device": "none",
                "state": "lost",
                "error": "FileNotFoundError: x",
            },
        ],
    }
    text = render({**status, "running": True})  # as read_status returns it
    assert "workers  2 of 3 ready" in text
    assert "ray-1  gpu2  NVIDIA H200 (GPU 0)  bowl_1 step 5/8" in text
    assert "ray-2  gpu3  none  lost (FileNotFoundError: x)" in text
    assert "workers" not in render({**status, "running": False}), "a stopped daemon's workers went with it"
    page = _now_box(status)
    assert page.count('class="box now"') == 2 and "on gpu2" in page and "Step 5 of 8" in page


def test_metrics_show_every_worker_and_its_step() -> None:
    import urllib.request

    from daemon.listeners.metrics import MetricsListener

    metrics = MetricsListener("127.0.0.1:0")
    try:
        metrics.on_status(
            {
                "in_flight": [{"job": "cup_1", "worker": "ray-1", "step": 5, "total": 8}],
                "workers": [
                    {"name": "ray-0", "host": "gpu1", "device": "cpu", "state": "lost"},
                    {"name": "ray-1", "host": "gpu2", "device": "cpu", "state": "busy", "job": "cup_1"},
                ],
            }
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        metrics.close()
    assert 'i2vd_worker_up{device="cpu",host="gpu1",worker="ray-0"} 0.0' in text
    assert 'i2vd_worker_up{device="cpu",host="gpu2",worker="ray-1"} 1.0' in text
    assert 'i2vd_worker_job_step{worker="ray-1"} 5.0' in text
    assert 'i2vd_worker_job_steps_total{worker="ray-1"} 8.0' in text


def test_the_private_rays_token_is_the_daemons_alone_and_the_environment_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daemon.cluster import lockdown

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / ".i2vd"
    state.mkdir(mode=0o700)
    (state / "ray-token").symlink_to(tmp_path / "elsewhere")  # what a stranger might leave there
    before = dict(os.environ)

    sealed = lockdown.seal(state)
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert token == state / "ray-token" and not token.is_symlink()
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text()) == 64
    assert not (tmp_path / "elsewhere").exists()  # replaced, never written through
    assert os.environ["RAY_AUTH_MODE"] == "token" and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    lockdown.unseal(state, sealed)
    assert dict(os.environ) == before and not token.exists()

    # An operator's own choice stands: no token of ours where authentication is off.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    lockdown.unseal(state, lockdown.seal(state))
    assert os.environ["RAY_AUTH_MODE"] == "disabled" and not token.exists()


# -- one machine, fake GPUs --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("max_attempts", "outcome"), [(3, "done"), (1, "failed")])
def test_a_worker_killed_mid_job_is_restarted_and_its_job_runs_again_once(
    tmp_path: Path, max_attempts: int, outcome: str
) -> None:
    settings = settings_for(tmp_path, "stub:4", {"gpus_per_worker": 1}, limits={"max_attempts": max_attempts})
    drop(settings.paths.inbox, "cup")
    executor = RayExecutor(settings, ray_options=FAKE_GPUS)
    service = Service(settings, executor, watch=False)
    with capture_logs() as logs:
        runner = threading.Thread(target=service.run_once)
        runner.start()
        [worker] = wait_for(lambda: busy(executor), message="the job to start on a worker")
        os.kill(pid_of(executor, worker.name), signal.SIGKILL)
        if outcome == "done":
            wait_for(
                lambda: any(e["event"] == "cluster worker back after a restart" for e in logs),
                message="the killed worker to be restarted",
            )
        runner.join(120)
    assert not runner.is_alive()
    lost = [e for e in logs if e["event"] == "cluster worker lost mid-job"]
    assert [e["worker"] for e in lost] == [worker.name]
    if outcome == "done":
        [record] = records(settings.paths.outputs).values()
        assert record["attempts"] == 2  # the killed run counted once
        assert record["worker"]["name"] != worker.name  # went to the worker that was free
        assert record["status"] == "done"
        assert len(list(settings.paths.done.iterdir())) == 1
        assert not list(settings.paths.failed.iterdir())
    else:
        [folder] = list(settings.paths.failed.iterdir())
        error = (folder / "error.txt").read_text()
        assert "GPU worker making this clip stopped" in error
        assert not records(settings.paths.outputs)
    assert not list((settings.state_dir / "claimed").iterdir())


@pytest.mark.slow
def test_a_cold_stop_puts_every_job_on_every_worker_back_untouched(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "stub:60", {"gpus_per_worker": 1}, generation={"steps": 60})
    before = {**drop(settings.paths.inbox, "cup"), **drop(settings.paths.inbox, "bowl")}
    executor = RayExecutor(settings, ray_options=FAKE_GPUS)
    service = Service(settings, executor, watch=False)
    runner = threading.Thread(target=service.run)
    runner.start()
    wait_for(lambda: len(busy(executor)) == 2, message="both jobs running, one on each worker")
    assert {w.name for w in busy(executor)} == {"ray-0", "ray-1"}
    service.request_stop()
    service.request_stop()  # the second signal: interrupt now
    runner.join(60)
    assert not runner.is_alive()
    assert inbox_digests(settings.paths.inbox) == before
    assert not [p for p in settings.paths.outputs.iterdir() if p.is_dir()]
    assert not list(settings.paths.done.iterdir()) and not list(settings.paths.failed.iterdir())
    assert not list((settings.state_dir / "claimed").iterdir())


@pytest.mark.slow
def test_a_job_over_the_time_cap_is_stopped_on_its_worker_and_fails_plainly(tmp_path: Path) -> None:
    # A 3 s cap (the shipped one is 30 min) against a stand-in GPU that takes 60 s a job.
    settings = settings_for(
        tmp_path,
        "stub:60",
        {"gpus_per_worker": 1, "workers": 1},
        generation={"steps": 60},
        limits={"max_job_seconds": 3},
    )
    before = drop(settings.paths.inbox, "cup")
    executor = RayExecutor(settings, ray_options=FAKE_GPUS)
    service = Service(settings, executor, watch=False)
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        wait_for(lambda: list(settings.paths.failed.glob("cup_*/error.txt")), message="cup failed")
        # The worker is not lost or replaced: it is idle again, ready for the next job.
        wait_for(lambda: [w.state for w in executor.board.snapshot()] == ["idle"], message="worker idle")
    finally:
        service.request_stop()
        runner.join(60)
    assert not runner.is_alive()
    [folder] = settings.paths.failed.iterdir()
    assert "took longer than the 3 s allowed" in (folder / "error.txt").read_text()
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("cup.*")} == before
    assert not list((settings.state_dir / "claimed").iterdir())


@pytest.mark.slow
def test_killing_the_coordinator_with_jobs_on_workers_loses_nothing(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "stub:60",
        {"num_frames": 4, "steps": 60},
        cluster={"backend": "ray", "gpus_per_worker": 0, "cpus_per_worker": 1},
    )
    settings = load_settings(config)
    before = {**drop(settings.paths.inbox, "cup"), **drop(settings.paths.inbox, "bowl")}
    status = settings.state_dir / "status.json"
    log = (tmp_path / "run.log").open("wb")
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(config)], stdout=log, stderr=log, env=as_users_run_it()
    )
    try:

        def running() -> bool:
            try:
                state = json.loads(status.read_text())
            except (OSError, ValueError):
                return False
            return sum(1 for r in state.get("in_flight", []) if r["worker"] and r["step"]) == 2

        wait_for(running, timeout=120, message="both jobs running on the two workers")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    # The private Ray's head and workers end with their daemon; what Ray's helpers leave behind
    # the restart ends (the no_ray_left fixture checks that nothing is left).
    env = {**as_users_run_it(), "I2VD_MODEL__ID": "stub:0"}
    done = subprocess.run(
        [*CLI, "run", "--once", "--config", str(config)], env=env, capture_output=True, timeout=240
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    made = records(settings.paths.outputs)
    assert sorted(made) == ["bowl", "cup"]
    assert all(r["attempts"] == 2 for r in made.values())
    assert sorted(p.name for d in settings.paths.done.iterdir() for p in d.iterdir()) == sorted(before)
    assert not list(settings.paths.inbox.iterdir())


@pytest.mark.slow
def test_run_once_and_check_on_cpu_workers_with_the_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(
        tmp_path,
        str(tiny_model_dir),
        {"num_frames": 4, "steps": 2, "resolution": "512p"},
        cluster={"backend": "ray", "gpus_per_worker": 0, "cpus_per_worker": 1},
    )
    settings = load_settings(config)
    check = subprocess.run(
        [*CLI, "check", "--config", str(config)],
        capture_output=True,
        timeout=240,
        text=True,
        env=as_users_run_it(),
    )
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    # Only check's own lines: Ray's banner and the workers' output go to stderr, if anywhere.
    assert all(line.startswith(("ok    ", "FAIL  ")) for line in lines), check.stdout
    workers = [line for line in lines if " worker ray-" in line]
    assert len(workers) == 2 and all(line.startswith("ok") for line in workers), check.stdout
    assert all(" loaded in " in line for line in workers), check.stdout
    assert any(line.startswith("ok") and "cluster:" in line for line in lines), check.stdout
    # stdout holds the check's lines only; Ray's own output (its token banner, its logs) is not there.
    assert all(line.startswith(("ok  ", "FAIL")) for line in lines), check.stdout
    assert "Token authentication" not in check.stdout + check.stderr  # the daemon set Ray's mode itself

    drop(settings.paths.inbox, "cup")
    drop(settings.paths.inbox, "bowl")
    run = subprocess.run(
        [*CLI, "run", "--once", "--config", str(config)],
        capture_output=True,
        timeout=300,
        env=as_users_run_it(),
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    made = records(settings.paths.outputs)
    assert sorted(made) == ["bowl", "cup"]
    for record in made.values():
        assert record["status"] == "done"
        assert record["worker"]["name"] in ("ray-0", "ray-1")
        assert record["worker"]["host"] and record["worker"]["device"].startswith("cpu")
        folder = settings.paths.outputs / record["job"]
        assert (folder / record["master"]).stat().st_size > 0
        assert all((folder / r["file"]).is_file() for r in record["recipes"].values() if r["ok"])


# -- several machines (Ray nodes on this one) --------------------------------------------


@pytest.mark.slow
def test_nodes_that_cannot_load_leave_and_join(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node without the model is reported and left out; when the last good node leaves, jobs
    wait in the inbox with one log line; a node that joins gets a worker and the jobs run."""
    from ray.cluster_utils import Cluster

    # Each node finds the model at ~/tiny, as after `i2vd fetch-model` on it; node B never fetched it.
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    home_a.mkdir()
    home_b.mkdir()
    (home_a / "tiny").symlink_to(tiny_model_dir)
    # The head is machine B (three Ray nodes in all: each takes seconds to start on 2 cores).
    # Its own session folder (short: Ray's socket paths must fit 107 bytes), removed afterwards.
    temp = tempfile.mkdtemp(prefix="i2vd-ray-")
    # Ray's test cluster also writes its address under $RAY_TMPDIR/ray (default /tmp/ray, which a
    # fresh machine does not have): keep that in the test's folder too.
    monkeypatch.setenv("RAY_TMPDIR", temp)
    os.makedirs(os.path.join(temp, "ray"), exist_ok=True)
    cluster = Cluster(initialize_head=False)
    try:
        # The head inside the try: should it fail half-started, shutdown() still ends what began.
        cluster.add_node(num_cpus=1, num_gpus=1, env_vars={"HOME": str(home_b)}, temp_dir=temp)
        node_a = cluster.add_node(num_cpus=1, num_gpus=1, env_vars={"HOME": str(home_a)}, temp_dir=temp)
        settings = settings_for(
            tmp_path, "~/tiny", {"address": cluster.address, "gpus_per_worker": 1}, generation={"steps": 2}
        )
        executor = RayExecutor(settings)
        service = Service(settings, executor, watch=False)
        with capture_logs() as logs:
            runner = threading.Thread(target=service.run)
            runner.start()
            wait_for(service.started.is_set, message="the daemon to start")
            states = {w.state: w for w in executor.board.snapshot()}
            assert set(states) == {"idle", "lost"} and executor.capacity == 1
            assert "tiny" in (states["lost"].error or "")  # the load error names the model it missed
            good = states["idle"].name

            drop(settings.paths.inbox, "cup")
            wait_for(lambda: records(settings.paths.outputs).get("cup"), message="cup made on node A")
            assert records(settings.paths.outputs)["cup"]["worker"]["name"] == good

            cluster.remove_node(node_a)
            wait_for(lambda: executor.capacity == 0, message="capacity 0 once node A left")
            drop(settings.paths.inbox, "bowl")
            time.sleep(settings.watch.settle_seconds + 3)  # long enough to have been taken, were it
            assert sorted(p.name for p in settings.paths.inbox.iterdir()) == ["bowl.png", "bowl.txt"]
            assert not list(settings.paths.failed.iterdir())

            cluster.add_node(num_cpus=1, num_gpus=1, env_vars={"HOME": str(home_a)}, temp_dir=temp)
            wait_for(lambda: records(settings.paths.outputs).get("bowl"), message="bowl made on the new node")
            service.request_stop()
            runner.join(60)
        assert not runner.is_alive()
        waits = [e for e in logs if e["event"].startswith("no cluster worker is available")]
        assert len(waits) == 1
        assert any(e["event"] == "cluster workers available again" for e in logs)
        assert not list(settings.paths.failed.iterdir())
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_a_joined_cluster_without_gpus_says_what_the_start_waits_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster whose GPU machines have not joined yet: ``i2vd check`` says what is missing at
    once; the daemon's start says it in the log and goes on when a machine with a GPU joins."""
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="i2vd-ray-")
    monkeypatch.setenv("RAY_TMPDIR", temp)
    os.makedirs(os.path.join(temp, "ray"), exist_ok=True)
    cluster = Cluster(initialize_head=False)
    try:
        cluster.add_node(num_cpus=1, num_gpus=0, temp_dir=temp)  # a head like i2vd-ray-head's
        settings = settings_for(tmp_path, "stub", {"address": cluster.address, "gpus_per_worker": 1})
        missing = "the cluster has 0 GPUs; gpus_per_worker = 1 needs them"

        checking = RayExecutor(settings)
        with pytest.raises(RuntimeError, match=missing):
            checking.start(warm_up=None, wait_for_machines=False)

        executor = RayExecutor(settings)
        with capture_logs() as logs:
            starter = threading.Thread(target=executor.start, kwargs={"warm_up": None})
            starter.start()
            try:
                wait_for(
                    lambda: [e for e in logs if e["event"] == "waiting for machines to join the cluster"],
                    message="the start to say what it waits for",
                )
                waiting = [e for e in logs if e["event"] == "waiting for machines to join the cluster"]
                assert missing in waiting[0]["reason"]
                cluster.add_node(num_cpus=1, num_gpus=1, temp_dir=temp)  # a GPU machine joins
                starter.join(120)
                assert not starter.is_alive()
                assert executor.capacity == 1
            finally:
                starter.join(180)
                executor.close()
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
