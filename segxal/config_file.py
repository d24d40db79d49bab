"""`--config FILE` for any subcommand: a TOML file of the command's flags, checked like flags.
Core argparse helpers (no imports above the core): a feature module's `register_cli` adds the
argument, the application's entry point (app.cli) applies the file before running the command."""
from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from segxal.errors import InvalidInput, NotFound, SegxalError


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
