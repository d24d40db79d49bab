"""The one way the project shows progress: a tqdm bar on a terminal, one line per bar elsewhere.

A redrawn bar is what a person at a terminal wants; in a log file (`bash scripts/main.sh > log`, CI,
a scheduler, a service's log) every redraw is a carriage-return line, hundreds per phase. So when
the bar's stream is not a terminal, the bar draws nothing while it runs and writes one line when it
closes: what it counted, the total, the time taken and its last postfix.
"""
from __future__ import annotations

import sys
from typing import IO, Iterable

from tqdm import tqdm

__all__ = ["progress", "OneLineBar"]


class OneLineBar(tqdm):
    """A tqdm that never redraws and writes one summary line when it closes (same interface:
    update, set_postfix, n, iteration, context manager, tqdm.write above it)."""

    def display(self, msg=None, pos=None) -> bool:  # no redraws while running
        return False

    def clear(self, nolock=False) -> None:  # tqdm.write clears bars before a row: nothing drawn
        pass

    def close(self) -> None:
        if self.disable:
            return
        d = self.format_dict
        if d["total"] is not None:
            counted = f"{d['n']}/{d['total']} {d['unit']} in "
        else:  # a bar that only shows time (a phase of one call) has nothing to count
            counted = f"{d['n']} {d['unit']} in " if d["n"] else ""
        postfix = f" ({d['postfix']})" if d.get("postfix") else ""
        line = f"{d['prefix'] or 'progress'}: {counted}{self.format_interval(d['elapsed'])}{postfix}"
        super().close()  # unregisters the bar; its display/clear draw nothing
        self.fp.write(line + "\n")
        self.fp.flush()


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True, leave: bool = False, file: IO[str] | None = None) -> tqdm:
    """A progress bar for one phase (an epoch, a cycle's ranking, the pool's scoring).

    Args:
        iterable: what to iterate over, as tqdm(iterable); None for a bar moved with update().
        desc: the phase's name, the start of the bar and of the summary line.
        total: the count expected (None: counts and time only).
        unit: what is counted ("it", "batch", "call", "task").
        enabled: False: no output at all (tests, callers that print their own rows).
        leave: keep the finished bar on a terminal.
        file: the stream (default: standard error, read when the bar is made).

    Returns:
        A tqdm: a redrawn bar when `file` is a terminal, else a OneLineBar.
    """
    stream = file if file is not None else sys.stderr
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream: not a terminal
        interactive = False
    cls = tqdm if interactive else OneLineBar
    return cls(iterable, desc=desc, total=total, unit=unit, disable=not enabled, leave=leave, file=stream,
               dynamic_ncols=interactive)
