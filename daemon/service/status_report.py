"""What the daemon says about itself: status.json's content, ETAs, active hours, folders finished."""

from __future__ import annotations

from typing import Any

from daemon.listeners.events import tell_folder_done
from daemon.service.estimates import Kind, plan
from daemon.service.parts import ServiceParts
from daemon.service.status_file import build_status
from daemon.states import DaemonState, Outcome


class StatusReport(ServiceParts):
    """Building the status; mixed into ``loop.Service`` (its parts: ``ServiceParts``)."""

    def publish_status(self, state: str | None = None) -> None:
        self.publisher.publish(state)

    def _status(self, state: str | None, now: float) -> dict[str, Any]:
        queue, ready = self.monitor.queued()
        left, encode, waiting = self._estimates(queue, now)
        return build_status(
            state=state or (DaemonState.BUSY if self.flights else DaemonState.IDLE),
            model=self.executor.model.model_id,
            workers=self.executor.board.snapshot(),
            in_flight=self.flights.names(),
            encoding=list(self.filer.encoding),
            queue=queue,
            queue_length=ready + len(self._resume),
            scanner=self.monitor.scanner,
            recent=[
                {
                    "job": r.job.name,
                    "outcome": Outcome.DONE if r.ok else Outcome.FAILED,
                    "error": r.error,
                    # Under outputs/ or failed/: `i2vd status` leaves out a folder no longer there.
                    "folder": (r.job.rel_dir / r.job.name).as_posix(),
                }
                # A copy first (one C call, atomic under the GIL): the filing thread appends to
                # the deque meanwhile, and iterating it while that happens raises.
                for r in list(self.results)[:-21:-1]
            ],
            now=now,
            paused_reason=self.disk.last,
            disk_free_mb=dict(self.disk.free),
            paused=self._held_shown[0].as_status() if self._held_shown[0] else None,
            active_hours=self._hours_status(),
            left=left,
            encode_seconds=encode,
            waiting=waiting,
            batches=list(self.batches_done),
        )

    def _batches_done(self) -> None:
        """Tell the webhooks and the page of each folder whose last waiting job was filed."""
        for event in self.batches.step(self.monitor.waiting_in):
            self.log.info(
                "every job of a folder is filed",
                folder=event.folder,
                done=event.done,
                failed=event.failed,
                first_job=event.first_job,
                last_job=event.last_job,
            )
            self.batches_done.appendleft(event.to_json())
            self.publisher.tell(lambda listener, e=event: tell_folder_done(listener, e))
            self._want_status()

    def _kind(self, width: int, height: int, frames: int, steps: int) -> Kind:
        return (width, height, frames, steps, self.executor.capacity)

    def _estimates(
        self, queue: list[str], now: float
    ) -> tuple[dict[str, float], float, list[dict[str, Any]]]:
        """What ``estimates.plan`` says of the jobs in flight and the listed waiting ones."""
        hold: float | None = 0.0
        if self._held_shown[0] is not None or self.disk.last:
            hold = None  # nothing starts until someone acts: no start time is promised
        elif self.hours.window is not None:
            hold = self.hours.opens_in()
        in_flight = [(p.job.name, self._kind(p.request.width, p.request.height, p.request.num_frames,
                      p.request.steps)) for p in self.flights.prepared()]  # fmt: skip
        return plan(
            self.durations,
            in_flight,
            self.executor.board.snapshot(),
            self.executor.capacity,
            queue,
            now=now,
            wall=self._wall().timestamp(),
            hold=hold,
        )

    def _hours_status(self) -> dict[str, Any] | None:
        if self.hours.window is None:
            return None
        opens = self.hours.opens_at()
        return {
            "window": self.hours.describe(),
            "open": opens is None,
            "opens_at": opens.isoformat(timespec="seconds") if opens else None,
        }
