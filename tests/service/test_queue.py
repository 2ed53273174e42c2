"""The queue: which ready job goes next ([queue] order and priority), and the daily window."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from daemon.active_hours import ActiveHours, parse_window
from daemon.folders.scan import Group
from daemon.service.turns import Turns, line_of


def ready(*specs: tuple[str, str, float]) -> list[Group]:
    """Groups as the scanner hands them over: oldest first."""
    groups = [Group(rel_dir=Path(folder), name=name, since=since) for folder, name, since in specs]
    return sorted(groups, key=lambda g: (g.since, str(g.rel_dir), g.name))


def names(groups: list[Group]) -> list[str]:
    return [(g.rel_dir / g.name).as_posix() for g in groups]


def take_all(turns: Turns) -> list[str]:
    out = []
    while (g := turns.take()) is not None:
        out.append((g.rel_dir / g.name).as_posix())
    return out


def test_the_line_of_a_job_is_its_top_level_folder() -> None:
    assert line_of(Path(".")) == ""
    assert line_of(Path("marketing")) == "marketing"
    assert line_of(Path("marketing/2026/may")) == "marketing"


def test_fair_turns_let_one_job_of_a_quiet_folder_past_a_backlog() -> None:
    backlog = [("marketing", f"m{i:03d}", float(i)) for i in range(500)]
    turns = Turns("fair")
    turns.load(ready(*backlog, ("sales", "s1", 600.0), (".", "top", 700.0)))
    assert len(turns) == 502
    first = take_all(turns)[:4]
    # marketing's oldest was first in line; then each other folder gets its turn.
    assert first == ["marketing/m000", "sales/s1", "top", "marketing/m001"]


def test_a_folder_served_just_now_waits_for_the_others_after_a_new_scan() -> None:
    turns = Turns("fair")
    turns.load(ready(("a", "a1", 1), ("a", "a2", 2), ("a", "a3", 3)))
    assert turns.take().name == "a1"
    # The next scan: a's rest, and b's one job which became ready later than all of a's.
    turns.load(ready(("a", "a2", 2), ("a", "a3", 3), ("b", "b1", 9)))
    assert take_all(turns) == ["b/b1", "a/a2", "a/a3"]


def test_arrival_takes_strictly_the_oldest_ready() -> None:
    turns = Turns("arrival")
    turns.load(ready(("a", "a1", 1), ("a", "a2", 2), ("b", "b1", 3), ("a", "a3", 4)))
    assert take_all(turns) == ["a/a1", "a/a2", "b/b1", "a/a3"]


@pytest.mark.parametrize("order", ["fair", "arrival"])
def test_priority_folders_go_first_in_the_order_listed(order: str) -> None:
    turns = Turns(order, ["urgent", "boss"])
    turns.load(
        ready(("a", "a1", 1), ("boss", "x1", 2), ("urgent", "u1", 3), ("b", "b1", 4), ("urgent", "u2", 5))
    )
    taken = take_all(turns)
    assert taken[:3] == ["urgent/u1", "urgent/u2", "boss/x1"]
    assert sorted(taken[3:]) == ["a/a1", "b/b1"]


def test_upcoming_is_what_take_hands_out_and_takes_nothing() -> None:
    turns = Turns("fair", ["urgent"])
    turns.load(
        ready(
            *[("a", f"a{i}", float(i)) for i in range(20)],
            ("b", "b1", 30),
            ("urgent", "u", 40),
            (".", "t", 50),
        )
    )
    turns.take()
    shown = names(turns.upcoming(10))
    assert len(turns) == 22
    assert shown == take_all(turns)[:10]


def test_a_backlog_of_thousands_costs_one_pass_per_scan() -> None:
    # Not a timing: the turns keep one line per folder, so taking looks at a few heads.
    turns = Turns("fair")
    turns.load(ready(*[(f"f{i % 7}", f"n{i}", float(i)) for i in range(5000)]))
    assert len(turns._lines) == 7
    assert len(turns.upcoming(200)) == 200


# -- active_hours ------------------------------------------------------------------------------


def at(hour: int, minute: int = 0) -> ActiveHours:
    return ActiveHours.of("20:00-07:00", now=lambda: datetime(2026, 5, 4, hour, minute).astimezone())


def test_an_overnight_window_is_open_at_night_only() -> None:
    assert at(20).open_now() and at(23, 59).open_now() and at(0).open_now() and at(6, 59).open_now()
    assert not at(7).open_now() and not at(12).open_now() and not at(19, 59).open_now()
    assert at(19).opens_in() == 3600.0
    assert at(7).opens_in() == 13 * 3600.0


def test_a_daytime_window_and_no_window() -> None:
    day = ActiveHours.of("09:30-17:00", now=lambda: datetime(2026, 5, 4, 9, 0).astimezone())
    assert day.opens_in() == 1800.0
    assert ActiveHours.of("").open_now()


@pytest.mark.parametrize("bad", ["20-07", "25:00-01:00", "10:60-11:00", "08:00-08:00", "night"])
def test_a_window_that_cannot_be_read_is_refused_naming_the_form(bad: str) -> None:
    with pytest.raises(ValueError, match=r"HH:MM-HH:MM|empty window"):
        parse_window(bad)


# -- the loop: active_hours with an injected wall clock ----------------------------------------


def test_a_job_started_inside_the_window_finishes_and_the_next_waits_for_it_to_open(tmp_path: Path) -> None:
    import threading

    from test_service import RecordingStub, config, drop

    from daemon.service.loop import Service

    settings = config(tmp_path, '[queue]\nactive_hours = "20:00-07:00"\n')
    settings.generation.steps = 20
    wall = [datetime(2026, 5, 4, 6, 59).astimezone()]  # one minute before the window closes
    drop(settings.paths.inbox, "late", prompt="late")
    gen = RecordingStub(seconds=3)
    service = Service(settings, gen, watch=False, wall=lambda: wall[0])
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        with gen.called:
            assert gen.called.wait_for(lambda: gen.calls, timeout=60)
        wall[0] = datetime(2026, 5, 4, 7, 1).astimezone()  # closed while it generates
        drop(settings.paths.inbox, "next", prompt="next")
        for _ in range(600):
            if service.results:
                break
            threading.Event().wait(0.1)
        assert [r.job.stem for r in service.results] == ["late"] and service.results[0].ok
        for _ in range(600):  # "next" is ready, and not taken while the window is closed
            if service.monitor.queued()[0] == ["next"]:
                break
            threading.Event().wait(0.1)
        for _ in range(10):
            service._work.set()
            threading.Event().wait(0.1)
        status = service._status(None, 0.0)
        assert status["active_hours"]["open"] is False
        assert status["active_hours"]["opens_at"].startswith("2026-05-04T20:00")
        assert gen.calls == ["late"]
        assert (settings.paths.inbox / "next.png").exists()
        wall[0] = datetime(2026, 5, 4, 20, 0).astimezone()  # the window opens
        with gen.called:
            assert gen.called.wait_for(lambda: len(gen.calls) == 2, timeout=60)
        assert gen.calls == ["late", "next"]
    finally:
        service.request_stop()
        runner.join(120)
    assert not runner.is_alive()


# -- NAME.cancel files in the inbox --------------------------------------------------------------


def test_a_cancel_file_is_a_request_never_part_of_a_job_nor_an_orphan(tmp_path: Path) -> None:
    import os

    from helpers import Clock, png_bytes

    from daemon.folders.scan import InboxScanner

    inbox = tmp_path / "inbox"
    (inbox / "team").mkdir(parents=True)
    (inbox / "team" / "cat.png").write_bytes(png_bytes())
    (inbox / "team" / "cat.txt").write_text("a cat")
    (inbox / "team" / "cat.cancel").write_text("")
    (inbox / "dog.CANCEL").write_text("")  # alone: no job, and never failed as an orphan
    (tmp_path / "elsewhere.cancel").write_text("")
    os.symlink(tmp_path / "elsewhere.cancel", inbox / "team" / "linked.cancel")
    clock = Clock()
    scanner = InboxScanner(inbox, ignore=[".*"], settle_seconds=3, pair_timeout=120, clock=clock)
    scanner.scan()
    clock.t += 200  # past settling and the pair timeout
    ready = scanner.scan()
    assert [(g.rel_dir.as_posix(), g.name, sorted(p.name for p in g.files)) for g in ready] == [
        ("team", "cat", ["cat.png", "cat.txt"])
    ]
    assert sorted(scanner.cancel_files()) == [(".", "dog"), ("team", "cat")]
    assert scanner.pending == [] and scanner.waiting == 0
    (inbox / "team" / "cat.cancel").unlink()
    scanner.scan()
    assert scanner.cancel_files() == [(".", "dog")]


def test_taking_a_job_out_of_the_queue_to_cancel_it_keeps_the_others_in_turn() -> None:
    turns = Turns("fair")
    turns.load(ready(("a", "a1", 1), ("a", "cat", 2), ("b", "cat", 3), ("b", "b2", 4)))
    out = turns.withdraw(lambda g: g.rel_dir == Path("b") and g.name == "cat")
    assert names(out) == ["b/cat"] and len(turns) == 3
    assert take_all(turns) == ["a/a1", "b/b2", "a/cat"]


# -- batches: a folder's last waiting job filed ----------------------------------------------------


def test_a_batch_is_done_once_nothing_of_its_folder_is_in_progress_ready_or_arriving(tmp_path: Path) -> None:
    from daemon.folders.jobs import Job
    from daemon.service.batches import Batches

    def job(rel: str, name: str) -> Job:
        d = tmp_path / "claimed" / rel / name
        d.mkdir(parents=True)
        return Job(name=name, stem=name[:2], rel_dir=Path(rel), dir=d, files=[], claimed_at=datetime.now())

    batches = Batches(lambda: datetime(2026, 5, 4, 12, 0).astimezone())
    waiting = {"team": True}
    a1, a2, back, top = job("team", "a1_x"), job("team/sub", "a2_x"), job("team", "b_x"), job(".", "t_x")
    for j in (a1, a2, back, top):
        batches.claimed(j)
    a1.dir.rmdir()
    batches.filed(a1, True)
    assert batches.step(lambda f: waiting.get(f, False)) == []  # more of team in progress
    a2.dir.rmdir()
    batches.filed(a2, False)
    assert batches.step(lambda f: waiting.get(f, False)) == []  # team still has jobs ready
    back.dir.rmdir()  # put back into the inbox (a full disk): never filed, no longer in progress
    waiting["team"] = False
    top.dir.rmdir()
    batches.filed(top, True)
    batches.filed(a2, True)  # a later job of team, filed: team is done
    done = {e.folder: e for e in batches.step(lambda f: waiting.get(f, False))}
    assert done["."].to_json()["done"] == 1
    team = done["team"]
    assert (team.done, team.failed, team.first_job, team.last_job) == (2, 1, "a1_x", "a2_x")
    assert batches.step(lambda f: False) == []  # said once


def test_systemctl_status_says_paused_by_whom_or_outside_the_window() -> None:
    from daemon.listeners import systemd

    since = "2026-05-04T12:00:00+00:00"
    paused = {"state": "idle", "queue_length": 4, "paused": {"since": since, "by": "ana"}}
    assert systemd.status_line(paused) == f"idle, 4 queued, paused by ana since {since}"
    night = {"state": "idle", "queue_length": 2, "active_hours": {"window": "20:00-07:00", "open": False}}
    assert systemd.status_line(night) == "idle, 2 queued, outside active hours 20:00-07:00"
