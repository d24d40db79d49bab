"""Configuration of the trainer service: one dataclass, built once in main() from flags and env and
passed down."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from segxal.errors import InvalidInput
from segxal.export import ExportConfig
from segxal.graph.traced_cam import DEFAULT_CAM_METHOD, DEFAULT_CAM_TARGET, DEFAULT_UNCERTAINTY_AT
from segxal.models.unet import UNetConfig
from services.common.channel import ChannelConfig
from services.common.model_repository import BatchingConfig
from services.common.server import ServerConfig
from services.inference.client import DEFAULT_SEGMENTATION_MODEL


@dataclass
class TrainerConfig:
    repository: str  # model repository (Triton layout) the inference servers poll
    state_dir: str  # jobs and per-version training state (checkpoints)
    data: str  # Cityscapes-layout folder holding the held-out split
    storage_roots: list[str]  # frames and masks are read only from under these (segxal.storage)
    eval_split: str = "val"  # the held-out split of `data`
    # The seed set: the labeled frames of a Cityscapes-layout split, always trained on (ground
    # truth, whole frames); None: no seed set. Must lie under a storage root.
    seed_data: str | None = None
    seed_split: str = "train"
    seed_frames: int = 0  # the first N frames by id; 0 = every frame of the split
    model_name: str = DEFAULT_SEGMENTATION_MODEL
    size: tuple[int, int] = (256, 512)  # (H, W) frames are resized to for training and evaluation
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(width=16))  # the first version only
    # Any other segmentation model for the first version, by import path plus keyword arguments
    # and optional weights (segxal.models.external); None: the project's U-Net (`unet`).
    model_import: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    model_checkpoint: str | None = None
    # Such a model's CAM (segxal.graph.traced_cam): the layer (None: its family's last encoder
    # stage), the target and the method; the U-Net keeps its own bottleneck CAM
    cam_layer: str | None = None
    cam_target: str = DEFAULT_CAM_TARGET
    cam_method: str = DEFAULT_CAM_METHOD
    uncertainty_at: str = DEFAULT_UNCERTAINTY_AT  # the grid of its EBU, p_max and CAM target (docs/cam.md)
    # The model's classes, index = label value, written as the published config's label file;
    # None: the 19 Cityscapes trainIds. The training and held-out labels must use the same map.
    class_names: tuple[str, ...] | None = None
    epochs: int = 4  # per fine-tuning job
    batch_size: int = 8
    learning_rate: float = 1e-3  # below segxal.train's 2e-3: fine-tuning starts from a trained model
    seed: int = 0
    # StartJob refuses more (INVALID_ARGUMENT): one job holds the one worker for its whole run, so
    # an unbounded one would block every later job. 1000 epochs is 25x the main loop's seed
    # training; a batch holds min(batch_size, frames) frames in memory at once.
    max_epochs: int = 1000
    max_batch_size: int = 64
    device: str = "auto"  # segxal.train.resolve_device: cuda when present, else cpu
    torch_threads: int = 0  # torch intra-op threads; 0 = torch's default
    miou_tolerance: float = 0.01  # a candidate may lose this much held-out mIoU (fraction) and publish
    # Parity thresholds and trace size (trace_hw is set to `size`); the parity check also runs on
    # this many real training frames.
    export: ExportConfig = field(default_factory=ExportConfig)
    parity_frames: int = 2
    batching: BatchingConfig = field(default_factory=BatchingConfig)  # written into config.pbtxt
    max_queued_jobs: int = 8  # StartJob beyond this answers RESOURCE_EXHAUSTED
    coordinator: str | None = None  # coordinator target; enables StartJob's pool_id
    coordinator_channel: ChannelConfig = field(default_factory=ChannelConfig)  # TLS / token to it
    server: ServerConfig = field(default_factory=lambda: ServerConfig(address="0.0.0.0:50055"))
    # Debugging crash safety only: seconds to sleep inside a publish, after the version's files are
    # complete in the temp folder and before the rename (the kill-mid-publish test).
    publish_pause_s: float = 0.0

    def validate(self) -> "TrainerConfig":
        """Raises:
            InvalidInput: a size, count or threshold out of range.
        """
        h, w = self.size
        if h <= 0 or w <= 0:
            raise InvalidInput(f"training size must be positive, got {h}x{w}")
        for name in ("epochs", "batch_size", "max_queued_jobs", "max_epochs", "max_batch_size"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be positive, got {getattr(self, name)}")
        for name, limit in (("epochs", "max_epochs"), ("batch_size", "max_batch_size")):
            if getattr(self, name) > getattr(self, limit):
                raise InvalidInput(f"{name} {getattr(self, name)} is over {limit} {getattr(self, limit)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidInput(f"learning_rate must be finite and positive, got {self.learning_rate}")
        if not self.storage_roots:
            raise InvalidInput("at least one storage root is required (frames are read only from under them)")
        return self
