"""`segxal` command line: the application's entry point. Each feature module contributes its
subcommands through a `register_cli(subparsers)` function (core modules register only core
commands; the commands that compose services live in this package); errors we raise on purpose
become one clear line and exit 2."""
from __future__ import annotations

import argparse
import logging
import sys

from app import al_run, export_labels, fleet_job, ingest, loop, models, trainer_jobs
from segxal import train
from segxal.config_file import apply_config_file
from segxal.data import synth
from segxal.errors import SegxalError

# Modules that add subcommands, in help order: synth (`data synth`), train (`train seg|depth`,
# `eval`), the in-process loop (`al run`), the services loop (`loop`, `up`), the fleet (`fleet`),
# a trainer's jobs (`trainer jobs|cancel`).
_COMMAND_MODULES = [synth, train, al_run, loop, fleet_job, ingest, export_labels, models, trainer_jobs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segxal", description="SegXAL: explainable active learning for driving-scene segmentation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _COMMAND_MODULES:
        module.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "config", None):
            apply_config_file(args._parser, args.config)
            args = parser.parse_args(argv)  # again: the file's values are now defaults, flags still win
        rc = args.func(args)
    except SegxalError as e:
        print(f"segxal: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segxal: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
