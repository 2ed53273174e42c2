"""How fast is one job, and how much GPU memory does it take? i2vd's engine against plain diffusers.

Builds a model with the real published I2VGen-XL architecture and random weights (nothing is
downloaded; the configs are reproduced below), then on the same device, in the same run, times one
job two ways:

- plain: diffusers' pipeline called with its default settings (decode one frame at a time, the
  attention diffusers picks, no compile), after one short untimed call so it too is warm;
- i2vd: ``DiffusersGenerator`` with the ``[model]`` settings (the config defaults unless flags
  below change them), after its own ``warm_up()``.

It prints seconds per job, peak GPU memory (``torch.cuda.max_memory_allocated``) and the speed-up,
beside a published reference point. Random weights cost the same arithmetic as trained ones, so
the timings hold for the real model; the clips are noise.

    python benchmarks/bench_generate.py                          # 512p, 16 frames, 50 steps, GPU
    python benchmarks/bench_generate.py --compile                # try torch.compile
    python benchmarks/bench_generate.py --attention sdpa_cudnn   # try another attention kernel
    python benchmarks/bench_generate.py --tiny --device cpu      # CI smoke test: seconds, on a CPU
    python benchmarks/bench_generate.py --model tiny-wan --device cpu --cache first_block
                                                                 # another family's engine path, tiny
    python benchmarks/bench_generate.py --model tiny-wan22 --device cpu --lora random --quantize int8
                                                                 # adapters and quantization, tiny
    python benchmarks/bench_generate.py --model wan21-14b --quantize fp8 --compile --cache first_block
                                                                 # Wan 2.1 I2V 14B architecture, GPU
    python benchmarks/bench_generate.py --model wan21-14b --lora random --steps 4 --guidance 1.0
                                                                 # the 4-step distilled-adapter path
    python benchmarks/bench_generate.py --model wan22-5b        # Wan 2.2 TI2V-5B architecture, GPU

``--lora FILE`` (or ``random``: random weights in a trained adapter's layout) is fused into the
model for the i2vd run, as ``[model] loras`` does; the plain run loads it through diffusers,
unfused. ``--quantize int8|fp8`` is the i2vd run's ``[model] quantize``.

Architecture sources (ali-vilab/i2vgen-xl as converted by diffusers'
scripts/convert_i2vgen_to_diffusers.py): the UNet is ``I2VGenXLUNet(sample_size=32)``, i.e. the
class defaults listed in ``UNET``; the VAE is Stable Diffusion 2.1's; the text and image encoders
are OpenCLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K). Values not checked against the
published config.json files (no network here), marked "unsure" below:
- text encoder depth: the conversion loads the full ViT-H text tower (24 layers); Stable
  Diffusion 2.x ships a 23-layer cut. One layer is ~1% of the text encoder and nothing of a step.
- the tokenizer: the real one's 49,408-token vocabulary is not reproduced (the text encoder keeps
  its 49,408-row embedding; a prompt's cost does not depend on which ids it has).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from daemon.engine.tiny.registry import BUILDS

REFERENCE = "RTX 4090, as published by a popular I2VGen-XL web front end"
REFERENCE_SECONDS, REFERENCE_GB = 52.0, 13.6
# Wan2.1-I2V-14B, 480p (832x480), 81 frames (a 5 s clip), one H200: published by LightX2V's
# authors (their benchmark), not measured here. Seconds per clip.
WAN_REFERENCE = "Wan2.1-I2V-14B 832x480, 81 frames, one H200, as published by LightX2V's authors"
WAN_REFERENCE_ROWS = (
    ("official code, 40 steps", 366.0),
    ("+ SageAttention + FP8", 191.0),
    ("+ TeaCache", 107.0),
    ("4-step distilled", 14.0),
)

# Wan architectures (transformer configs as the Wan-AI/*-Diffusers repositories publish them,
# reproduced from memory of their config.json: no network here, so "unsure" where not checked).
WAN_ARCHS: dict[str, dict[str, Any]] = {
    # Wan-AI/Wan2.1-I2V-14B-480P-Diffusers: 40 blocks of width 5120, CLIP image tokens through
    # added key/value projections; 832x480, 81 frames, 40 steps, guidance 5.0 as published.
    "wan21-14b": dict(
        transformer=dict(
            num_attention_heads=40,
            attention_head_dim=128,
            in_channels=36,
            out_channels=16,
            ffn_dim=13824,
            num_layers=40,
            image_dim=1280,
            added_kv_proj_dim=5120,
        ),
        vae=dict(),  # AutoencoderKLWan's defaults are Wan 2.1's VAE
        image_encoder=True,  # CLIP ViT-H/14 image tower
        job=(832, 480, 81, 40, 5.0),
    ),
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers: 30 blocks of width 3072 over a 16x VAE of 48 channels;
    # 1280x704, 121 frames, 50 steps, guidance 5.0 as published.
    "wan22-5b": dict(
        transformer=dict(
            num_attention_heads=24,
            attention_head_dim=128,
            in_channels=48,
            out_channels=48,
            ffn_dim=14336,
            num_layers=30,
        ),
        vae=dict(
            base_dim=160,
            decoder_base_dim=256,  # unsure
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=[0.0] * 48,  # the published statistics do not change the cost
            latents_std=[1.0] * 48,
        ),
        image_encoder=False,
        job=(1280, 704, 121, 50, 5.0),
    ),
}
# UMT5-XXL, Wan's text encoder (google/umt5-xxl, 5.7B parameters).
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    feed_forward_proj="gated-gelu",
)

# I2VGen-XL's UNet (diffusers I2VGenXLUNet defaults = the published unet/config.json). Note the
# class derives the heads from attention_head_dim (64-wide heads: 5, 10, 20 per level) and ignores
# num_attention_heads, which the published config leaves null.
UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    norm_num_groups=32,
    cross_attention_dim=1024,
    attention_head_dim=64,
    num_attention_heads=None,
)
# Stable Diffusion 2.1's VAE (the conversion takes it from v2-1_512-ema-pruned.ckpt).
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
# OpenCLIP ViT-H/14 text tower.
TEXT = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,  # unsure: 24 in the laion checkpoint the conversion loads, 23 in SD 2.x
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=1024,
)
# OpenCLIP ViT-H/14 image tower.
VISION = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=1024,
)
# The conversion script's scheduler (from i2vgen_xl_train.yaml).
SCHEDULER = dict(
    beta_schedule="squaredcos_cap_v2",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=True,
    clip_sample=False,
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="v_prediction",
)


def build_real(device: Any, dtype: Any) -> Any:
    """The I2VGen-XL architecture with random weights, made directly on ``device`` (no download)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from daemon.engine.i2vgenxl import DaemonI2VGenXLPipeline
    from daemon.engine.tiny.i2vgenxl import write_tokenizer_files

    with tempfile.TemporaryDirectory() as tok_dir:
        write_tokenizer_files(Path(tok_dir))  # a small BPE vocabulary laid out like CLIP's
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        parts = dict(
            unet=I2VGenXLUNet(**UNET),
            vae=AutoencoderKL(**VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT, **ids)),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)),
        )
    for module in parts.values():
        module.to(dtype=dtype).eval()
    return DaemonI2VGenXLPipeline(
        **parts,
        tokenizer=tokenizer,
        feature_extractor=CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        ),
        scheduler=DDIMScheduler(**SCHEDULER),
    )


