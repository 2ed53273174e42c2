"""Errors that end one job, phrased for the person who dropped the files."""

from __future__ import annotations


class JobError(Exception):
    """A problem with one job's input or processing that fails that job only.

    ``str(error)`` is written to the job's ``error.txt``: it must name the problem
    and the fix in words a non-programmer can act on (no tracebacks, no jargon).
    """


class SidecarError(JobError):
    """The prompt file is unreadable, malformed, or holds a value that is not allowed."""


class ImageError(JobError):
    """The image cannot be used: not an image, truncated, too large, ..."""


class GenerationError(JobError):
    """The model could not make a clip from this job's inputs."""


class EncodeError(JobError):
    """ffmpeg could not write the master clip."""
