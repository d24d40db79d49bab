"""Entry point of the EEM scoring service.

    python -m services.eem.main --seg-target host:port --depth-target host:port \
        --storage-root DIR [--storage-root DIR ...] --port N

Every flag has an environment variable (SEGXAL_EEM_<FLAG>, e.g. SEGXAL_EEM_SEG_TARGET;
SEGXAL_EEM_STORAGE_ROOTS is a list separated by the OS path separator); flags win. The config is
built once here and passed down. SIGTERM / SIGINT drain in-flight frames, then exit.
"""
from __future__ import annotations

import argparse
import os
import sys

from segxal.errors import InvalidInput
from services.eem.pipeline import PipelineConfig
from services.common.channel import add_channel_args, channel_config_from_args
from services.common.runner import serve_until_signal
from services.common.server import add_server_args, server_config_from_args
from services.eem.server import EemServer, EemServiceConfig

ENV_PREFIX = "SEGXAL_EEM_"
_DEFAULT_SERVER = EemServiceConfig(seg_target="", depth_target="", storage_roots=[]).server


def _env(name: str, default=None):
    return os.environ.get(ENV_PREFIX + name, default)


def build_parser() -> argparse.ArgumentParser:
    defaults = PipelineConfig()
    p = argparse.ArgumentParser(prog="python -m services.eem.main", description=__doc__.splitlines()[0])
    p.add_argument("--seg-target", default=_env("SEG_TARGET"), help="segmentation inference server host:port")
    p.add_argument("--depth-target", default=_env("DEPTH_TARGET"),
                   help="depth inference server host:port (default: --seg-target)")
    env_roots = [r for r in (_env("STORAGE_ROOTS") or "").split(os.pathsep) if r]
    p.add_argument("--storage-root", dest="storage_roots", action="append", default=None,
                   help="folder or fsspec URL prefix frames may be read from (repeatable)")
    p.set_defaults(env_roots=env_roots)
    p.add_argument("--seg-model", default=_env("SEG_MODEL", "segmentation"))
    p.add_argument("--depth-model", default=_env("DEPTH_MODEL", "depth"))
    p.add_argument("--max-concurrency", type=int, default=int(_env("MAX_CONCURRENCY", defaults.max_concurrency)),
                   help="frames scored at once across all calls")
    p.add_argument("--stream-window", type=int, default=int(_env("STREAM_WINDOW", defaults.stream_window)),
                   help="requests a stream reads ahead of its results")
    p.add_argument("--inference-timeout-s", type=float,
                   default=float(_env("INFERENCE_TIMEOUT_S", defaults.inference_timeout_s)))
    add_channel_args(p, "backend", ENV_PREFIX, "the inference servers")
    add_server_args(p, ENV_PREFIX, _DEFAULT_SERVER)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> EemServiceConfig:
    """Raises:
        InvalidInput: a required setting is missing.
    """
    roots = args.storage_roots or args.env_roots
    if not args.seg_target:
        raise InvalidInput("--seg-target (or SEGXAL_EEM_SEG_TARGET) is required")
    if not roots:
        raise InvalidInput("at least one --storage-root (or SEGXAL_EEM_STORAGE_ROOTS) is required")
    return EemServiceConfig(
        seg_target=args.seg_target, depth_target=args.depth_target or args.seg_target, storage_roots=roots,
        seg_model=args.seg_model, depth_model=args.depth_model,
        pipeline=PipelineConfig(max_concurrency=args.max_concurrency, stream_window=args.stream_window,
                                inference_timeout_s=args.inference_timeout_s),
        server=server_config_from_args(args, _DEFAULT_SERVER), backend_channel=channel_config_from_args(args, "backend"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the banner is the line tests and scripts wait for
    return serve_until_signal("eem", "EEM scoring listening on port {port}", lambda: EemServer(config_from_args(args)), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
