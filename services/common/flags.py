"""The one way a service's main() reads its settings: command-line flags whose defaults come from
the environment (`--dice-threshold` of the coordinator reads SEGXAL_COORDINATOR_DICE_THRESHOLD),
then from the service's config dataclass. Flags win over the environment. A value the environment
gets wrong is refused with the variable named, as a bad flag would be.

A small helper over argparse rather than a configuration library: the flag and variable names are
a deployed interface (deploy/ sets them), and every flag maps to one field in its main's
config_from_args, which stays readable.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class EnvFlags:
    """Adds flags to `parser`, each defaulting to <prefix><NAME> when that variable is set.

    Args:
        parser: the main's parser.
        prefix: e.g. "SEGXAL_EEM_"; NAME is the flag without dashes, upper case ("--seg-target" ->
            SEG_TARGET) unless `env=` names it.
    """

    def __init__(self, parser: argparse.ArgumentParser, prefix: str):
        self.parser = parser
        self.prefix = prefix

    def variable(self, flag: str, env: str | None = None) -> str:
        return self.prefix + (env or flag.lstrip("-").upper().replace("-", "_"))

    def add(self, flag: str, default: Any = None, *, type: Callable[[str], Any] = str, env: str | None = None,
            aliases: tuple[str, ...] = (), **kwargs) -> None:
        """A valued flag (type converts both the flag and the variable); `aliases`: other spellings."""
        name = self.variable(flag, env)
        raw = os.environ.get(name)
        if raw is not None:
            try:
                default = type(raw)
            except ValueError as e:
                self.parser.error(f"{name}={raw!r}: {e}")
        self.parser.add_argument(flag, *aliases, type=type, default=default, **kwargs)

    def switch(self, flag: str, default: bool = False, *, env: str | None = None, **kwargs) -> None:
        """An on/off flag, `--x` and `--no-x`; the variable takes 1/0, true/false, yes/no, on/off
        (unset or empty: `default`)."""
        name = self.variable(flag, env)
        raw = os.environ.get(name, "").strip().lower()
        if raw not in _TRUE + _FALSE:
            self.parser.error(f"{name}={raw!r}: expected 1/0, true/false, yes/no or on/off")
        on = default if raw == "" else raw in _TRUE
        self.parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=on, **kwargs)

    def paths(self, flag: str, dest: str, *, env: str | None = None, **kwargs) -> None:
        """A repeatable path flag; its variable is a list separated by the OS path separator. The
        parsed value: the flags given, else the variable's list."""
        name = self.variable(flag, env)
        listed = [x for x in os.environ.get(name, "").split(os.pathsep) if x]
        self.parser.add_argument(flag, dest=dest, action="append", default=None, **kwargs)
        self.parser.set_defaults(**{f"_{dest}_env": listed})


def paths_from(args: argparse.Namespace, dest: str) -> list[str]:
    """The value of an EnvFlags.paths flag: the flags given, else the environment's list."""
    return list(getattr(args, dest) or getattr(args, f"_{dest}_env"))
