"""What does the most expensive job a share user can ask for cost? GPU seconds at the [limits] maximum.

A share user picks resolution, frames and steps in a prompt file, within the operator's ``[limits]``.
This measures the real I2VGen-XL architecture (random weights, built in code as ``bench_generate.py``
does; nothing is downloaded) through i2vd's engine, and splits a job's time into a part per
denoising step and a fixed part (prompt and image encoding, VAE decode), from two runs of the same
size that differ only in their step count:

    per_step = (t(4 steps) - t(2 steps)) / 2        fixed = t(2 steps) - 2 * per_step

(``--steps 1,2`` halves the time the measurement takes on the largest size.)

then prices jobs from those two numbers: a typical one (512p, 16 frames, the model's 50 steps) and
the most expensive the shipped ``[limits]`` allow (the largest resolution at the widest aspect ratio
i2vd makes, ``max_num_frames``, ``max_steps``), and says what ``max_job_seconds`` caps it at.

    python benchmarks/bench_job_cost.py                 # on the GPU (float16), the real architecture
    python benchmarks/bench_job_cost.py --tiny --device cpu   # smoke test of the harness, seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_generate  # the architecture builders and the timer live there


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model (harness check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma-separated WIDTHxHEIGHTxFRAMES to measure (default: 512p typical and the maximum)",
    )
    parser.add_argument(
        "--steps",
        default="2,4",
        help="the two step counts each size runs (their difference prices one step)",
    )
    args = parser.parse_args(argv)
    lo, hi = (int(x) for x in args.steps.split(","))

    import torch

    from daemon.config_sections import GenerationConfig, LimitsConfig, ModelConfig
    from daemon.engine.families import I2VGENXL, get_family
    from daemon.engine.interface import GenerationRequest
    from daemon.engine.load import resolve_device, resolve_dtype
    from daemon.engine.options import EngineOptions
    from daemon.engine.runner import DiffusersGenerator
    from daemon.errors import GenerationError
    from daemon.sizing import MAX_ASPECT, clip_size, resolution_to_short_side

    family = get_family(I2VGENXL)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, family)
    limits, gen_defaults = LimitsConfig(), GenerationConfig()
    multiple = 64
    largest = max(limits.resolutions, key=resolution_to_short_side)
    typical_short = resolution_to_short_side(gen_defaults.resolution)
    max_w, max_h = clip_size(
        round(1000 * MAX_ASPECT), 1000, short_side=resolution_to_short_side(largest), multiple=multiple
    )
    typical = (typical_short, typical_short, family.fit_frames(gen_defaults.num_frames))
    worst = (max_w, max_h, family.fit_frames(limits.max_num_frames))
    if args.tiny:
        typical, worst = (64, 64, 4), (160, 64, 8)
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    else:
        sizes = [typical, worst]

    pipe = bench_generate.build_tiny(device, dtype) if args.tiny else bench_generate.build_real(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    gen = DiffusersGenerator.from_pipeline(
        pipe, model_id="bench", device=str(device), options=EngineOptions.from_config(ModelConfig())
    )
    gen.warm_up(short_side=min(typical[:2]), num_frames=typical[2], steps=2)

    def timed(width: int, height: int, frames: int, steps: int) -> tuple[float, float | None]:
        """Seconds and peak GPU GB of one job; says so when the out-of-memory ladder shrank it."""
        req = GenerationRequest(
            image=bench_generate.picture(width, height),
            width=width,
            height=height,
            num_frames=frames,
            fps=8,
            steps=steps,
            seed=0,
            prompt="a paper boat drifts on a pond",
            negative_prompt="blurry, low quality",
            guidance_scale=family.default_guidance,
        )
        with bench_generate.Meter(torch, device) as m:
            try:
                made = gen.generate(req).frames.shape
                if made[:3] != (frames, height, width):
                    print(f"  note: asked {frames}x{height}x{width}, made {made[:3]}", file=sys.stderr)
            except GenerationError as exc:  # random weights may overflow float16; the time counts
                print(f"  note: {str(exc).split('.')[0]}", file=sys.stderr)
        return m.seconds, m.peak_gb

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({device})"
    print(f"device    {name}, {str(dtype).removeprefix('torch.')}, torch {torch.__version__}")
    print(f"model     {'tiny (built in code)' if args.tiny else 'I2VGen-XL architecture, random weights'}")
    print()
    print(f"{'clip':>20} {'s/step':>8} {'fixed s':>8} {'peak GB':>8}   {'priced job':>34} {'s':>8}")
    per: dict[tuple[int, ...], tuple[float, float]] = {}
    for w, h, f in sizes:
        t_lo, _ = timed(w, h, f, lo)
        t_hi, peak = timed(w, h, f, hi)
        step = max(0.0, (t_hi - t_lo) / (hi - lo))
        fixed = max(0.0, t_lo - lo * step)
        per[(w, h, f)] = (step, fixed)
        steps = family.default_steps if (w, h, f) == typical else limits.max_steps
        priced = fixed + steps * step
        peak_s = f"{peak:.1f}" if peak is not None else "n/a"
        label = f"{w}x{h}x{f}"
        print(f"{label:>20} {step:8.2f} {fixed:8.2f} {peak_s:>8}   {f'{steps} steps':>34} {priced:8.0f}")
    if worst in per and typical in per:
        w_step, w_fixed = per[worst]
        t_step, t_fixed = per[typical]
        worst_s = w_fixed + limits.max_steps * w_step
        typical_s = t_fixed + family.default_steps * t_step
        print()
        print(
            f"typical job ({typical[0]}x{typical[1]}, {typical[2]} frames, {family.default_steps} steps):"
            f" {typical_s:.0f} s"
        )
        print(
            f"most expensive job the shipped [limits] allow ({worst[0]}x{worst[1]}, {worst[2]} frames,"
            f" {limits.max_steps} steps): {worst_s:.0f} s = {worst_s / max(typical_s, 1e-9):.0f} typical jobs"
        )
        cap = getattr(limits, "max_job_seconds", None)
        if cap:
            print(f"[limits] max_job_seconds = {cap:g} stops it at {min(cap, worst_s):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
