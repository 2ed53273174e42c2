"""The ``[model]`` speed and memory options, applied once to a loaded pipeline of any family.

``EngineOptions`` holds them as validated values; ``apply_options`` puts them into effect and returns
the settings really in force (each job's JOB.json records them). Options that need a CUDA GPU are
ignored on a CPU with one log line, so one config serves the GPU box and a laptop demo.

- attention: the SDPA kernel in priority order (UNet and transformer families alike go through
  PyTorch's ``scaled_dot_product_attention``), explicit processors for the UNets, xFormers;
- ``torch.compile`` of the denoiser: ``regional`` compiles the one transformer block the model
  repeats and reuses it (a much shorter compile for a similar speed-up, as diffusers documents
  regional compilation; not measured here), ``full`` the whole
  denoiser. One graph per clip shape (``dynamic=False``): clip sizes are bucketed, so they repeat.
  ``"auto"`` compiles where that is cheap: on a GPU, for models with a repeated block. A compile
  that fails at the warm-up is undone (``uncompile``) and the model runs eagerly;
- diffusers' caching methods (First Block Cache, Pyramid Attention Broadcast, TaylorSeer) on the
  transformer families: steps reuse the work of earlier ones where it barely changes;
- ``quantize``: torchao weight quantization of the denoiser(s) (``daemon.engine.quantize``), after the
  LoRA adapters are loaded and fused (``daemon.engine.adapters``) and before compiling;
- VAE slicing and tiling, channels-last convolution weights;
- placement: all on the GPU, model / sequential / group offload (``Placement``).

torch and diffusers are imported lazily.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.engine.adapters import AdapterSpec
from daemon.engine.batch_split import split_large_batches
from daemon.engine.choices import (
    ATTENTION_CHOICES,
    CACHE_CHOICES,
    COMPILE_MODES,
    COMPILE_SCOPES,
    OFFLOAD_CHOICES,
    QUANTIZE_CHOICES,
    Attention,
    Cache,
    CompileMode,
    CompileScope,
    Offload,
    Quantize,
)
from daemon.engine.family_spec import Family
from daemon.engine.oom import Ladder, first_line
from daemon.engine.quantize import quantize_denoisers
from daemon.sizing import resolution_to_short_side

# torch.compile keeps one compiled graph per clip shape; its default limit of 8 would silently fall
# back to eager for the ninth aspect ratio. Sizes are bucketed, so a daemon sees a bounded set.
RECOMPILE_LIMIT = 64

_ON_CPU = "this needs a CUDA GPU; the model runs on the CPU"


@dataclass(frozen=True)
class EngineOptions:
    """The ``[model]`` speed and memory settings, as the generator applies them (see config.example.toml)."""

    attention: Attention = "auto"
    compile: bool | Literal["auto"] = "auto"
    compile_mode: CompileMode = "default"
    compile_scope: CompileScope = "regional"
    cache: Cache = "none"
    cache_threshold: float = 0.05
    cache_interval: int = 2
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: Offload = "none"
    channels_last: bool = False
    decode_chunk_size: int = 8
    ladder: Ladder = field(default_factory=Ladder)
    quantize: Quantize = "none"
    loras: tuple[AdapterSpec, ...] = ()  # every [loras.NAME] table: loaded at start
    always_on: tuple[str, ...] = ()  # [model] loras: fused at start

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("attention", self.attention, ATTENTION_CHOICES),
            ("offload", self.offload, OFFLOAD_CHOICES),
            ("compile_mode", self.compile_mode, COMPILE_MODES),
            ("compile_scope", self.compile_scope, COMPILE_SCOPES),
            ("cache", self.cache, CACHE_CHOICES),
            ("quantize", self.quantize, QUANTIZE_CHOICES),
        ):
            if value not in choices:
                raise ValueError(f"model.{name} must be one of {', '.join(choices)}, not {value!r}")
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"model.compile must be true, false or 'auto', not {self.compile!r}")
        if self.decode_chunk_size < 1:
            raise ValueError(f"model.decode_chunk_size must be at least 1, not {self.decode_chunk_size}")
        if not self.cache_threshold > 0:
            raise ValueError(f"model.cache_threshold must be above 0, not {self.cache_threshold}")
        if self.cache_interval < 2:
            raise ValueError(f"model.cache_interval must be at least 2, not {self.cache_interval}")

    @classmethod
    def from_config(cls, model: Any, loras: Mapping[str, Any] | None = None) -> EngineOptions:
        """From a validated ``ModelConfig`` (``settings.model``) and ``settings.loras``."""
        return cls(
            attention=model.attention,
            compile=model.compile,
            compile_mode=model.compile_mode,
            compile_scope=model.compile_scope,
            cache=model.cache,
            cache_threshold=model.cache_threshold,
            cache_interval=model.cache_interval,
            vae_slicing=model.vae_slicing,
            vae_tiling=model.vae_tiling,
            offload=model.offload,
            channels_last=model.channels_last,
            decode_chunk_size=model.decode_chunk_size,
            ladder=Ladder(
                rungs=tuple(model.oom_ladder),
                short_sides=tuple(map(resolution_to_short_side, model.oom_resolutions)),
                min_frames=model.oom_min_frames,
            ),
            quantize=model.quantize,
            loras=AdapterSpec.from_config(loras or {}),
            always_on=tuple(model.loras),
        )


@dataclass
class Applied:
    """What ``apply_options`` put into effect: ``engine`` for the job records, ``sdpa`` for each call."""

    engine: dict[str, Any]
    sdpa: list[Any] | None  # SDPA kernels in priority order; None: PyTorch's own choice


def apply_options(pipe: Any, family: Family, opts: EngineOptions, device: Any, log: Any) -> Applied:
    """Apply the speed and memory options once, at load (placement excepted: see ``Placement``)."""
    import torch

    cuda = device.type == "cuda"
    denoiser = getattr(pipe, family.denoiser)
    denoisers = _denoisers(pipe, family)

    def ignored(option: str, value: object, reason: str) -> None:
        log.info("model option ignored", option=f"model.{option}", value=value, reason=reason)

    engine: dict[str, Any] = {"family": family.name}
    attention, sdpa = _attention(pipe, family, opts.attention, cuda, ignored)
    engine["attention"] = attention
    if family.uses_unet:
        # After the processors are chosen: a large clip's temporal attention is run in parts.
        split_large_batches(pipe.unet)

    if opts.channels_last:
        # 4-D conv weights only: Module.to(memory_format=...) refuses the 5-D temporal convs.
        for module in (m for d in denoisers for m in d.modules()):
            if isinstance(module, torch.nn.Conv2d):
                module.weight.data = module.weight.data.to(memory_format=torch.channels_last)
    engine["channels_last"] = opts.channels_last

    for option, wanted, enable in (
        ("vae_slicing", opts.vae_slicing, "enable_slicing"),
        ("vae_tiling", opts.vae_tiling, "enable_tiling"),
    ):
        done = False
        if wanted:
            try:
                getattr(pipe.vae, enable)()
                done = True
            except NotImplementedError:  # SVD's temporal decoder has neither
                ignored(option, True, f"the {family.label} VAE cannot do this")
        engine[option] = done
    engine["decode_chunk_size"] = opts.decode_chunk_size if family.chunked_decode else None

    # After the adapters (loaded and fused into full-precision weights by the generator) and
    # before compiling, so the compiled graph runs the quantized kernels.
    engine["quantize"] = quantize_denoisers(pipe, family, opts.quantize, device)

    caches = [_cache(pipe, family, d, opts, ignored) for d in denoisers]
    engine["cache"] = caches[0]

    offload = opts.offload
    if offload != "none" and not cuda:
        ignored("offload", offload, _ON_CPU)
        offload = "none"
    engine["offload"] = offload

    compiled: str | bool = False
    regional = bool(getattr(denoiser, "_repeated_blocks", None))
    want = opts.compile is True or (opts.compile == "auto" and cuda and regional)
    if opts.compile is True and not cuda:
        ignored("compile", True, "compiling for the CPU takes minutes per clip shape")
    elif want:
        import torch._dynamo.config as dynamo_config

        dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
        mode = None if opts.compile_mode == "default" else opts.compile_mode
        scope = opts.compile_scope
        if scope == "regional" and regional:
            # fullgraph: a graph break inside a block would silently cost the speed-up; but a cache's
            # hooks decide per step whether a block runs at all, which is a break by design.
            fullgraph = engine["cache"] is None
            for d in denoisers:
                d.compile_repeated_blocks(mode=mode, dynamic=False, fullgraph=fullgraph)
        else:
            scope = "full"  # the UNets and CogVideoX name no repeated block
            for d in denoisers:
                d.compile(mode=mode, dynamic=False)
        compiled = f"{scope}:{opts.compile_mode}"
    engine["compile"] = compiled
    return Applied(engine, sdpa)


def _attention(
    pipe: Any, family: Family, attention: str, cuda: bool, ignored: Any
) -> tuple[str, list[Any] | None]:
    if attention in ("sdpa_cudnn", "sdpa_efficient", "xformers") and not cuda:
        ignored("attention", attention, _ON_CPU)
        return "auto", None
    if attention == "eager" and not family.uses_unet:
        # The transformer families' attention always goes through SDPA; its math kernel is the
        # same computation as the explicit one.
        attention = "sdpa_math"
    if attention in ("sdpa", "eager"):
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        if family.uses_unet:
            processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
            pipe.unet.set_attn_processor(processor())
            if hasattr(pipe.vae, "set_attn_processor"):
                pipe.vae.set_attn_processor(processor())
        return attention, None
    if attention == "xformers":
        try:
            if family.uses_unet:
                pipe.enable_xformers_memory_efficient_attention()
            else:
                getattr(pipe, family.denoiser).set_attention_backend("xformers")
        except Exception as exc:  # not installed, or built for another torch/CUDA
            raise RuntimeError(
                f"model.attention = 'xformers' cannot be used here ({exc}). Install a matching xformers"
                " package or set model.attention = 'auto'."
            ) from exc
        return attention, None
    if attention.startswith("sdpa_"):
        from torch.nn.attention import SDPBackend

        # Preferred kernel first; the others stay allowed, for the calls it cannot serve (I2VGen-XL's
        # image-latent encoder has 4-wide heads, which cuDNN and FlashAttention refuse).
        first = {
            "sdpa_cudnn": [SDPBackend.CUDNN_ATTENTION],
            "sdpa_efficient": [SDPBackend.EFFICIENT_ATTENTION],
            "sdpa_math": [SDPBackend.MATH],
        }[attention]
        rest = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        return attention, first + ([] if attention == "sdpa_math" else [b for b in rest if b not in first])
    return attention, None


def _cache(pipe: Any, family: Family, denoiser: Any, opts: EngineOptions, ignored: Any) -> str | None:
    """Turn on the diffusers caching method ``model.cache`` names; what is in force, for the records."""
    if opts.cache == "none":
        return None
    if not hasattr(denoiser, "enable_cache"):
        reason = f"diffusers' caching methods work on transformers; {family.label} has a UNet"
        ignored("cache", opts.cache, reason)
        return None
    if family.cache_methods is not None and opts.cache not in family.cache_methods:
        takes = " or ".join(repr(m) for m in ("none", *family.cache_methods))
        raise RuntimeError(
            f"model.cache = {opts.cache!r} does not work with {family.label} in this diffusers;"
            f" set model.cache = {takes}."
        )
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    if opts.cache == "first_block":
        # A step whose first block's output moved less than the threshold reuses the rest of the
        # last full step's residual.
        config: Any = FirstBlockCacheConfig(threshold=opts.cache_threshold)
        described = f"first_block:{opts.cache_threshold:g}"
    elif opts.cache == "pyramid":
        # Spatial attention recomputed every cache_interval steps in the middle of the schedule,
        # where it changes least (the paper's 100-800 of 1000 timesteps).
        config = PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=opts.cache_interval,
            spatial_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=lambda: pipe.current_timestep,
        )
        described = f"pyramid:{opts.cache_interval}"
    else:
        # A full step every cache_interval; in between, the transformer's output is predicted by a
        # first-order Taylor expansion of the last full ones and its blocks are skipped. The "lite"
        # patterns (the blocks and proj_out) fit these models; the default patterns match none of
        # their attention modules, so TaylorSeer would silently do nothing.
        import torch

        config = TaylorSeerCacheConfig(
            cache_interval=opts.cache_interval,
            disable_cache_before_step=3,
            taylor_factors_dtype=torch.float32 if denoiser.dtype == torch.float32 else torch.bfloat16,
            use_lite_mode=True,
        )
        described = f"taylorseer:{opts.cache_interval}"
    try:
        denoiser.enable_cache(config)
    except Exception as exc:  # e.g. First Block Cache on a model of a single block
        raise RuntimeError(
            f"model.cache = {opts.cache!r} cannot be used with this {family.label} model ({exc!r});"
            " set model.cache = 'none' or another method."
        ) from exc
    return described


def uncompile(pipe: Any, family: Family) -> None:
    """Undo ``torch.compile`` on the denoiser (and its blocks): they run eagerly again."""
    import torch

    for module in (m for d in _denoisers(pipe, family) for m in d.modules()):
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None  # what nn.Module.compile sets; None is eager
    torch._dynamo.reset()


def reset_cache(pipe: Any, family: Family) -> None:
    """Forget what a cache kept from an earlier call: a try cut short by an error never reset it."""
    for denoiser in _denoisers(pipe, family):
        if getattr(denoiser, "is_cache_enabled", False):
            denoiser._reset_stateful_cache()


def _denoisers(pipe: Any, family: Family) -> list[Any]:
    """The pipeline's denoisers (Wan 2.2 A14B: both experts), each given the same options."""
    return [d for name in family.all_denoisers if (d := getattr(pipe, name, None)) is not None]


class Placement:
    """Where the weights are: all on the device, or moved in as they run (``offload``)."""

    def __init__(self, pipe: Any, device: Any, log: Any) -> None:
        self._pipe, self._device, self._log = pipe, device, log
        self.current: str | None = None  # an offload mode; None before placing, or unknown

    def place(self, offload: str) -> None:
        if offload == self.current:
            return
        pipe, device = self._pipe, self._device
        if self.current not in ("none", "group"):  # offload hooks, or unknown: remove any (no-op if none)
            pipe.remove_all_hooks()
        if offload == "none":
            pipe.to(device)
        elif offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            # Groups of layers moved in ahead of use on a side stream: close to no-offload speed on
            # a fast bus, at a fraction of the memory. Set once at load; the ladder never moves it.
            pipe.enable_group_offload(onload_device=device, offload_type="leaf_level", use_stream=True)
        self.current = offload

    def restore(self, offload: str) -> None:
        """Back to the configured placement after a job that fell back to offload; never raises."""
        try:
            self.place(offload)
        except Exception as exc:  # e.g. out of memory moving the weights back onto the GPU
            self.current = None  # unknown: the next try places the weights afresh (inside the ladder)
            self._log.error("could not move the model back onto the device", error=first_line(exc))
