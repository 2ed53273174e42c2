"""``i2vd check``, ``i2vd status``, ``i2vd recipes``: what is set up, what the daemon does, what it makes."""

from __future__ import annotations

import argparse
import functools
import json

from daemon.cli.common import EXIT_FAILED, EXIT_OK, load_generator, settings_of


def cmd_check(args: argparse.Namespace) -> int:
    from daemon.service.check import local_checks, run_checks

    path, settings = settings_of(args)
    if settings.cluster.backend == "ray":
        from daemon.cluster.check import cluster_checks

        machine_checks = cluster_checks
    else:
        machine_checks = functools.partial(local_checks, load_generator=load_generator)
    ok = True
    for passed, what, detail in run_checks(settings, machine_checks, config=path):
        ok &= passed
        print(f"{'ok  ' if passed else 'FAIL'}  {what}: {detail}", file=args.out, flush=True)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.service.loop import folders_of
    from daemon.service.status_file import read_status, render

    _, settings = settings_of(args)
    folders = folders_of(settings)
    status = read_status(folders.state, outputs=folders.outputs, failed=folders.failed)
    if args.json:
        print(json.dumps(status, indent=2), file=args.out)
    else:
        print(render(status), file=args.out)
    return EXIT_OK if status.get("running") else EXIT_FAILED


def cmd_recipes(args: argparse.Namespace) -> int:
    _, settings = settings_of(args)
    defaults = set(settings.output.default_recipes)
    for name, recipe in sorted(settings.recipe_table().items()):
        mark = "*" if name in defaults else " "
        print(f"{mark} {name:<12} .{recipe.ext:<5} {recipe.description}", file=args.out)
    print("(* = made for every job unless its prompt file lists other recipes)", file=args.out)
    return EXIT_OK
