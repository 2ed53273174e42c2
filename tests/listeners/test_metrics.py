"""The Prometheus endpoint, scraped over real HTTP."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import ConfigError, load_settings
from daemon.job.record import JobRecord
from daemon.listeners.events import JobFinished
from daemon.listeners.metrics import MetricsListener, parse_address


@pytest.fixture
def listener() -> Iterator[MetricsListener]:
    m = MetricsListener("127.0.0.1:0")  # port 0: the system picks a free one
    yield m
    m.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9310") == ("127.0.0.1", 9310)
    assert parse_address("[::1]:9310") == ("::1", 9310)
    assert parse_address(":9310") == ("0.0.0.0", 9310)
    for bad in ("9310", "localhost", "::1:9310", "host:99999"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_config_rejects_bad_address(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[metrics]\naddress = "localhost"\n')
    with pytest.raises(ConfigError, match=r"metrics\.address"):
        load_settings(cfg)
    cfg.write_text('[metrics]\naddress = "127.0.0.1:9310"\n')
    assert load_settings(cfg).metrics.address == "127.0.0.1:9310"


def test_endpoint_reports_jobs_and_progress(listener: MetricsListener, tmp_path: Path) -> None:
    before = scrape(listener.port)
    assert before[("i2vd_jobs_total", (("outcome", "done"),))] == 0
    assert before[("i2vd_jobs_total", (("outcome", "failed"),))] == 0

    listener.on_status(
        {
            "state": "busy",
            "current": {"job": "cat_1", "step": 12, "total": 50, "eta_seconds": 40.0},
            "queue_length": 3,
        }
    )
    info = {
        "job": "cat_1",
        "timings": {"generate_seconds": 42.5, "encode_seconds": 1.5},
        "recipes": {"poster": {"ok": True}, "gif": {"ok": False, "error": "boom"}},
    }
    listener.on_job_finished(JobFinished("cat_1", "done", tmp_path, JobRecord.model_validate(info), None))
    listener.on_job_finished(JobFinished("dog_1", "failed", tmp_path, None, "not an image"))

    after = scrape(listener.port)
    assert after[("i2vd_queue_jobs", ())] == 3
    assert after[("i2vd_busy", ())] == 1
    assert after[("i2vd_current_job_step", ())] == 12
    assert after[("i2vd_current_job_steps_total", ())] == 50
    assert after[("i2vd_jobs_total", (("outcome", "done"),))] == 1
    assert after[("i2vd_jobs_total", (("outcome", "failed"),))] == 1
    assert after[("i2vd_generate_seconds_count", ())] == 1
    assert after[("i2vd_generate_seconds_sum", ())] == 42.5
    assert after[("i2vd_generate_seconds_bucket", (("le", "45.0"),))] == 1
    assert after[("i2vd_generate_seconds_bucket", (("le", "30.0"),))] == 0
    assert after[("i2vd_encode_seconds_sum", ())] == 1.5
    assert after[("i2vd_recipes_total", (("outcome", "done"), ("recipe", "poster")))] == 1
    assert after[("i2vd_recipes_total", (("outcome", "failed"), ("recipe", "gif")))] == 1
    assert after[("i2vd_last_job_finished_timestamp_seconds", ())] > 0
    # The test machine has no CUDA: the GPU gauges stay absent rather than report a false 0.
    assert not any(name.startswith("i2vd_gpu_memory") for name, _ in after)

    listener.on_status({"state": "idle", "current": None, "queue_length": 0})
    idle = scrape(listener.port)
    assert idle[("i2vd_busy", ())] == 0
    assert idle[("i2vd_current_job_step", ())] == 0


def test_a_nearly_full_disk_shows(listener: MetricsListener) -> None:
    listener.on_status(
        {
            "state": "idle",
            "queue_length": 2,
            "paused_reason": "disk nearly full: 3 MB free on /srv/i2vd/outputs, need 1024 MB; jobs wait",
            "disk_free_mb": {"/srv/i2vd/outputs": 3},
        }
    )
    full = scrape(listener.port)
    assert full[("i2vd_waiting_for_disk", ())] == 1
    assert full[("i2vd_disk_free_bytes", (("path", "/srv/i2vd/outputs"),))] == 3 * 1024 * 1024
    listener.on_status({"state": "idle", "paused_reason": None, "disk_free_mb": {"/srv/i2vd/outputs": 2048}})
    room = scrape(listener.port)
    assert room[("i2vd_waiting_for_disk", ())] == 0
    assert room[("i2vd_disk_free_bytes", (("path", "/srv/i2vd/outputs"),))] == 2048 * 1024 * 1024


def test_listener_survives_odd_input(listener: MetricsListener, tmp_path: Path) -> None:
    listener.on_status({"state": "busy", "current": {"job": "x", "step": "?"}})  # must not raise
    listener.on_job_finished(JobFinished("x", "done", tmp_path, JobRecord(job="x"), None))  # no timings
    assert scrape(listener.port)[("i2vd_jobs_total", (("outcome", "done"),))] == 1


def test_close_frees_the_port(listener: MetricsListener) -> None:
    port = listener.port
    listener.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    listener.close()  # twice is harmless


class _FakeCuda:
    """What the GPU gauges read from torch.cuda, on a machine with two GPUs in use."""

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def device_count() -> int:
        return 2

    @staticmethod
    def memory_allocated(index: int) -> int:
        return 1000 + index

    @staticmethod
    def max_memory_allocated(index: int) -> int:
        return 5000 + index


def test_gpu_memory_gauges(listener: MetricsListener, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_torch = type(sys)("torch")
    fake_torch.cuda = _FakeCuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    listener.on_status({"state": "idle", "current": None, "queue_length": 0})
    got = scrape(listener.port)
    assert got[("i2vd_gpu_memory_allocated_bytes", (("device", "cuda:1"),))] == 1001
    assert got[("i2vd_gpu_memory_max_allocated_bytes", (("device", "cuda:0"),))] == 5000
