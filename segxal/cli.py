"""`segxal` command line. Each feature module contributes its subcommands through a
`register_cli(subparsers)` function; errors we raise on purpose become one clear line and exit 2."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import tomllib
from pathlib import Path

from segxal.errors import InvalidInput, NotFound, SegxalError

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


def add_config_argument(p: argparse.ArgumentParser) -> None:
    """`--config FILE`: a TOML file of this command's flags (`cycles = 6`, `db = "postgresql://..."`,
    `alpha = 0.3`); flags given on the command line win over the file."""
    p.add_argument("--config", help="TOML file of this command's flags (command-line flags win)")
    p.set_defaults(_parser=p)


def apply_config_file(p: argparse.ArgumentParser, path: str) -> None:
    """Make the file's values `p`'s defaults, checked like flags (names, choices, types)."""
    file = Path(path)
    if not file.is_file():
        raise NotFound(f"--config {file}: no such file")
    try:
        values = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"--config {file}: not valid TOML ({e})") from None
    actions = {a.dest: a for a in p._actions if a.dest not in ("help", "config", "_parser")}
    defaults = {}
    for key, value in values.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise InvalidInput(f"--config {file}: unknown key {key!r}; known: {', '.join(sorted(actions))}")
        if isinstance(value, dict) or (isinstance(value, list) and action.nargs is None):
            raise InvalidInput(f"--config {file}: {key} must be a single value, got {value!r}")
        if action.type is not None and not isinstance(value, (bool, list)):
            try:
                value = action.type(value if isinstance(value, str) else str(value))
            except (TypeError, ValueError, SegxalError) as e:
                raise InvalidInput(f"--config {file}: {key} = {value!r} ({e})") from None
        if action.choices is not None and value not in action.choices:
            raise InvalidInput(f"--config {file}: {key} = {value!r}, choose from {', '.join(map(str, action.choices))}")
        if action.nargs == 0 and not isinstance(value, bool):  # store_true flags
            raise InvalidInput(f"--config {file}: {key} must be true or false, got {value!r}")
        defaults[dest] = value
    p.set_defaults(**defaults)


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
