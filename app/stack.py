"""`segxal up`: the five services as separate processes on local ports, embedded defaults
(SQLite, a local model repository, local frame storage, CPU). Waits for every health check, and
stops them all cleanly (SIGTERM, grace, then SIGKILL) when the caller is done, on Ctrl-C (SIGINT)
and on SIGTERM: the stack owns its services, and each runs in its own session, so a signal sent to
the stack's process alone would otherwise leave all five running.

    workdir/repo/         model repository (Triton layout) served by both inference servers
    workdir/state/        trainer jobs and per-version checkpoints
    workdir/storage/      frames extracted from drive logs, annotation masks
    workdir/coordinator.db
    workdir/logs/<service>.log
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from segxal.errors import NotReady
from services.common.channel import make_channel
from services.common.model_repository import ModelRepository
from services.common.health import wait_until_serving

log = logging.getLogger(__name__)


@dataclass
class StackConfig:
    workdir: str
    data: str  # Cityscapes-layout folder: held-out split for the trainer, ground truth for the human
    seed_data: str = ""  # Cityscapes-layout folder of the trainer's seed set ("" = no seed set)
    db: str = ""  # "" = sqlite under workdir; a postgresql:// URL switches the coordinator
    host: str = "127.0.0.1"
    size: tuple[int, int] = (128, 256)
    width: int = 16
    unet_depth: int = 4
    epochs: int = 4  # trainer's default epochs per job
    batch_size: int = 8
    seed: int = 0
    dice_threshold: float = 0.95
    storage_roots: list[str] = field(default_factory=list)  # extra readable roots (the data folders)
    health_timeout_s: float = 180.0
    torch_threads: int = 0
    # "segxal": the project's inference servers; "triton": one real Triton Inference Server over
    # both repositories (services.triton: Python backend running ONNX Runtime), same clients
    backend: str = "segxal"
    # the trainer's first version: any model by import path (segxal.models.external), its JSON
    # keyword arguments, and a label file of its classes ("": the U-Net, Cityscapes classes)
    model_import: str = ""
    model_kwargs: str = "{}"
    labels_file: str = ""


@dataclass
class Service:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_ports(host: str, names) -> dict[str, int]:
    """A free port per name, all different: every socket stays bound until all are chosen (one at a
    time, a port closed can come back at once: the main job once gave depth and the coordinator the
    same port, and the loop called the coordinator's methods on the depth server)."""
    with contextlib.ExitStack() as held:
        socks = {}
        for name in names:
            s = held.enter_context(socket.socket())
            s.bind((host, 0))
            socks[name] = s
        return {name: s.getsockname()[1] for name, s in socks.items()}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum, frame) -> None:
    # SIGTERM becomes what Ctrl-C already is, so one `except KeyboardInterrupt` / `with` exit path
    # stops the services whichever signal arrived.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stopping(signum, frame) -> None:
    log.warning("%s while stopping the services: still stopping them", signal.Signals(signum).name)


