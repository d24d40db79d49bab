"""Entry point: `python -m services.inference.main --repo DIR --port N`.

Flags override environment variables (SEGXAL_INFERENCE_*), which override the defaults of
InferenceServerConfig. SIGTERM / SIGINT stop gracefully (in-flight requests finish).
"""
from __future__ import annotations

import argparse
import logging

from services.common.flags import EnvFlags, paths_from
from services.common.runner import serve_until_signal
from services.common.server import add_server_args, server_config_from_args
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer


ENV_PREFIX = "SEGXAL_INFERENCE_"


def build_parser() -> argparse.ArgumentParser:
    """The server's flags, each defaulting to SEGXAL_INFERENCE_<FLAG> (services.common.flags)."""
    d = InferenceServerConfig()
    p = argparse.ArgumentParser(description="SegXAL inference server (open inference protocol, ONNX Runtime)")
    f = EnvFlags(p, ENV_PREFIX)
    f.add("--repo", d.repository,
          help="model repository (Triton layout)")
    f.add("--poll-interval", d.poll_interval_s, type=float, env="POLL_INTERVAL_S",
          help="seconds between repository polls; 0 = explicit loads only")
    f.add("--device", d.runtime.device, choices=("cpu", "cuda"), help="where ONNX Runtime runs the models")
    f.add("--intra-op-threads", d.runtime.intra_op_threads, type=int,
          help="threads of an execution that runs alone; 0 = the cores this process may use")
    f.add("--cpu-parallel-runs", d.runtime.cpu_parallel_runs, type=int,
          help="on CPU, batches of a model executing at once (overlapping ones run one thread "
               "each); 0 = one per core; the config's instance_group count is the floor")
    f.switch("--ort-spinning", d.runtime.spinning,
             help="ONNX Runtime threads spin between the parallel sections of a run that executes alone, "
                  "stopping when it returns (see RuntimeConfig)")
    f.add("--max-tensor-mb", d.max_tensor_bytes / 2**20, type=float,
          help="largest input tensor a request may send (MiB); larger ones are refused")
    f.add("--memory-budget-mb", d.memory_budget_bytes / 2**20, type=float,
          help="memory the requests in flight may use together; sets the pixel admission limit "
               "(measured bytes per pixel); 0 = no limit")
    f.add("--bytes-per-pixel", d.bytes_per_pixel, type=int,
          help="peak memory per pixel of a request (bench/inference_memory.py measures it for your "
               "models; the default is the project's U-Net, width 32)")
    f.add("--arena-keep-pixels", d.runtime.arena_keep_pixels, type=int,
          help="a run of more pixels (batch x height x width) gives back the ONNX Runtime arena "
               "memory it grew; 0 = after every run")
    add_server_args(p, ENV_PREFIX, d.server)
    f.add("--log-level", "INFO", help="DEBUG, INFO, WARNING or ERROR")
    return p


def build_config(argv: list[str] | None = None) -> InferenceServerConfig:
    """The server's configuration from `argv` (default: sys.argv) and the environment; sets up logging."""
    d = InferenceServerConfig()
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return InferenceServerConfig(
        repository=a.repo,
        server=server_config_from_args(a, d.server),
        runtime=RuntimeConfig(device=a.device, intra_op_threads=a.intra_op_threads,
                              cpu_parallel_runs=a.cpu_parallel_runs, spinning=a.ort_spinning,
                              arena_keep_pixels=a.arena_keep_pixels),
        poll_interval_s=a.poll_interval,
        max_tensor_bytes=int(a.max_tensor_mb * 2**20), memory_budget_bytes=int(a.memory_budget_mb * 2**20),
        bytes_per_pixel=a.bytes_per_pixel)


def main(argv: list[str] | None = None) -> int:
    cfg = build_config(argv)
    return serve_until_signal("inference", f"inference listening on port {{port}}, repository {cfg.repository}",
                              lambda: InferenceServer(cfg))


if __name__ == "__main__":
    raise SystemExit(main())
