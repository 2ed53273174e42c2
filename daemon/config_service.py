"""The config's sections about the service around the jobs, one pydantic model each: [metrics],
[webhooks], [cluster], [prompting] and [queue]; every key, its type, default and bounds.

``daemon.config`` puts them together with those of ``config_sections`` into ``Settings``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from daemon.config_sections import Section
from daemon.engine.choices import (
    check_device,
)


def parse_address(text: str) -> tuple[str, int]:
    """The metrics address: ``"127.0.0.1:9310"``, ``"[::1]:9310"`` or ``":9310"`` (every
    interface) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: write it as HOST:PORT, for example 127.0.0.1:9310")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 address in brackets, for example [::1]:9310")
    return host or "0.0.0.0", int(port_text)


class MetricsConfig(Section):
    # "HOST:PORT" ("127.0.0.1:9310", "[::1]:9310", ":9310" for every interface); "" is off.
    address: str = ""

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v:
            parse_address(v)  # raises ValueError naming the expected form
        return v


class WebhooksConfig(Section):
    # URLs POSTed the JOB.json of each finished job, and the job, error and folder of each failed one.
    on_done: list[str] = Field(default_factory=list)
    on_failed: list[str] = Field(default_factory=list)
    # URLs POSTed a folder_done notice when a folder of the inbox has no job left waiting.
    on_folder_done: list[str] = Field(default_factory=list)
    timeout: float = Field(10.0, gt=0, le=300)
    max_attempts: int = Field(10, ge=1, le=100)
    backoff_seconds: float = Field(5.0, gt=0, le=3600)

    @field_validator("on_done", "on_failed", "on_folder_done")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        from urllib.parse import urlsplit

        from daemon.logs import redact_url

        for url in v:
            try:
                parts = urlsplit(url)
                ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            except ValueError:
                ok = False
            if not ok:
                # Shown as redact_url has it: the rest of a webhook URL may be its credential.
                raise ValueError(f"{redact_url(url)!r} is not an http:// or https:// URL")
        return v


class ClusterConfig(Section):
    """Where jobs run: this process ("local") or Ray workers, one per GPU ("ray", docs/cluster.md)."""

    backend: Literal["local", "ray"] = "local"
    # "local": a private Ray on this machine, started and stopped with the daemon; "auto": the
    # Ray cluster this machine already belongs to (``ray start``); "HOST:PORT": that cluster's head.
    address: str = "local"
    # "auto": one worker per gpus_per_worker GPUs of every node (per cpus_per_worker CPUs when
    # gpus_per_worker = 0), including nodes that join later; a number: that many workers.
    workers: int | Literal["auto"] = "auto"
    gpus_per_worker: float = Field(1.0, ge=0)
    # CPUs Ray sets aside for each worker (its encoding runs there); 0 reserves none.
    cpus_per_worker: float = Field(1.0, ge=0)
    # A worker whose process dies is started again this many times (it reloads the model).
    max_restarts: int = Field(3, ge=0)
    # How long start waits for the workers to load the model; the late ones join when ready.
    start_timeout: float = Field(900.0, gt=0)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, int) and v < 1):
            raise ValueError('must be "auto" or a number of workers, 1 or more')
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v in ("local", "auto"):
            return v
        host, sep, port = v.removeprefix("ray://").rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError('must be "local", "auto" or the head\'s "HOST:PORT" (e.g. "10.0.0.5:6379")')
        return v

    @model_validator(mode="after")
    def _some_resource(self) -> ClusterConfig:
        if self.workers == "auto" and self.gpus_per_worker == 0 and self.cpus_per_worker == 0:
            raise ValueError(
                'workers = "auto" counts GPUs, or CPUs when gpus_per_worker = 0: set cpus_per_worker'
                " above 0 or give workers a number"
            )
        return self


class PromptingConfig(Section):
    """Prompts written from the image by a vision-language model (daemon/prompting/, docs/models.md)."""

    # A Hugging Face id (fetched by `i2vd fetch-model`), a local folder, or "tiny" (random weights,
    # built locally, for demos and tests: its prompts are gibberish).
    model: str = "Qwen/Qwen3-VL-2B-Instruct"
    revision: str | None = None
    # "auto": beside the video model on its GPU when both fit, else moved there only to write, else
    # the CPU (decided from the free memory measured at load); or "cpu", "cuda", "cuda:N".
    device: str = "auto"
    # "never": prompts come only from prompt files (the model is not loaded); "missing": an image
    # without a prompt file after wait_seconds, or with an empty .txt, gets one written from it;
    # "always": every prompt is rewritten from the image and the user's words.
    when: Literal["never", "missing", "always"] = "never"
    # How long an image waits for its prompt file before one is written (with when = "missing"
    # or "always"); watch.pair_timeout still applies to a prompt file without an image.
    wait_seconds: float = Field(30.0, ge=0)
    # Tokens the model may write for one prompt (about 0.75 words each); the text is also cut at
    # limits.max_prompt_chars.
    max_new_tokens: int = Field(160, ge=8, le=1024)
    # Memory the video model needs on the GPU besides its weights while it generates; the prompt
    # model stays on the GPU only when this much is still free with it there.
    gpu_reserve_mb: int = Field(12288, ge=0)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError('must be a Hugging Face id (owner/name), a local folder, or "tiny"')
        return v


class QueueConfig(Section):
    """Which ready job goes next, and when new jobs are taken at all (docs/service.md)."""

    # "fair": the inbox's top-level folders (and the inbox itself) take turns, one job each;
    # "arrival": strictly in the order jobs became ready.
    order: Literal["fair", "arrival"] = "fair"
    # Top-level folders of the inbox whose jobs go before all others, first listed first.
    priority: list[str] = Field(default_factory=list)
    # "HH:MM-HH:MM": new jobs start only inside this daily window (local time; it may span
    # midnight); "" takes them at any hour.
    active_hours: str = ""

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: list[str]) -> list[str]:
        for name in v:
            if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
                raise ValueError(
                    f'{name!r} is not a top-level folder of the inbox; write its name alone ("urgent")'
                )
        if len(set(v)) != len(v):
            raise ValueError("names a folder twice")
        return v

    @field_validator("active_hours")
    @classmethod
    def _active_hours(cls, v: str) -> str:
        from daemon.active_hours import parse_window

        parse_window(v)  # raises ValueError naming the expected form
        return v.strip()
