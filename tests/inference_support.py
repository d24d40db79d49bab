"""Shared helpers of the tests/test_inference_*.py files: tiny exported models, a model repository
holding them, and the real inference server on an ephemeral port."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import torch

from segxal.export import ExportConfig, ExportResult, export_depth, export_segmentation
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from services.common.model_repository import BatchingConfig, ModelRepository, build_config
from services.common.server import ServerConfig
from services.inference.config import InferenceServerConfig, RuntimeConfig
from services.inference.server import InferenceServer

H, W = 64, 128
TRACE = ExportConfig(trace_hw=(H, W))


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(UNetConfig(width=4, depth=2))


def tiny_depth(seed: int = 0) -> DepthNet:
    torch.manual_seed(seed)
    return DepthNet(DepthConfig(width=4, depth=2))


def export_models(root: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, list[ExportResult]]:
    """Segmentation and depth exports, one per seed (different weights = distinguishable versions)."""
    out: dict[str, list[ExportResult]] = {"segmentation": [], "depth": []}
    for s in seeds:
        out["segmentation"].append(export_segmentation(tiny_unet(s), root / f"seg{s}" / "model.onnx", TRACE))
        out["depth"].append(export_depth(tiny_depth(s), root / f"depth{s}" / "model.onnx", TRACE))
    return out


def make_repository(root: Path, exports: dict[str, list[ExportResult]],
                    batching: BatchingConfig | None = None, versions: int = 1) -> ModelRepository:
    """A fresh repository with `versions` versions of each exported model."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    repo = ModelRepository(root)
    for name, results in exports.items():
        config = build_config(name, results[0].spec, batching)
        for r in results[:versions]:
            repo.publish(name, r.path, config)
    return repo


def images(batch: int = 1, seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)


@contextlib.contextmanager
def running_server(repo: ModelRepository, poll_interval_s: float = 0.0, max_tensor_bytes: int = 64 << 20,
                   grace_s: float = 5.0, **tls):
    """The real server (services.inference.server) on 127.0.0.1:<ephemeral>, stopped on exit.
    `tls`: ServerConfig's tls_cert / tls_key / tls_client_ca."""
    cfg = InferenceServerConfig(
        repository=str(repo.root),
        server=ServerConfig(address="127.0.0.1:0", max_workers=32, grace_s=grace_s, **tls),
        runtime=RuntimeConfig(intra_op_threads=1),  # 2 shared cores: keep each test light
        poll_interval_s=poll_interval_s, max_tensor_bytes=max_tensor_bytes)
    server = InferenceServer(cfg)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s)
