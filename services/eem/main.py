"""Entry point of the EEM scoring service.

    python -m services.eem.main --seg-target host:port --depth-target host:port \
        --storage-root DIR [--storage-root DIR ...] --port N

Every flag has an environment variable (SEGXAL_EEM_<FLAG>, e.g. SEGXAL_EEM_SEG_TARGET;
SEGXAL_EEM_STORAGE_ROOTS is a list separated by the OS path separator); flags win. The config is
built once here and passed down. SIGTERM / SIGINT drain in-flight frames, then exit.
"""
from __future__ import annotations

import argparse
import sys

from segxal.errors import InvalidInput
from services.eem.pipeline import PipelineConfig
from services.common.channel import add_channel_args, channel_config_from_args
from services.common.flags import EnvFlags, paths_from
from services.common.runner import serve_until_signal
from services.common.server import add_server_args, server_config_from_args
from services.eem.server import EemServer, EemServiceConfig

ENV_PREFIX = "SEGXAL_EEM_"
_DEFAULT_SERVER = EemServiceConfig(seg_target="", depth_target="", storage_roots=[]).server


def build_parser() -> argparse.ArgumentParser:
    defaults = PipelineConfig()
    p = argparse.ArgumentParser(prog="python -m services.eem.main", description=__doc__.splitlines()[0])
    f = EnvFlags(p, ENV_PREFIX)
    f.add("--seg-target", None,
          help="segmentation inference server host:port")
    f.add("--depth-target", None,
          help="depth inference server host:port (default: --seg-target)")
    f.paths("--storage-root", "storage_roots", env="STORAGE_ROOTS",
          help="folder or fsspec URL prefix frames may be read from (repeatable)")
    f.add("--seg-model", "segmentation", help="segmentation model's name in the repository")
    f.add("--depth-model", "depth", help="depth model's name in the repository")
    f.add("--max-concurrency", defaults.max_concurrency, type=int,
          help="frames scored at once across all calls")
    f.add("--stream-window", defaults.stream_window, type=int,
          help="requests a stream reads ahead of its results")
    f.add("--inference-timeout-s", defaults.inference_timeout_s, type=float,
          help="deadline of each call to an inference server")
    add_channel_args(p, "backend", ENV_PREFIX, "the inference servers")
    add_server_args(p, ENV_PREFIX, _DEFAULT_SERVER)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> EemServiceConfig:
    """Raises:
        InvalidInput: a required setting is missing.
    """
    roots = paths_from(args, "storage_roots")
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
