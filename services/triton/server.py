"""Start and stop a real Triton Inference Server (the tritonserver binary of the PyPI wheel
nvidia-pytriton, installed by scripts/setup_triton.sh into .venv-triton) on a model repository.

    install = find_triton()                       # runs the idempotent set-up script
    with TritonServer(TritonConfig(repository="repo", control_mode="poll"), install) as triton:
        InferenceClient(triton.target) ...        # KServe v2 gRPC, the project's own clients

The wheel's tritonserver has the Python backend only. Each start composes a backend folder in its
work dir: the wheel's `python` backend and this package's `segxal_onnxruntime` Python-based backend
(config.pbtxt `backend: "segxal_onnxruntime"`, services.common.model_repository's "python"
flavour). Its stub interpreter gets the set-up venv's site-packages (numpy, onnxruntime) from
SEGXAL_TRITON_SITE_PACKAGES. HTTP and metrics are off, so one ephemeral port (gRPC) is all a start needs.

A start that fails raises TritonStartError naming the server's log file (and quoting its tail).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from segxal.errors import FailedPrecondition

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup_triton.sh"
BACKEND_NAME = "segxal_onnxruntime"  # the folder name under backends/ is the backend's name
_BACKEND_SOURCE = Path(__file__).resolve().parent / BACKEND_NAME / "model.py"
TESTED_VERSION = "2.51.0"  # the tritonserver in nvidia-pytriton 0.7.0
TESTED_NGC_TAG = "24.10-py3"  # the NGC container release of Triton 2.51.0 (deploy/overlays/gpu)


class TritonUnavailable(FailedPrecondition):
    """tritonserver is not installed and scripts/setup_triton.sh could not install it."""


class TritonStartError(FailedPrecondition):
    """tritonserver did not come up; the message names its log file."""


@dataclass(frozen=True)
class TritonInstall:
    tritonserver: Path  # the binary
    backends: Path  # the wheel's backend folder (python/, with the stub copied in by the set-up)
    site_packages: Path  # numpy + onnxruntime for the Python backend's stub


def find_triton(timeout_s: float = 1200.0) -> TritonInstall:
    """Install (once) and locate tritonserver by running scripts/setup_triton.sh.

    Raises:
        TritonUnavailable: the script failed (its output's tail is in the message).
    """
    try:
        out = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TritonUnavailable(f"{SETUP_SCRIPT} did not run: {e}") from None
    if out.returncode != 0:
        raise TritonUnavailable(f"{SETUP_SCRIPT} exited with {out.returncode}: {(out.stdout + out.stderr)[-1500:]}")
    paths = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    return TritonInstall(Path(paths["tritonserver"]), Path(paths["backends"]), Path(paths["site-packages"]))


@dataclass
class TritonConfig:
    repository: str | list[str]  # one model repository, or several (Triton serves their union)
    # "poll": Triton rescans the repository every poll_interval_s (new versions, changed configs);
    # "explicit": only RepositoryModelLoad/Unload change what serves (load_models at start);
    # "none": everything loads at start, nothing changes after
    control_mode: str = "poll"
    poll_interval_s: int = 1  # Triton takes whole seconds
    load_models: list[str] = field(default_factory=lambda: ["*"])  # explicit mode: loaded at start
    host: str = "127.0.0.1"
    grpc_port: int = 0  # 0 = an ephemeral port
    # ONNX Runtime threads per model instance in the backend (0 = ONNX Runtime's default), and
    # spinning within a run only, as the project's server (services.inference.config.RuntimeConfig)
    intra_op_threads: int = 0
    ort_spinning: bool = True
    # every config must be complete (no auto-complete): what the project writes is checked as is
    strict_config: bool = True
    exit_on_error: bool = False  # a model that fails to load leaves the others serving
    workdir: str | None = None  # log + composed backend folder; None = a temp dir removed on stop
    startup_timeout_s: float = 120.0
    grace_s: float = 15.0  # SIGTERM lets Triton finish in-flight requests; then SIGKILL
    log_verbose: int = 0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launching process dies (Linux), so that a killed
    test or `segxal up` leaves no tritonserver behind."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _compose_backends(install: TritonInstall, into: Path) -> Path:
    """<into>/python -> the wheel's Python backend; <into>/segxal_onnxruntime/model.py (a copy:
    Triton must see the file as it was at start, even if the checkout changes)."""
    backends = into / "backends"
    backends.mkdir(parents=True, exist_ok=True)
    python = backends / "python"
    if not python.exists():
        python.symlink_to(install.backends / "python", target_is_directory=True)
    ours = backends / BACKEND_NAME
    ours.mkdir(exist_ok=True)
    shutil.copyfile(_BACKEND_SOURCE, ours / "model.py")
    return backends


class TritonServer:
    """One tritonserver process.

    Args:
        cfg: what to serve and how.
        install: from find_triton().
    """

    def __init__(self, cfg: TritonConfig, install: TritonInstall):
        if cfg.control_mode not in ("poll", "explicit", "none"):
            raise ValueError(f"control_mode must be poll, explicit or none, got {cfg.control_mode!r}")
        self.cfg = cfg
        self.install = install
        self._own_workdir = cfg.workdir is None
        self.workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="segxal-triton-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "tritonserver.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._failed = False  # a failed start keeps its work dir: the error names the log in it

    @property
    def target(self) -> str:
        return f"{self.cfg.host}:{self.port}"

    @property
    def repositories(self) -> list[Path]:
        r = self.cfg.repository
        return [Path(p).resolve() for p in ([r] if isinstance(r, (str, os.PathLike)) else r)]

    def command(self, port: int) -> list[str]:
        c = self.cfg
        argv = [str(self.install.tritonserver), *(f"--model-repository={r}" for r in self.repositories),
                f"--backend-directory={_compose_backends(self.install, self.workdir)}",
                f"--model-control-mode={c.control_mode}", f"--grpc-address={c.host}", f"--grpc-port={port}",
                "--allow-http=false", "--allow-metrics=false", f"--exit-on-error={str(c.exit_on_error).lower()}",
                f"--log-verbose={c.log_verbose}", f"--exit-timeout-secs={max(1, int(c.grace_s))}"]
        if c.control_mode == "poll":
            argv.append(f"--repository-poll-secs={max(1, int(c.poll_interval_s))}")
        if c.control_mode == "explicit":
            argv += [f"--load-model={m}" for m in c.load_models]
        if c.strict_config:
            argv.append("--disable-auto-complete-config")
        return argv

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the stub's interpreter: numpy/onnxruntime from the Triton venv, nothing from ours
        env.pop("PYTHONPATH", None)
        env["SEGXAL_TRITON_SITE_PACKAGES"] = str(self.install.site_packages)
        env["SEGXAL_TRITON_INTRA_OP_THREADS"] = str(self.cfg.intra_op_threads)
        env["SEGXAL_TRITON_ORT_SPINNING"] = "1" if self.cfg.ort_spinning else "0"
        return env

    def start(self) -> str:
        """Start tritonserver and wait until it is live and (poll/none modes) every model is ready.

        Returns:
            The gRPC target "host:port".

        Raises:
            TritonStartError: no repository folder; or it exited, failed to load a model, or did
                not get ready in time (the message names the log).
        """
        for repo in self.repositories:
            if not repo.is_dir():
                raise TritonStartError(f"model repository {repo} is not a folder; tritonserver not started")
        attempts = 3 if self.cfg.grpc_port == 0 else 1
        for attempt in range(attempts):
            port = self.cfg.grpc_port or _free_port(self.cfg.host)
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(self.command(port), stdout=out, stderr=subprocess.STDOUT,
                                             env=self._env(), start_new_session=True,
                                             preexec_fn=_die_with_parent)
            self.port = port
            try:
                self._wait_ready()
                log.info("tritonserver %s on %s (log %s)", TESTED_VERSION, self.target, self.log_path)
                return self.target
            except TritonStartError as e:
                self._kill()
                self._failed = True
                # an ephemeral port taken between choosing it and binding it: choose again
                if attempt + 1 < attempts and "address already in use" in self._log_tail().lower():
                    continue
                raise e from None
        raise AssertionError("unreachable")

    def _log_tail(self, chars: int = 2000) -> str:
        """The log's error lines (glog "E..." lines: which model failed and why), else its tail."""
        text = self.log_text()
        errors = [line for line in text.splitlines() if line.startswith("E")]
        return ("\n".join(errors) if errors else text)[-chars:]

    def _wait_ready(self) -> None:
        import tritonclient.grpc as tg
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.cfg.startup_timeout_s
        need_ready = self.cfg.control_mode != "explicit" or self.cfg.load_models
        with tg.InferenceServerClient(self.target) as client:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise TritonStartError(f"tritonserver exited with {rc} before serving; log {self.log_path}:\n"
                                           f"{self._log_tail()}")
                try:
                    if client.is_server_live():
                        if not need_ready or client.is_server_ready():
                            return
                        failed = [f"{m.name}: {m.reason}" for m in client.get_model_repository_index().models
                                  if m.state == "UNAVAILABLE" and m.reason]
                        if failed:
                            raise TritonStartError(f"tritonserver failed to load {'; '.join(failed)[:1500]}; "
                                                   f"log {self.log_path}")
                except InferenceServerException:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TritonStartError(f"tritonserver not ready after {self.cfg.startup_timeout_s:.0f} s; "
                                           f"log {self.log_path}:\n{self._log_tail()}")
                time.sleep(0.2)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (Triton drains in-flight requests), SIGKILL after the grace period."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.cfg.grace_s + 5)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        if self._own_workdir and not self._failed:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_text(self) -> str:
        """The server's log so far ("" when there is none)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> "TritonServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