class Stack:
    """Start with `with Stack(cfg) as stack:`; targets in `stack.targets[name]`.

    Started from the main thread, the stack turns SIGTERM into KeyboardInterrupt until it is stopped
    (so `with` exits and stops the services), and ignores SIGINT/SIGTERM while stopping (a second
    Ctrl-C must not orphan the services half-way); the previous handlers come back afterwards.
    """

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.work = Path(cfg.workdir).resolve()
        self.services: dict[str, Service] = {}
        self._saved_handlers: dict[int, object] = {}

    @property
    def repo(self) -> Path:
        return self.work / "repo"

    @property
    def storage(self) -> Path:
        return self.work / "storage"

    @property
    def targets(self) -> dict[str, str]:
        targets = {n: s.target for n, s in self.services.items()}
        if "triton" in targets:  # one Triton serves both models
            targets.update(segmentation=targets["triton"], depth=targets["triton"])
        return targets

    def _plan(self) -> list[Service]:
        c, py = self.cfg, sys.executable
        port = free_ports(c.host, ("segmentation", "depth", "eem", "coordinator", "trainer"))
        roots = [str(self.storage), *(str(Path(r).resolve()) for r in c.storage_roots)]
        root_flags = [f for r in roots for f in ("--storage-root", r)]
        db = c.db or f"sqlite:///{self.work / 'coordinator.db'}"
        inference = lambda name: [py, "-m", "services.inference.main", "--repo", str(self.repo / name),
                                  "--host", c.host, "--port", str(port[name]), "--poll-interval", "1.0"]
        seed = ["--seed-data", c.seed_data, "--seed-split", "train"] if c.seed_data else []
        if c.backend == "triton":
            port["depth"] = port["segmentation"]
            servers = [Service("triton", [py, "-m", "services.triton.main", "--repo", str(self.repo / "segmentation"),
                                          "--repo", str(self.repo / "depth"), "--host", c.host,
                                          "--port", str(port["segmentation"]),
                                          "--workdir", str(self.work / "logs" / "triton")], port["segmentation"])]
        elif c.backend == "segxal":
            servers = [Service("segmentation", inference("segmentation"), port["segmentation"]),
                       Service("depth", inference("depth"), port["depth"])]
        else:
            raise ValueError(f"backend must be segxal or triton, got {c.backend!r}")
        return [
            *servers,
            Service("eem", [py, "-m", "services.eem.main", "--seg-target", f"127.0.0.1:{port['segmentation']}",
                            "--depth-target", f"127.0.0.1:{port['depth']}", "--host", c.host,
                            "--port", str(port["eem"]), *root_flags], port["eem"]),
            Service("coordinator", [py, "-m", "services.coordinator.main", "--db", db,
                                    "--storage", str(self.storage), "--eem-target", f"127.0.0.1:{port['eem']}",
                                    "--host", c.host, "--port", str(port["coordinator"]),
                                    "--dice-threshold", str(c.dice_threshold)],
                    port["coordinator"]),
            Service("trainer", [py, "-m", "services.trainer.main", "--repo", str(self.repo / "segmentation"),
                                "--state", str(self.work / "state"), "--data", c.data, *root_flags, *seed,
                                "--size", f"{c.size[0]}x{c.size[1]}", "--width", str(c.width),
                                "--unet-depth", str(c.unet_depth), "--epochs", str(c.epochs),
                                "--batch-size", str(c.batch_size), "--seed", str(c.seed),
                                "--coordinator", f"127.0.0.1:{port['coordinator']}",
                                "--host", c.host, "--port", str(port["trainer"]),
                                *(["--torch-threads", str(c.torch_threads)] if c.torch_threads else []),
                                *(["--model-import", c.model_import, "--model-kwargs", c.model_kwargs]
                                  if c.model_import else []),
                                *(["--labels", c.labels_file] if c.labels_file else [])],
                    port["trainer"]),
        ]

    def start(self) -> "Stack":
        for d in ("repo/segmentation", "repo/depth", "state", "storage", "logs"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        if self.cfg.backend == "triton":  # before anything publishes: every config in Triton's flavour
            for name in ("segmentation", "depth"):
                ModelRepository(self.repo / name).set_default_flavour("python")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._set_handlers(_interrupt)
        try:
            for svc in self._plan():
                logf = open(self.work / "logs" / f"{svc.name}.log", "ab")
                # own process group: Ctrl-C in the terminal reaches us, and we stop children in order
                svc.proc = subprocess.Popen(svc.argv, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
                logf.close()
                self.services[svc.name] = svc
            for svc in self.services.values():
                self._wait_healthy(svc)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, svc: Service) -> None:
        """The process answers grpc.health.v1 (live). Readiness differs per service: EEM is
        NOT_SERVING until both models are published, so callers wait for it with wait_serving()."""
        deadline = time.monotonic() + self.cfg.health_timeout_s
        with make_channel(svc.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if svc.proc.poll() is not None:
                    raise NotReady(f"{svc.name} exited with code {svc.proc.returncode}; "
                                   f"see {self.work / 'logs' / (svc.name + '.log')}")
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    log.info("%s live on %s", svc.name, svc.target)
                    return
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
        raise NotReady(f"{svc.name} not healthy after {self.cfg.health_timeout_s:.0f} s; "
                       f"see {self.work / 'logs' / (svc.name + '.log')}")

    def wait_serving(self, name: str, timeout_s: float = 120.0) -> None:
        """Block until a service's health is SERVING (e.g. EEM, once both models are loaded)."""
        with make_channel(self.services[name].target) as ch:
            wait_until_serving(ch, "", name, timeout_s, poll_s=0.3)

    def _set_handlers(self, handler) -> None:
        """Install `handler` for SIGINT and SIGTERM, remembering the first handlers seen (signals can
        only be handled in the main thread: elsewhere the caller's handlers stay)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, handler)
            self._saved_handlers.setdefault(sig, previous)

    def _restore_handlers(self) -> None:
        for sig, previous in self._saved_handlers.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._saved_handlers.clear()

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every service (they finish in-flight calls), wait for each, SIGKILL stragglers
        after `grace_s`. SIGINT and SIGTERM are held off until every service has exited.

        Args:
            grace_s: seconds all services together get to exit after their SIGTERM.
        """
        self._set_handlers(_stopping)
        try:
            self._stop_services(grace_s)
        finally:
            self._restore_handlers()

    def _stop_services(self, grace_s: float) -> None:
        for svc in reversed(list(self.services.values())):
            if svc.proc and svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for svc in self.services.values():
            if svc.proc is None:
                continue
            try:
                svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait()

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
