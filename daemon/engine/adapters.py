"""LoRA adapters: all loaded once at start, the always-on ones fused, the others switched per job.

An adapter is a ``[loras.NAME]`` table (``AdapterSpec`` here): a Hub id (fetched ahead by
``i2vd fetch-model``, loaded from the cache only) or a local ``.safetensors`` file. At load:

1. the always-on adapters (``[model] loras``) are loaded, set to their scales, fused into the
   denoiser's weights and their LoRA layers dropped: they then cost nothing per step;
2. every other configured adapter is loaded under its name and turned off.

A job that names adapters (its prompt file's ``loras``) turns exactly those on at their scales for
its own run (``activate``); after it, whatever happened, they are turned off again
(``deactivate``), so one job's adapters never reach the next and switching never reloads the
model. Wan 2.2 A14B has two expert denoisers: every adapter goes into both (diffusers'
``load_into_transformer_2``). An adapter that does not fit the model (no matching layers, other
shapes) stops the start with one line naming it.

diffusers needs the peft package for all of this. torch and diffusers are imported lazily.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.engine.families import FAMILIES
from daemon.engine.family_spec import Family
from daemon.engine.oom import first_line
from daemon.errors import GenerationError


@dataclass(frozen=True)
class AdapterSpec:
    """One ``[loras.NAME]`` table, as the engine uses it (see config.example.toml)."""

    name: str
    id: str  # a Hub id "owner/name" or a local .safetensors file
    weight_name: str | None = None
    scale: float = 1.0
    steps: int | None = None
    guidance_scale: float | None = None

    @property
    def is_file(self) -> bool:
        return self.id.endswith(".safetensors")

    @classmethod
    def from_config(cls, loras: Mapping[str, Any]) -> tuple[AdapterSpec, ...]:
        """From the validated ``settings.loras`` table (name -> LoraConfig)."""
        return tuple(
            cls(name, c.id, c.weight_name, c.scale, c.steps, c.guidance_scale) for name, c in loras.items()
        )


class Adapters:
    """The adapters loaded into one pipeline and the per-job switch (see the module docstring)."""

    def __init__(self, pipe: Any, family: Family, fused: tuple[str, ...], switchable: dict[str, float]):
        self._pipe, self.family = pipe, family
        self.fused = fused  # in the weights for good
        self.switchable = switchable  # name -> scale, off between jobs

    @classmethod
    def load(
        cls,
        pipe: Any,
        family: Family,
        specs: Iterable[AdapterSpec],
        always_on: Iterable[str],
        *,
        cache_dir: Path | None,
        log: Any,
    ) -> Adapters:
        specs = {s.name: s for s in specs}
        always = tuple(always_on)
        if not specs:
            return cls(pipe, family, (), {})
        if not family.takes_lora or not hasattr(pipe, "load_lora_weights"):
            raise RuntimeError(
                f"{family.label} takes no LoRA adapters (diffusers has no LoRA loader for it): remove the"
                f" [loras.NAME] tables and [model] loras, or use a family that does: {_taking_adapters()}."
            )
        unknown = [n for n in always if n not in specs]
        if unknown:
            raise RuntimeError(f"model.loras names {', '.join(unknown)}, which no [loras.NAME] defines.")
        targets = [d for d in family.all_denoisers if getattr(pipe, d, None) is not None]
        if always:
            for name in always:
                _load_one(pipe, specs[name], targets, cache_dir)
            pipe.set_adapters(list(always), [specs[n].scale for n in always])
            pipe.fuse_lora(components=targets, adapter_names=list(always), lora_scale=1.0)
            # The fused weights stay; the LoRA layers go, so the always-on ones cost nothing per step
            # and the switchable ones below are the only adapters left to turn on and off.
            pipe.unload_lora_weights()
            log.info("LoRA adapters fused into the model", adapters=list(always))
        switchable = {n: s.scale for n, s in specs.items() if n not in always}
        for name in switchable:
            _load_one(pipe, specs[name], targets, cache_dir)
        if switchable:
            pipe.disable_lora()
            log.info("LoRA adapters loaded for jobs that ask for them", adapters=list(switchable))
        return cls(pipe, family, always, switchable)

    def activate(self, names: Iterable[str]) -> list[str]:
        """Turn on exactly ``names`` (the always-on ones are in the weights); returns those turned on."""
        wanted = [n for n in dict.fromkeys(names) if n not in self.fused]
        missing = [n for n in wanted if n not in self.switchable]
        if missing:
            loaded = ", ".join(sorted([*self.switchable, *self.fused])) or "none"
            raise GenerationError(
                f"The LoRA adapter(s) {', '.join(missing)} are not loaded in this model (loaded: {loaded});"
                " the operator must restart i2vd after changing [loras]."
            )
        if not self.switchable:
            return []
        if wanted:
            self._pipe.enable_lora()
            self._pipe.set_adapters(wanted, [self.switchable[n] for n in wanted])
        else:
            self._pipe.disable_lora()
        return wanted

    def deactivate(self) -> None:
        """Every switchable adapter off: the next job starts from the model with the always-on ones only."""
        if self.switchable:
            self._pipe.disable_lora()

    def describe(self) -> dict[str, list[str]] | None:
        if not self.fused and not self.switchable:
            return None
        return {"fused": list(self.fused), "switchable": list(self.switchable)}


def _taking_adapters() -> str:
    """The families that take adapters, from the families table, in words: "A, B or C"."""
    labels = [f.label for f in FAMILIES.values() if f.takes_lora]
    return ", ".join(labels[:-1]) + " or " + labels[-1] if len(labels) > 1 else "".join(labels)


def _load_one(pipe: Any, spec: AdapterSpec, targets: list[str], cache_dir: Path | None) -> None:
    """Load ``spec`` into every denoiser in ``targets`` under its name; RuntimeError in one line if not."""
    what = f"LoRA adapter {spec.name!r} ({spec.id})"
    kwargs: dict[str, Any] = {}
    if spec.is_file:
        if not Path(spec.id).is_file():
            raise RuntimeError(f"{what}: no such file; fix [loras.{spec.name}] id.")
        source: str = spec.id
    else:
        source = spec.id
        kwargs = {"cache_dir": str(cache_dir) if cache_dir else None, "local_files_only": True}
        if spec.weight_name:
            kwargs["weight_name"] = spec.weight_name
        if not _in_cache(spec, cache_dir):
            # The daemon never downloads (as for the model itself): one line naming the command.
            raise RuntimeError(
                f"{what} is not in the model cache: run `i2vd fetch-model` where the Hub can be reached."
            )
    try:
        for target in targets:
            extra = {"load_into_transformer_2": True} if target == "transformer_2" else {}
            pipe.load_lora_weights(source, adapter_name=spec.name, **kwargs, **extra)
    except Exception as exc:
        raise RuntimeError(f"{what} does not fit this model: {_why(exc)}") from exc
    listed = pipe.get_list_adapters()
    for target in targets:
        if spec.name not in listed.get(target, []):
            # diffusers only warns when none of an adapter's keys match the model's layers.
            raise RuntimeError(f"{what} does not fit this model: none of its weights match the {target}.")


def _why(exc: BaseException) -> str:
    """peft's reasons in a few words: its "Target modules {...} not found" lists every layer."""
    text = first_line(exc)
    if "Target modules" in str(exc) and "not found" in str(exc):
        return "the layers it adapts are not in this model (it was made for another model)."
    return text if len(text) <= 240 else text[:239] + "…"


def _in_cache(spec: AdapterSpec, cache_dir: Path | None) -> bool:
    """Whether ``i2vd fetch-model`` (or any download) has put the adapter's file into ``cache_dir``."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            spec.id, spec.weight_name or "", cache_dir=str(cache_dir) if cache_dir else None
        )
    except Exception:  # an id the hub library rejects: let diffusers say what is wrong with it
        return True
    return isinstance(found, str)
