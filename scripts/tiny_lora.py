"""Make a LoRA adapter with random weights for one of the tiny builds, to try adapters offline.

    .venv/bin/python scripts/tiny_lora.py tiny-wan loras/try.safetensors [--seed 2]

The file has the layout of a trained adapter (``lora_A`` / ``lora_B`` of every attention
projection, as diffusers saves one), so the daemon loads it as it loads a published one; its weights
are random, so the clips it changes are noise, as the tiny builds' own are. Configure it as a local
file: ``[loras.try] id = "loras/try.safetensors"`` with ``[model] id = "tiny-wan"``
(docs/models.md, "Trying adapters without a GPU").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon import logs
from daemon.engine.families import FAMILIES
from daemon.engine.tiny.lora import make_random_lora
from daemon.engine.tiny.registry import BUILDS


def main() -> int:
    taking = [name for name, build in BUILDS.items() if FAMILIES[build.family].takes_lora]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", choices=taking, help="the tiny build the adapter is for (its model.id)")
    parser.add_argument("dest", type=Path, help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=1, help="another seed makes another adapter")
    args = parser.parse_args()
    if args.dest.suffix != ".safetensors":
        parser.error(f"{args.dest}: name the file NAME.safetensors")
    # The model libraries' notices as i2vd's own commands show them: warnings only, on stderr.
    logs.configure(plain=True, level="warning")
    logs.adopt_model_libraries()
    print(make_random_lora(args.model, args.dest.absolute(), seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