def build_wan(arch: str, device: Any, dtype: Any) -> Any:
    """A Wan architecture of ``WAN_ARCHS`` with random weights, made directly on ``device`` in ``dtype``."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
    )

    from daemon.engine.tiny.parts import t5_tokenizer as _t5_tokenizer

    spec = WAN_ARCHS[arch]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # 14B parameters made in float32 first would need 56 GB
    try:
        with torch.device(device):
            transformer = WanTransformer3DModel(**spec["transformer"])
            text_encoder = UMT5EncoderModel(UMT5Config(**UMT5_XXL, pad_token_id=0, eos_token_id=1))
            image_encoder = CLIPVisionModel(CLIPVisionConfig(**VISION)) if spec["image_encoder"] else None
    finally:
        torch.set_default_dtype(default)
    with torch.device(device):
        vae = AutoencoderKLWan(**spec["vae"])  # float32, as Wan's authors run it
    return WanImageToVideoPipeline(
        # The real tokenizer's 256k vocabulary is not reproduced; the encoder keeps its 256k-row table.
        tokenizer=_t5_tokenizer(512),
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
        ),
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
        )
        if image_encoder is not None
        else None,
        image_encoder=image_encoder.eval() if image_encoder is not None else None,
        transformer=transformer.eval(),
        expand_timesteps=not spec["image_encoder"],
    )


def build_tiny(device: Any, dtype: Any, model: str = "tiny") -> Any:
    """A built-in tiny model (daemon/engine/tiny/), in memory."""
    import torch

    from daemon.engine.families import get_family, pipeline_class

    family = BUILDS[model].family
    pipe = BUILDS[model].make()
    # I2VGen-XL and HunyuanVideo 1.5 run as our subclasses of diffusers' pipelines (a repair; the
    # size and guidance i2vd asks for), the rest as built.
    cls = pipeline_class(get_family(family))
    if type(pipe) is not cls:
        pipe = cls(**pipe.components)
    return pipe.to(device=device, dtype=dtype) if dtype != torch.float32 else pipe.to(device)


def picture(width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for x in range(width):
        draw.line([(x, 0), (x, height - 1)], fill=(x * 255 // (width - 1), 90, 255 - x * 255 // (width - 1)))
    draw.ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=(240, 220, 60))
    return img


class Meter:
    """Seconds and peak GPU memory of one block."""

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch, self.cuda = torch, device.type == "cuda"
        self.seconds = 0.0
        self.peak_gb: float | None = None

    def __enter__(self) -> Meter:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak_gb = self.torch.cuda.max_memory_allocated() / 1e9
        self.seconds = time.perf_counter() - self.t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model (CI smoke test)")
    parser.add_argument(
        "--model",
        default=None,
        choices=[
            *BUILDS,
            *WAN_ARCHS,
        ],
        help="a tiny build of a family (implies --tiny), or a full-size Wan architecture (GPU)",
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 on CPU), ...")
    parser.add_argument("--resolution", default=None, help="short side, e.g. 512p (tiny: 256p)")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 16; tiny: 8)")
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps (default: the model's published; tiny: 2)"
    )
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's published")
    parser.add_argument("--lora", default=None, help="a LoRA .safetensors file, or 'random'")
    tuned = parser.add_argument_group("i2vd settings (default: the [model] defaults)")
    tuned.add_argument("--attention", default=None)
    tuned.add_argument("--compile", action="store_true", default=None)
    tuned.add_argument("--compile-mode", default=None)
    tuned.add_argument("--compile-scope", default=None, help="regional or full")
    tuned.add_argument("--cache", default=None, help="first_block, pyramid or taylorseer (transformers)")
    tuned.add_argument("--cache-threshold", type=float, default=None)
    tuned.add_argument("--cache-interval", type=int, default=None)
    tuned.add_argument("--channels-last", action="store_true", default=None)
    tuned.add_argument("--vae-slicing", action="store_true", default=None)
    tuned.add_argument("--vae-tiling", action="store_true", default=None)
    tuned.add_argument("--offload", default=None)
    tuned.add_argument("--decode-chunk-size", type=int, default=None)
    tuned.add_argument("--quantize", default=None, help="int8 or fp8 (torchao)")
    args = parser.parse_args(argv)
    wan_arch = args.model if args.model in WAN_ARCHS else None
    args.tiny = args.tiny or (args.model is not None and wan_arch is None)
    model_name = args.model or "tiny"

    import diffusers
    import torch

    from daemon.config_sections import ModelConfig
    from daemon.engine.adapters import AdapterSpec
    from daemon.engine.families import I2VGENXL, WAN, WAN22_TI2V, get_family, pipeline_multiple
    from daemon.engine.interface import GenerationRequest
    from daemon.engine.load import resolve_device, resolve_dtype
    from daemon.engine.options import EngineOptions
    from daemon.engine.runner import DiffusersGenerator
    from daemon.errors import GenerationError
    from daemon.sizing import resolution_to_short_side

    if wan_arch is not None:
        family = get_family(WAN if wan_arch == "wan21-14b" else WAN22_TI2V)
    else:
        family = get_family(BUILDS[model_name].family if args.tiny and model_name in BUILDS else I2VGENXL)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, family)
    published = WAN_ARCHS[wan_arch]["job"] if wan_arch else None
    short = resolution_to_short_side(args.resolution or ("256p" if args.tiny else "512p"))
    frames = family.fit_frames(args.frames or (8 if args.tiny else published[2] if published else 16))
    steps = args.steps or (2 if args.tiny else family.default_steps)
    guidance = args.guidance if args.guidance is not None else family.default_guidance
    overrides = {
        k: v
        for k, v in {
            "attention": args.attention,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
            "compile_scope": args.compile_scope,
            "cache": args.cache,
            "cache_threshold": args.cache_threshold,
            "cache_interval": args.cache_interval,
            "channels_last": args.channels_last,
            "vae_slicing": args.vae_slicing,
            "vae_tiling": args.vae_tiling,
            "offload": args.offload,
            "decode_chunk_size": args.decode_chunk_size,
            "quantize": args.quantize,
        }.items()
        if v is not None
    }
    options = EngineOptions.from_config(ModelConfig(**overrides))
    if device.type == "cpu" and not args.tiny:
        print("warning: the full-size model on a CPU takes hours per job; use --tiny", file=sys.stderr)

    with Meter(torch, device) as build:
        if wan_arch is not None:
            pipe = build_wan(wan_arch, device, dtype)
        else:
            pipe = build_tiny(device, dtype, model_name) if args.tiny else build_real(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    multiple = pipeline_multiple(family, pipe)
    if published is not None and args.resolution is None:
        width, height = published[0], published[1]
    else:
        width = height = max(multiple, round(short / multiple) * multiple)
    image = picture(width, height)
    lora_file: Path | None = None
    lora_dir = tempfile.TemporaryDirectory()
    if args.lora == "random":
        from daemon.engine.tiny.lora import random_lora_for

        lora_file = random_lora_for(
            pipe, Path(lora_dir.name) / "random.safetensors", rank=64 if wan_arch else 4
        )
    elif args.lora:
        lora_file = Path(args.lora)
    if lora_file is not None:
        # The i2vd run: fused at load, as [model] loras does.
        spec = AdapterSpec("bench", str(lora_file))
        options = dataclasses.replace(options, loras=(spec,), always_on=("bench",))
    params = sum(
        p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()
    )
    job = dict(
        prompt="a paper boat drifts on a pond",
        negative_prompt="blurry, low quality",
        guidance_scale=guidance,
    )

    # Plain diffusers: the pipeline's own defaults. (DaemonI2VGenXLPipeline only repairs the
    # prompt encoding that upstream's class cannot run with transformers 5.x; it adds no speed-up.)
    def request(n_frames: int, n_steps: int) -> Any:
        return GenerationRequest(
            image=image,
            width=width,
            height=height,
            num_frames=n_frames,
            fps=8,
            steps=n_steps,
            seed=0,
            prompt=str(job["prompt"]),
            negative_prompt=str(job["negative_prompt"]),
            guidance_scale=float(job["guidance_scale"]),
        )

    def plain(n_frames: int, n_steps: int) -> Any:
        kwargs = family.call_kwargs(
            request(n_frames, n_steps),
            image=image,
            width=width,
            height=height,
            num_frames=n_frames,
            generator=torch.Generator(device=device).manual_seed(0),
            decode_chunk_size=1,
            on_step=None,
            pipe=pipe,
        )
        kwargs.pop("decode_chunk_size", None)  # the pipeline's own default
        return pipe(**kwargs).frames[0]

    if lora_file is not None:  # plain diffusers with the adapter: loaded, not fused
        pipe.load_lora_weights(str(lora_file), adapter_name="bench")
    with torch.no_grad(), Meter(torch, device) as plain_first:
        plain(frames, 2)
    with torch.no_grad(), Meter(torch, device) as plain_run:
        plain_frames = plain(frames, steps)
    if lora_file is not None:
        pipe.unload_lora_weights()  # i2vd loads it again its own way

    gen = DiffusersGenerator.from_pipeline(pipe, model_id="bench", device=str(device), options=options)
    with Meter(torch, device) as warm:
        gen.warm_up(short_side=min(width, height), num_frames=frames, steps=2)
    req = request(frames, steps)
    note = ""
    with Meter(torch, device) as tuned_run:
        try:
            gen.generate(req)
        except GenerationError as exc:  # random weights can overflow float16; the time still counts
            note = f"  (i2vd: {str(exc).split('.')[0]})"
    if not np.isfinite(plain_frames).all():
        note += "  (plain: output not finite, random weights)"

    def gb(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "n/a (CPU)"

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()})"
    if wan_arch is not None:
        model = f"{wan_arch} architecture, random weights"
    else:
        model = f"{model_name} (built in code)" if args.tiny else "I2VGen-XL architecture, random weights"
    if lora_file is not None:
        model += f", LoRA {'random' if args.lora == 'random' else lora_file.name}"
    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    settings = " ".join(f"{k}={v}" for k, v in gen.engine.items())
    rows = [
        ("plain diffusers, default settings", f"{plain_run.seconds:.2f}", gb(plain_run.peak_gb)),
        ("i2vd, tuned settings", f"{tuned_run.seconds:.2f}", gb(tuned_run.peak_gb)),
        ("speed-up (plain / i2vd)", f"{plain_run.seconds / tuned_run.seconds:.2f}x", ""),
    ]
    if wan_arch == "wan21-14b":
        rows += [(f"LightX2V: {label}", f"{sec:.2f}", "") for label, sec in WAN_REFERENCE_ROWS]
    elif family.name == I2VGENXL:
        rows.append(("reference: RTX 4090 (see below)", f"{REFERENCE_SECONDS:.2f}", f"{REFERENCE_GB:.1f}"))
    count = f"{params / 1e9:.2f} B" if params >= 1e8 else f"{params / 1e6:.2f} M"
    print(f"model     {model}: {count} parameters, built in {build.seconds:.1f} s")
    print(f"device    {name}, {str(dtype).removeprefix('torch.')}, {versions}")
    print(f"job       {width}x{height}, {frames} frames, {steps} steps, guidance {guidance:g}")
    print(f"i2vd      {settings}")
    print()
    print(f"{'':36} {'s/job':>8} {'peak GPU GB':>12}")
    for label, seconds, peak in rows:
        print(f"{label:36} {seconds:>8} {peak:>12}")
    print()
    if wan_arch == "wan21-14b":
        print(f"LightX2V rows: {WAN_REFERENCE}; not measured here.")
    elif family.name == I2VGENXL:
        print(f"reference: {REFERENCE}; not measured here.")
    if args.tiny:
        print("tiny model: these timings test the harness, not the engine; run without --tiny on a GPU.")
    print(
        f"not in the table: plain's first 2-step call {plain_first.seconds:.2f} s,"
        f" i2vd's warm-up {warm.seconds:.2f} s"
    )
    if note:
        print("notes:" + note)
    lora_dir.cleanup()
    return 0


if __name__ == "__main__":
    from diffusers.utils import logging as diffusers_logging

    from daemon import logs

    logs.configure(json_lines=False)
    diffusers_logging.set_verbosity_error()  # "modules to keep in float32: []" and the deprecation notice
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
