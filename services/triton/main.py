"""Entry point: `python -m services.triton.main --repo DIR [--repo DIR2] --port N`: a real Triton
Inference Server (installed on first use by scripts/setup_triton.sh) over model repositories, until
SIGTERM / SIGINT (then Triton drains in-flight requests). `segxal up --backend triton` runs this in
place of the project's inference servers.

The repositories are switched to the Python-backend config flavour first (this tritonserver has no
native ONNX Runtime backend), and stay so for models published later (the trainer's included).
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading

from services.common.model_repository import ModelRepository
from services.triton.server import TritonConfig, TritonServer, find_triton

log = logging.getLogger("services.triton")


def build_parser() -> argparse.ArgumentParser:
    """The launcher's flags."""
    d = TritonConfig(repository=[])
    p = argparse.ArgumentParser(description="Triton Inference Server over SegXAL model repositories "
                                            "(Python backend running ONNX Runtime)")
    p.add_argument("--repo", action="append", required=True, help="model repository (repeatable)")
    p.add_argument("--host", default="0.0.0.0", help="address Triton listens on")
    p.add_argument("--port", type=int, default=8001, help="gRPC port (HTTP and metrics are off)")
    p.add_argument("--control-mode", choices=("poll", "explicit", "none"), default=d.control_mode,
                   help="Triton's model control: poll the repositories, explicit loads only, or none")
    p.add_argument("--poll-interval", type=int, default=d.poll_interval_s, help="seconds between repository polls")
    p.add_argument("--intra-op-threads", type=int, default=d.intra_op_threads,
                   help="ONNX Runtime threads per model instance (0 = its default)")
    p.add_argument("--workdir", default=None, help="Triton's log and backend folder (default: a temp dir)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p


def build_config(argv: list[str] | None = None) -> TritonConfig:
    """The launcher's configuration from `argv` (default: sys.argv); sets up logging."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return TritonConfig(repository=a.repo, control_mode=a.control_mode, poll_interval_s=a.poll_interval,
                        host=a.host, grpc_port=a.port, intra_op_threads=a.intra_op_threads, workdir=a.workdir)


def main(argv: list[str] | None = None) -> int:
    cfg = build_config(argv)
    for repo in cfg.repository:
        ModelRepository(repo).set_default_flavour("python")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    server = TritonServer(cfg, find_triton())
    server.start()
    log.info("Triton on %s (log %s), repositories %s", server.target, server.log_path, cfg.repository)
    try:
        while not stopping.wait(1.0):
            if server.proc is None or server.proc.poll() is not None:
                log.error("tritonserver exited; see %s", server.log_path)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
