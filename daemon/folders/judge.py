"""Judging the inbox's groups: which is ready to become a job, which waits and for what.

The part of ``scan.InboxScanner`` that decides, once the walk has brought a folder's files up
to date: a group is ready once all its files are settled and it is complete, or incomplete for
longer than ``watch.pair_timeout``; a last frame is judged with the job it belongs to; the ready
groups are kept in claim order, and the waiting ones (with what each waits for) are shown to people.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.folders import names
from daemon.folders.group import Group, same_group
from daemon.folders.leases import LeasesUnsupported, open_for_writing
from daemon.folders.tracked import UNREAD, TrackedFolder

# Waiting groups listed by name (status, share page); a backlog of thousands is counted, not listed.
PENDING_SHOWN = 200

_WAITING_FOR_LAST = "waiting for its last image"
_WAITING_FOR = {True: "waiting for its image", False: "waiting for its prompt file"}


class GroupJudge:
    """Judges groups and keeps the ready and waiting lists; mixed into ``scan.InboxScanner``,
    which sets every attribute below in its ``__init__`` and walks the folders."""

    inbox: Path
    settle_seconds: float
    pair_timeout: float
    alone_timeout: float | None
    clock: Callable[[], float]
    busy_limit: float
    waiting: int
    next_ready_in: float | None
    pending: list[tuple[str, str]]
    log: Any
    _lease_check: bool | None
    _folders: dict[str, TrackedFolder]
    _scan_no: int
    _ready: dict[tuple[str, str], Group]
    _ready_sorted: list[Group] | None
    _waiting: dict[tuple[str, str], tuple[float, float, int, str]]
    _waiting_files: int
    _due: list[tuple[float, str, str]]
    _pending_stale: bool

    def waiting_folders(self) -> set[str]:
        """The folders (relative to the inbox) holding groups seen but not ready yet."""
        return {rel for rel, _ in self._waiting}

    def has_group(self, rel: str, stem: str) -> bool:
        """Whether the folder ``rel`` holds files of the group NAME (ready, waiting or incomplete)."""
        f = self._folders.get(rel)
        return f is not None and stem in f.groups

    def _observe(self, f: TrackedFolder, fd: int, name: str, now: float) -> None:
        raise NotImplementedError  # the walk's: looks at one file again

    def _judge(self, f: TrackedFolder, fd: int, stem: str, now: float) -> None:
        """Decide whether one group is ready, waiting, or no job at all (companions alone).

        A group about to be ready has each of its files looked at once more in this scan,
        so a settled file rewritten in place since is seen, and settles again.
        """
        key = (f.rel, stem)
        queued = self._waiting.get(key, (0.0, now, 0, ""))[1]  # a due-list entry stands for it then
        was = self._unlist(key)
        lead = names.last_frame_of(stem)
        if lead is None or not self._lasts(f, lead):
            lead = self._lender(f, stem)
        if lead is not None:
            # NAME.last.EXT beside job NAME, or an image NAME's prompt file names as its last_image:
            # judged with NAME's files, never a job of its own.
            f.touched.add(lead)
            if was is not None:
                self._ready_sorted = None
            return
        if stem + names.LAST_MARK in f.groups and not self._lasts(f, stem):
            # NAME is gone or no job now: STEM.last.EXT is judged on its own again.
            f.touched.add(stem + names.LAST_MARK)
        while members := f.groups.get(stem):
            images, prompts, companions = names.sort_inputs(members)
            if not images and not prompts:
                break  # companions alone are no job: they wait for their photo, and never fail
            lasts = self._lasts(f, stem)
            if lasts:
                self._unlist((f.rel, stem + names.LAST_MARK))  # was waiting on its own, before NAME came
            named = self._named_last(f, fd, stem, prompts)
            missing_last = named is not None and self._lender(f, names.group_of(named)[0]) != stem
            if named is not None and not missing_last and named not in lasts:
                lasts = [*lasts, named]
            members = members + lasts
            since = max(f.files[n].since for n in members)
            quiet = now - since
            complete = len(images) == 1 and len(prompts) == 1 and not missing_last
            clash = len(images) > 1 or len(prompts) > 1  # can never become a valid pair by waiting
            timeout = self.pair_timeout
            if self.alone_timeout is not None and images and not prompts:
                timeout = self.alone_timeout
            if quiet >= self.settle_seconds and (complete or clash or quiet >= timeout):
                stale = [n for n in members if f.files[n].checked != self._scan_no]
                if stale:
                    for name in stale:
                        self._observe(f, fd, name, now)
                    f.touched.discard(stem)
                    continue
                g = self._group(f, stem, images, prompts, companions, since, lasts)
                if was is not None and same_group(was, g):
                    g = was  # unchanged: its place in the queue stands, nothing is sorted again
                self._ready[key] = g
                if g is not was:
                    self._ready_sorted = None
                return
            due = since + (self.settle_seconds if complete or clash else timeout)
            state = "arriving" if quiet < self.settle_seconds else _WAITING_FOR[bool(prompts)]
            if missing_last and images and state != "arriving":
                state = _WAITING_FOR_LAST
            self._waiting[key] = (since, due, len(members), state)
            self._waiting_files += len(members)
            self._pending_stale = True
            if due != queued:
                heapq.heappush(self._due, (due, f.rel, stem))
            break
        if was is not None:
            self._ready_sorted = None  # it left the ready list

    def _lasts(self, f: TrackedFolder, stem: str) -> list[str]:
        """The images ``STEM.last.EXT`` that go with job STEM's files (see ``names.lends_last_frame``)."""
        last = f.groups.get(stem + names.LAST_MARK)
        if not last or not names.lends_last_frame(f.groups.get(stem, ()), last):
            return []
        return sorted(last)

    def _named_last(self, f: TrackedFolder, fd: int, stem: str, prompts: list[str]) -> str | None:
        """The file job STEM's ``.toml``/``.json`` prompt file names as ``last_image``, or None.

        Read once the prompt file has settled (and again only when it changes); the image named
        is then judged with this job (``_lender``) and waited for, up to ``pair_timeout``.
        """
        if len(prompts) != 1:
            return None
        file = f.files[prompts[0]]
        if file.lends == UNREAD:
            if prompts[0] in f.settling or names.split_name(prompts[0])[1] not in (".toml", ".json"):
                return None
            file.lends = names.named_last_image(prompts[0], names.sniff(prompts[0], dir_fd=fd))
            if file.lends is not None and file.lends not in f.groups.get(stem, ()):
                f.lent[file.lends] = stem
                f.touched.add(names.group_of(file.lends)[0])
        return file.lends if file.lends not in f.groups.get(stem, ()) else None

    def _lender(self, f: TrackedFolder, stem: str) -> str | None:
        """The job whose prompt file names this group's one image as its ``last_image``; None when
        there is none, or the group holds more (with a prompt file of its own it is a job of its own)."""
        members = f.groups.get(stem)
        if not members or len(members) != 1:
            return None
        lender = f.lent.get(members[0])
        return lender if lender is not None and lender != stem and f.groups.get(lender) else None

    def _unlist(self, key: tuple[str, str]) -> Group | None:
        """Take a group off the ready and waiting lists; returns it if it was ready (the
        caller re-sorts the ready list, or puts it back unchanged)."""
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            self._waiting_files -= waiting[2]
            self._pending_stale = True
        return self._ready.pop(key, None)

    def _current(self, entry: tuple[float, str, str]) -> bool:
        """Whether a due-list entry still stands for its group (it is waiting, due then)."""
        waiting = self._waiting.get(entry[1:])
        return waiting is not None and waiting[1] == entry[0]

    def _touch_due(self, now: float) -> None:
        """Mark for judging every waiting group whose time has come."""
        while self._due and self._due[0][0] <= now:
            entry = heapq.heappop(self._due)
            if self._current(entry) and entry[1] in self._folders:
                self._folders[entry[1]].touched.add(entry[2])

    def _claim_order(self) -> list[Group]:
        if self._ready_sorted is None:
            self._ready_sorted = sorted(self._ready.values(), key=lambda g: (g.since, str(g.rel_dir), g.name))
        return self._ready_sorted

    def _sum_up(self, now: float) -> None:
        """What waits: how many files, what is shown to people, when the next group is due."""
        due = self._due
        while due and not self._current(due[0]):
            heapq.heappop(due)  # judged again since: a newer entry stands for it
        if len(due) > 2 * len(self._waiting) + 64:
            self._due = due = [(w[1], rel, stem) for (rel, stem), w in self._waiting.items()]
            heapq.heapify(due)
        self.next_ready_in = max(0.0, due[0][0] - now) if due else None
        self.waiting = self._waiting_files
        if self._pending_stale:
            self._pending_stale = False
            oldest = heapq.nsmallest(PENDING_SHOWN, ((w[0], key) for key, w in self._waiting.items()))
            self.pending = [(self._shown(key), self._waiting[key][3]) for _, key in oldest]

    def _shown(self, key: tuple[str, str]) -> str:
        """A waiting group's name as people know it: where its job will be filed, and its NAME."""
        rel, stem = key
        home = self._folders[rel].home if rel in self._folders else rel
        return stem if home == "." else f"{home}/{stem}"

    def _group(
        self,
        f: TrackedFolder,
        stem: str,
        images: list[str],
        prompts: list[str],
        companions: list[str],
        since: float,
        lasts: list[str],
    ) -> Group:
        folder = self.inbox / f.rel
        g = Group(Path(f.home), stem, since=since)
        if f.home != f.rel:
            g.src_dir = Path(f.rel)
            g.leftovers = [folder / n for n in sorted(f.own)]
        g.images = [folder / n for n in images]
        g.sidecars = [folder / n for n in prompts]
        g.companions = [folder / n for n in companions]
        g.lasts = [folder / n for n in lasts]
        g.sigs = {folder / n: f.files[n].sig for n in (*images, *prompts, *companions, *lasts)}
        if self._lease_check:
            g.held_open = self._held_open_since(since)
        return g

    def _held_open_since(self, since: float) -> Callable[[Path], bool]:
        def held_open(path: Path) -> bool:
            # Unchanged for busy_limit while held open: its writer is stuck or gone.
            return self.clock() - since < self.busy_limit and self.held_open(path)

        return held_open

    def held_open(self, path: Path) -> bool:
        """Whether another process has ``path`` open for writing (checked by the claim, just
        before it moves the file); False when the kernel cannot tell us here."""
        if not self._lease_check:
            return False
        try:
            return open_for_writing(path) is True
        except LeasesUnsupported as e:
            # Settling alone decides from now on, as on a network mount.
            self._lease_check = False
            self.log.info(
                "cannot ask the kernel whether inbox files are still being written; "
                "relying on settle_seconds alone",
                inbox=str(self.inbox),
                reason=str(e),
            )
            return False
