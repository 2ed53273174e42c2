"""One job through the loop: claimed (or resumed), checked, sized and submitted; filed, and remembered."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from daemon import logs
from daemon.folders.claim import claim
from daemon.folders.jobs import Job
from daemon.folders.names import job_files
from daemon.job.finish import Result
from daemon.job.prepare import draw_seed, prepare
from daemon.listeners.events import JobFinished
from daemon.service.filing import fail_job
from daemon.service.parts import ServiceParts


class JobFlow(ServiceParts):
    """Starting and finishing jobs; mixed into ``loop.Service`` (its parts: ``ServiceParts``)."""

    def _next_job(self) -> tuple[Job, datetime] | None:
        if self._resume:
            job = self._resume.popleft()
            return job, job.claimed_at
        while not self.stop.is_set() and (group := self.monitor.take()) is not None:
            wall = datetime.now().astimezone()
            job = claim(self.folders, group, wall, seed=draw_seed(self.settings))
            if job is not None:
                self.batches.claimed(job)
                if group.src_dir is not None:
                    self.log.info(
                        "retrying a failed job dragged back into the inbox",
                        job=job.name,
                        returned_folder=group.src_dir.as_posix(),
                    )
                return job, wall - timedelta(seconds=max(0.0, self.clock() - group.since))
        return None

    def _start(self, job: Job, queued_at: datetime) -> None:
        """Check and size a claimed job and submit it; a job with bad input is filed as failed."""
        log = self.log.bind(job=job.name)
        logs.open_job_log(job.name, job.out / job_files(job.name).log)
        try:
            prepared = prepare(
                job, self.settings, self.executor.model, log, queued_at=queued_at, writer=self.writer
            )
        except Exception as e:
            self.filer.put(fail_job(job, e, log, self._where(self.folders.failed, job)))
        else:
            self.flights.submit(prepared)
        self._want_status()

    def _collect(self) -> None:
        """Hand every job whose generation ended to the filing thread, in the order they ended."""
        for item in self.flights.collect():
            # Blocks while the filing thread is encode_queue jobs behind: bounded memory.
            self.filer.put(item)
            self._want_status()

    def _where(self, base: Path, job: Job) -> str:
        """Where a job's files go, as people on the share see it (``outputs/team-a/cup_…``)."""
        path = base / job.rel_dir / job.name
        share = self.folders.outputs.parent
        return path.relative_to(share).as_posix() if path.is_relative_to(share) else str(path)

    def _finished(self, result: Result, event: JobFinished) -> None:
        """Called on the filing thread once a job is filed."""
        self.results.append(result)
        self.batches.filed(result.job, result.ok)
        record = event.record
        if result.ok and record is not None:
            par, times = record.parameters, record.timings
            sizes = (par.width, par.height, par.num_frames, par.steps)
            if all(sizes) and times.generate_seconds is not None:
                kind = self._kind(*sizes)  # type: ignore[arg-type]
                self.durations.add(kind, times.generate_seconds, times.encode_seconds)
        if self._once is not None:
            self._once.append(result)
        self.publisher.tell(lambda listener: listener.on_job_finished(event))
        self._want_status()
