"""Estimates of when waiting jobs start and are ready: the history kept and the queue played forward."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.service.estimates import Durations, schedule


def test_the_queue_played_forward_on_two_workers() -> None:
    # One worker free in 4 s, one now; jobs of 10 s, 2 s to encode.
    plan = schedule([4.0, 0.0], 3, 10.0, 2.0)
    assert plan == [(0.0, 12.0), (4.0, 16.0), (10.0, 22.0)]


def test_nothing_is_promised_without_a_measure_or_while_paused() -> None:
    assert schedule([0.0], 2, None, 1.0) == [None, None]
    assert schedule([0.0], 1, 5.0, 1.0, hold=None) == [None]
    assert schedule([0.0], 1, 5.0, 1.0, hold=3600.0) == [(3600.0, 3606.0)]


def test_the_history_is_per_kind_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    d = Durations(tmp_path)
    d.load()
    assert d.generate() is None
    for i in range(100):
        d.add((64, 96, 16, 4, 1), 10.0 + i % 3, 1.0)
        d.add((i + 1, 96, 16, 4, 1), 99.0, None)  # many kinds: the oldest are forgotten
    d.save()  # written at most every 30 s while jobs are filed, and at stop
    again = Durations(tmp_path)
    again.load()
    assert again.generate((64, 96, 16, 4, 1)) == 11.0
    assert again.encode() == 1.0
    data = json.loads((tmp_path / "durations.json").read_text())
    assert len(data["kinds"]) <= 64 and all(len(k["seconds"]) <= 8 for k in data["kinds"])
    assert (tmp_path / "durations.json").stat().st_mode & 0o077 == 0


def test_a_history_file_that_is_not_ours_or_not_sane_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "durations.json").write_text(
        json.dumps({"kinds": [{"kind": [1, 2, 3, 4, 5], "seconds": [1e300, -1, "x", 7.0]}], "recent": [1e99]})
    )
    d = Durations(tmp_path)
    d.load()
    assert d.generate((1, 2, 3, 4, 5)) == 7.0 and d.generate() is None
    (tmp_path / "durations.json").unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps({"recent": [5.0]}))
    (tmp_path / "durations.json").symlink_to(tmp_path / "elsewhere.json")
    d = Durations(tmp_path)
    d.load()
    assert d.generate() is None
