"""Shared helpers of the tests/test_trainer_*.py files: a tiny trainer configuration over the
synthetic dataset, annotations written like a labeler's, the real trainer server in-process on an
ephemeral port, and polling an inference server for the version it serves."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from segxal import imageio
from segxal.data.cityscapes import list_frames, load_train_ids
from segxal.errors import SegxalError
from segxal.export import ExportConfig
from segxal.labels import IGNORE
from segxal.models.unet import UNetConfig
from segxal.storage import local_uri
from services.common.server import ServerConfig
from services.inference.client import InferenceClient
from services.trainer.api import AnnotationRef
from services.trainer.config import TrainerConfig
from services.trainer.server import TrainerServer

SIZE = (64, 128)
SEED_FRAMES = 8  # the first 8 training frames by id are the seed set; the rest is the pool


def trainer_config(data: Path, root: Path, **overrides) -> TrainerConfig:
    """Tiny sizes for 2 shared cores: U-Net width 4, 2 levels, 64x128, a few epochs."""
    (root / "repo").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    cfg = dict(repository=str(root / "repo"), state_dir=str(root / "state"), data=str(data),
               storage_roots=[str(data), str(root / "annotations")], seed_data=str(data),
               seed_frames=SEED_FRAMES, size=SIZE, unet=UNetConfig(width=4, depth=2), epochs=3, batch_size=4,
               learning_rate=5e-3, torch_threads=1, export=ExportConfig(trace_hw=SIZE),
               server=ServerConfig(address="127.0.0.1:0", max_workers=8, grace_s=5.0))
    cfg.update(overrides)
    return TrainerConfig(**cfg)


@contextlib.contextmanager
def running_trainer(cfg: TrainerConfig):
    """The real trainer server on 127.0.0.1:<ephemeral>, stopped on exit."""
    server = TrainerServer(cfg)
    server.start()
    try:
        yield server
    finally:
        server.stop(5.0)


def pool_frames(data: Path):
    return list_frames(data, "train", require_labels=True)[SEED_FRAMES:]


def region_annotations(data: Path, out: Path, cycle: int, count: int = 4) -> list[AnnotationRef]:
    """What a person fixing one region per frame sends: ground truth inside a box, 255 elsewhere,
    as trainId PNG files under a storage root. Each cycle annotates the next `count` pool frames."""
    refs = []
    for frame in pool_frames(data)[(cycle - 1) * count: cycle * count]:
        gt = load_train_ids(frame)  # [H, W]
        mask = np.full_like(gt, IGNORE)
        h, w = gt.shape
        mask[h // 3:, w // 4: 3 * w // 4] = gt[h // 3:, w // 4: 3 * w // 4]  # the region fixed
        path = out / f"cycle{cycle}_{frame.frame_id}.png"
        imageio.write_png(path, mask)
        refs.append(AnnotationRef(frame_uri=local_uri(frame.image), mask_uri=local_uri(path), region_level=True,
                                  annotation_id=f"c{cycle}-{frame.frame_id}"))
    return refs


def frame_images(data: Path, n: int = 2) -> np.ndarray:
    """uint8 [n, H, W, 3] held-out frames to ask the inference server about."""
    return np.stack([imageio.read_rgb(f.image) for f in list_frames(data, "val")[:n]])


def wait_for_version(client: InferenceClient, images: np.ndarray, version: int, timeout_s: float = 30.0) -> dict:
    """Poll until the inference server answers with `version` (it hot-reloads the repository)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            out = client.infer_segmentation(images)
            last = out["model_version"]
            if last == str(version):
                return out
        except SegxalError as e:  # not loaded yet
            last = e
        time.sleep(0.1)
    raise AssertionError(f"inference server did not serve version {version} within {timeout_s} s (last: {last})")
