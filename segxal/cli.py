"""`segxal` command line. Each feature module contributes its subcommands through a
`register_cli(subparsers)` function; errors we raise on purpose become one clear line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from segxal.errors import SegxalError

# Modules that add subcommands, in help order.
_COMMAND_MODULES = [
    "segxal.data.synth",     # segxal data synth
    "segxal.train",          # segxal train seg|depth, segxal eval
    "segxal.al.loop",        # segxal al run
    "services.loop",         # segxal loop, segxal up
    "services.fleet.job",    # segxal fleet run|ranking
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segxal", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
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
