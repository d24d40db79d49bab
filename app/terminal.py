"""What a person sees of the main job: one progress bar per cycle phase (rank, label, train,
publish) - one line per phase when standard error is not a terminal (segxal.progress) - the
per-cycle table printed above the bars, and the logs in a file instead of the terminal (the
labeling clients log a line per task: hundreds per run)."""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from segxal.errors import SegxalError
from segxal.progress import progress

PHASES = ("rank", "label", "train", "publish")


class Terminal:
    """Progress bars and table rows; bars are off when `progress` is False (tests)."""

    def __init__(self, progress: bool = True):
        self.progress = progress

    def bar(self, cycle: str, phase: str, total: int | None = None, unit: str = "it") -> tqdm:
        """A bar for one phase of one cycle ("cycle  3 label"); total None: elapsed time only."""
        return progress(total=total, desc=f"{cycle:>8} {phase:<7}", unit=unit, enabled=self.progress)

    def row(self, text: str) -> None:
        """A line of the table, printed above the bars."""
        tqdm.write(text)


@contextlib.contextmanager
def following_tasks(coord, cycle_id: str, bar: tqdm, poll_s: float = 0.5) -> Iterator[None]:
    """While the block runs, move `bar` to the cycle's finished tasks (done + cancelled), read from
    the coordinator's cycle report (whoever labels: a simulated human, the machine oracle, people)."""
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(poll_s):
            try:
                r = coord.cycle_report(cycle_id)
            except SegxalError:  # a display: the labeling itself reports what went wrong
                continue
            bar.update(r.tasks_done + r.tasks_cancelled - bar.n)

    thread = threading.Thread(target=follow, name=f"progress-{cycle_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def logs_in_file(path: Path, verbose: bool = False) -> Iterator[Path]:
    """Send the root logger's records to `path` (INFO, or DEBUG when verbose) and keep only
    warnings and errors on the terminal, for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        for h, level in zip(consoles, levels):
            h.setLevel(level)
