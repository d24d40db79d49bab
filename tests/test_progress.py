"""Progress output: a redrawn tqdm bar on a terminal, exactly one line per phase when standard
error is a file or a pipe (as `bash scripts/main.sh > log`, CI and schedulers run it)."""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tqdm import tqdm

from app.terminal import Terminal
from segxal.progress import progress

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_bar_writes_one_line_when_its_stream_is_a_file(tmp_path):
    path = tmp_path / "log"
    with open(path, "w") as f:
        with progress(desc="cycle 3 rank", total=500, unit="call", file=f) as bar:
            for _ in range(500):
                bar.update(1)
            bar.set_postfix(scored=12)
        for _ in progress(range(40), desc="epoch 1/2", unit="batch", file=f):
            pass
    text = path.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("cycle 3 rank: 500/500 call in 00:0") and "scored=12" in lines[0]
    assert lines[1].startswith("epoch 1/2: 40/40 batch in ")


def test_table_rows_between_bars_leave_no_redraws_in_a_file(tmp_path):
    path = tmp_path / "log"
    with open(path, "w") as f:
        bar = progress(desc="cycle 1 label", total=3, unit="task", file=f)
        for i in range(3):
            bar.update(1)
            tqdm.write(f"row {i}", file=f)
        bar.close()
    assert path.read_text() == "row 0\nrow 1\nrow 2\ncycle 1 label: 3/3 task in 00:00\n"


def test_a_terminal_gets_the_redrawn_bar():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a pty starts 0 wide
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            with progress(desc="score pool", total=3, file=tty, leave=True) as bar:
                for _ in range(3):
                    bar.update(1)
                    bar.refresh()
        drawn = b""
        while select.select([master], [], [], 1.0)[0]:  # a pty hands its bytes over in pieces
            chunk = os.read(master, 65536)
            if not chunk:
                break
            drawn += chunk
        drawn = drawn.decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "\r" in drawn and "score pool" in drawn and "3/3" in drawn


def test_a_phase_that_only_takes_time_says_how_long(tmp_path):
    path = tmp_path / "log"
    with open(path, "w") as f:
        with progress(desc="cycle 2 rank", unit="call", file=f) as bar:
            bar.set_postfix(scored=96, tasks=16)
    assert path.read_text() == "cycle 2 rank: 00:00 (scored=96, tasks=16)\n"


def test_a_disabled_bar_writes_nothing(tmp_path):
    path = tmp_path / "log"
    with open(path, "w") as f:
        with progress(desc="x", total=2, file=f, enabled=False) as bar:
            bar.update(2)
    assert path.read_text() == ""


def test_the_loops_phase_bars_follow_standard_error(tmp_path):
    """The main job's bars (app.terminal) through a real process whose standard error is a pipe."""
    code = ("from app.terminal import Terminal\n"
            "t = Terminal()\n"
            "with t.bar('cycle 1', 'rank', total=200, unit='call') as b:\n"
            "    for _ in range(200): b.update(1)\n"
            "t.row('cycle 1 | mIoU 0.41')\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert run.stderr.splitlines() == [run.stderr.splitlines()[0]] and "\r" not in run.stderr
    assert run.stderr.startswith(" cycle 1 rank   : 200/200 call in ")
    assert run.stdout == "cycle 1 | mIoU 0.41\n"
    assert Terminal(progress=False).bar("c", "rank").disable
