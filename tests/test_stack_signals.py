"""`segxal up` owns its five services: SIGTERM or SIGINT sent to the command alone (as a scheduler,
`kill` or `timeout` sends it) stops every service process and waits for them before it exits.
Checked on the real process tree (psutil), with the real `segxal` command."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _start_up(workdir: Path, data: Path, log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--workdir", str(workdir), "--data", str(data)],
                            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + 300
    while "all services healthy" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"segxal up did not come up (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.5)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_stops_every_service_on_a_stop_signal(sig, tiny_dataset, tmp_path):
    log = tmp_path / "up.log"
    proc = _start_up(tmp_path / "work", tiny_dataset, log)
    services = psutil.Process(proc.pid).children(recursive=True)
    try:
        commands = " ".join(" ".join(p.cmdline()) for p in services)
        for module in ("inference", "eem", "coordinator", "trainer"):
            assert f"services.{module}.main" in commands
        assert len(services) >= 5
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        # `segxal up` returned only after its services had exited: none may be left
        assert [" ".join(p.cmdline()) for p in services if _alive(p)] == []
        assert rc == 0, log.read_text()
        assert "stopping" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in services:  # never leak services past the test, whatever failed
            if _alive(p):
                p.kill()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_stack_gives_each_service_its_own_port():
    """Ports are chosen with every socket still bound, so two services never get the same one (the
    main job once started depth and the coordinator on one port, one at a time)."""
    from app.stack import free_ports
    names = [f"s{i}" for i in range(64)]
    ports = free_ports("127.0.0.1", names)
    assert set(ports) == set(names) and len(set(ports.values())) == len(names)
    assert all(1024 <= p < 65536 for p in ports.values())
