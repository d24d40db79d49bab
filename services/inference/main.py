"""Entry point: `python -m services.inference.main --repo DIR --port N`.

Flags override environment variables (SEGXAL_INFERENCE_*), which override the defaults of
InferenceServerConfig. SIGTERM / SIGINT stop gracefully (in-flight requests finish).
"""
from __future__ import annotations

import argparse
import logging
import os

from services.common.runner import serve_until_signal
from services.common.server import add_server_args, server_config_from_args
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer


ENV_PREFIX = "SEGXAL_INFERENCE_"


def _env(name: str, default):
    return os.environ.get(ENV_PREFIX + name, default)


def build_config(argv: list[str] | None = None) -> InferenceServerConfig:
    d = InferenceServerConfig()
    p = argparse.ArgumentParser(description="SegXAL inference server (open inference protocol, ONNX Runtime)")
    p.add_argument("--repo", default=_env("REPO", d.repository), help="model repository (Triton layout)")
    p.add_argument("--poll-interval", type=float, default=float(_env("POLL_INTERVAL_S", d.poll_interval_s)),
                   help="seconds between repository polls; 0 = explicit loads only")
    p.add_argument("--device", choices=("cpu", "cuda"), default=_env("DEVICE", d.runtime.device))
    p.add_argument("--intra-op-threads", type=int,
                   default=int(_env("INTRA_OP_THREADS", d.runtime.intra_op_threads)))
    p.add_argument("--ort-spinning", action="store_true",
                   default=_env("ORT_SPINNING", "0").lower() in ("1", "true", "yes"),
                   help="let ONNX Runtime threads spin for work after a run (off: see RuntimeConfig)")
    p.add_argument("--max-tensor-mb", type=float,
                   default=float(_env("MAX_TENSOR_MB", d.max_tensor_bytes / 2**20)))
    p.add_argument("--memory-budget-mb", type=float,
                   default=float(_env("MEMORY_BUDGET_MB", d.memory_budget_bytes / 2**20)),
                   help="memory the requests in flight may use together; sets the pixel admission limit "
                        "(measured bytes per pixel); 0 = no limit")
    add_server_args(p, ENV_PREFIX, d.server)
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return InferenceServerConfig(
        repository=a.repo,
        server=server_config_from_args(a, d.server),
        runtime=RuntimeConfig(device=a.device, intra_op_threads=a.intra_op_threads,
                              spinning=a.ort_spinning),
        poll_interval_s=a.poll_interval,
        max_tensor_bytes=int(a.max_tensor_mb * 2**20), memory_budget_bytes=int(a.memory_budget_mb * 2**20))


def main(argv: list[str] | None = None) -> int:
    cfg = build_config(argv)
    return serve_until_signal("inference", f"inference listening on port {{port}}, repository {cfg.repository}",
                              lambda: InferenceServer(cfg))


if __name__ == "__main__":
    raise SystemExit(main())
