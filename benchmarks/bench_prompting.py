"""What do prompts written from the image cost? Seconds per prompt, cost per job, the real model's memory.

Three figures:

1. seconds per written prompt with the tiny prompt model (a random-weight Qwen3-VL built in code,
   through the daemon's own writer: the image bounded, the chat built, greedy decoding to
   ``max_new_tokens``), the median of ``--prompts`` prompts;
2. the end-to-end cost per job of ``[prompting] when = "always"`` against ``"never"``: the real
   ``i2vd run --once`` on ``--jobs`` image-and-prompt pairs with the tiny video and prompt models
   and the shipped ``[watch]`` values, the median of ``--repeat`` runs each, and their ratio;
3. the real model's weights and memory, from its published configuration: the parameter count of
   the model instantiated on the meta device (no weights, no download), the bytes in bfloat16, and
   the KV cache of one prompt (image tokens + instructions + ``max_new_tokens``).

    python benchmarks/bench_prompting.py                       # all three (a few minutes on 2 cores)
    python benchmarks/bench_prompting.py --only memory         # the memory table only, seconds
    python benchmarks/bench_prompting.py --config config.json  # memory of another VLM's config
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# Published configurations (config.json of each Hub repository, the fields that size the model).
# The daemon's default is Qwen3-VL-2B-Instruct; the others are the alternatives weighed in
# docs/models.md.
CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-VL-2B-Instruct": {
        "model_type": "qwen3_vl",
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
        },
        "vision_config": {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "patch_size": 16,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-VL-4B-Instruct": {
        "model_type": "qwen3_vl",
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
        },
        "vision_config": {
            "depth": 24,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_heads": 16,
            "out_hidden_size": 2560,
            "patch_size": 16,
            "num_position_embeddings": 2304,
            "deepstack_visual_indexes": [5, 11, 17],
        },
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen2.5-VL-3B-Instruct": {
        "model_type": "qwen2_5_vl",
        "text_config": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
        },
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 2048,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        "tie_word_embeddings": True,
    },
}

# A prompt's tokens: the image at the writer's bound (512x512, 32-pixel merged patches: 256), the
# instructions (~150), and what is written (max_new_tokens, 160 by default).
PROMPT_TOKENS = 256 + 150 + 160


def memory(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Parameters and bytes of a VLM's config, instantiated on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from daemon.prompting.placement import WORKING_BYTES

    cfg = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())  # a tied head is counted once
    text = cfg.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2  # K and V, bf16
    return {
        "model": name,
        "parameters_b": round(params / 1e9, 3),
        "weights_bf16_gb": round(params * 2 / 1024**3, 2),
        "kv_cache_per_prompt_mb": round(kv_per_token * PROMPT_TOKENS / 1024**2, 1),
        "gpu_need_gb": round((params * 2 + WORKING_BYTES) / 1024**3, 2),
    }


def seconds_per_prompt(count: int, cache: Path) -> dict[str, Any]:
    from helpers import png_bytes
    from PIL import Image

    from daemon.config_service import PromptingConfig
    from daemon.prompting.writer import PromptWriter

    writer = PromptWriter(PromptingConfig(model="tiny", when="always"), cache_dir=cache, max_chars=2000)
    started = time.perf_counter()
    writer.load()
    load = time.perf_counter() - started
    times, tokens = [], []
    for i in range(count):
        path = cache / f"p{i}.png"
        path.write_bytes(png_bytes(seed=i, size=(1024, 768)))
        image = Image.open(path).convert("RGB")
        written = writer.write(image, "a boat drifts" if i % 2 else None, "wan")
        times.append(written.seconds)
        tokens.append(written.tokens)
    return {
        "load_seconds": round(load, 2),
        "median_seconds_per_prompt": round(statistics.median(times), 3),
        "tokens_written": int(statistics.median(tokens)),
        "prompts": count,
    }


def run_once(when: str, jobs: int, cache: Path) -> float:
    """Wall seconds of ``i2vd run --once`` over ``jobs`` pairs, the shipped [watch] values."""
    from helpers import png_bytes, write_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inbox = root / "inbox"
        inbox.mkdir()
        for i in range(jobs):
            (inbox / f"job{i}.png").write_bytes(png_bytes(seed=i, size=(96, 64)))
            (inbox / f"job{i}.txt").write_text("a boat drifts")
        sections = {"prompting": {"model": "tiny", "when": when}}
        config = write_config(root, "tiny", {"num_frames": 8, "steps": 2}, **sections)
        env = {k: v for k, v in os.environ.items() if not k.startswith("I2VD_")}
        env.update(HF_HUB_OFFLINE="1", I2VD_MODEL__CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "run", "--once", "--config", str(config)],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"i2vd run --once failed ({when}):\n{done.stderr[-2000:]}")
        return seconds


def end_to_end(jobs: int, repeat: int, cache: Path) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"never": [], "always": []}
    for _ in range(repeat):  # interleaved, so a busy moment of the machine hits both alike
        for when in runs:
            runs[when].append(run_once(when, jobs, cache))
    never, always = (statistics.median(runs[w]) for w in ("never", "always"))
    return {
        "jobs_per_run": jobs,
        "repeat": repeat,
        "median_run_seconds_never": round(never, 2),
        "median_run_seconds_always": round(always, 2),
        "extra_seconds_per_job": round((always - never) / jobs, 2),
        "ratio_always_over_never": round(always / never, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["prompt", "jobs", "memory"], help="one figure only")
    parser.add_argument("--prompts", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", type=Path, help="a VLM's config.json to size instead of the table")
    args = parser.parse_args(argv)

    from daemon.logs import adopt_model_libraries

    adopt_model_libraries()
    results: dict[str, Any] = {}
    cache = Path(tempfile.mkdtemp(prefix="bench-prompting-"))
    try:
        if args.only in (None, "memory"):
            table = {args.config.name: json.loads(args.config.read_text())} if args.config else CONFIGS
            results["memory"] = [memory(name, cfg) for name, cfg in table.items()]
        if args.only in (None, "prompt"):
            results["tiny_prompt"] = seconds_per_prompt(args.prompts, cache)
        if args.only in (None, "jobs"):
            results["end_to_end"] = end_to_end(args.jobs, args.repeat, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
