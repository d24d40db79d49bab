"""Entry point of the trainer service.

    python -m services.trainer.main --repo DIR --state DIR --data DIR --storage-root DIR --port N

--data is a Cityscapes-layout folder holding the held-out split (--eval-split, default val);
--seed-data (with --seed-split, --seed-frames) names the seed set, which must lie under a
--storage-root like every frame and mask the trainer reads. Every flag has an environment variable
(SEGXAL_TRAINER_<FLAG>, e.g. SEGXAL_TRAINER_REPO; SEGXAL_TRAINER_STORAGE_ROOTS is a list separated
by the OS path separator); flags win. The config is built once here and passed down. SIGTERM /
SIGINT stop after the running job's current epoch (it resumes at the next start).

SEGXAL_TRAINER_DEBUG_PUBLISH_PAUSE_S (no flag: for crash-safety tests only) sleeps inside every
publish between the complete temp folder and its rename.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from segxal.errors import InvalidInput
from segxal.export import ExportConfig
from segxal.graph.traced_cam import CAM_METHODS, CAM_TARGETS, UNCERTAINTY_AT
from segxal.labels import read_label_file
from segxal.models.unet import UNetConfig
from segxal.train import parse_size
from services.common.channel import add_channel_args, channel_config_from_args
from services.common.flags import EnvFlags, paths_from
from services.common.runner import serve_until_signal
from services.common.server import add_server_args, server_config_from_args
from services.trainer.config import TrainerConfig
from services.trainer.server import TrainerServer

ENV_PREFIX = "SEGXAL_TRAINER_"


def build_parser() -> argparse.ArgumentParser:
    d = TrainerConfig(repository="", state_dir="", data="", storage_roots=[])
    p = argparse.ArgumentParser(prog="python -m services.trainer.main", description=__doc__.splitlines()[0])
    f = EnvFlags(p, ENV_PREFIX)
    f.add("--repo", None,
          help="model repository (Triton layout) to publish into")
    f.add("--state", None,
          help="folder for jobs and per-version checkpoints")
    f.add("--data", None,
          help="Cityscapes-layout folder with the held-out split")
    f.add("--eval-split", d.eval_split, help="split of --data the gate evaluates on")
    f.paths("--storage-root", "storage_roots", env="STORAGE_ROOTS",
          help="folder or fsspec URL prefix frames and masks may be read from (repeatable)")
    f.add("--seed-data", None,
          help="Cityscapes-layout folder of the seed set")
    f.add("--seed-split", d.seed_split, help="split of --seed-data")
    f.add("--seed-frames", d.seed_frames, type=int,
          help="the first N labeled frames of the seed split (0: all)")
    f.add("--model-name", d.model_name, help="name the trainer publishes under in the repository")
    f.add("--size", f"{d.size[0]}x{d.size[1]}",
          help="HxW to train and evaluate at")
    f.add("--width", d.unet.width, type=int,
          help="U-Net width (first version)")
    f.add("--unet-depth", d.unet.depth, type=int,
          help="U-Net levels (first version)")
    f.add("--model-import", None,
          help="any segmentation model for the first version, by import path, e.g. "
          "torchvision.models.segmentation.deeplabv3_mobilenet_v3_large (default: the U-Net)")
    f.add("--model-kwargs", "{}",
          help='its keyword arguments as JSON, e.g. {"num_classes": 4, "weights": null}')
    f.add("--model-checkpoint", None,
          help="its initial weights (state_dict file)")
    f.add("--cam-layer", None,
          help="its CAM layer: a name, a stage rule (last, strideS) or several joined by + (default: the last "
               "encoder/backbone stage of its family; docs/cam.md)")
    f.add("--cam-target", d.cam_target, choices=CAM_TARGETS,
          help="what its CAM explains (docs/cam.md)")
    f.add("--cam-method", d.cam_method, choices=CAM_METHODS,
          help="its CAM's channel weighting: gradcam (spatially pooled gradients) or hirescam (per location; "
               "docs/cam.md)")
    f.add("--uncertainty-at", d.uncertainty_at, choices=UNCERTAINTY_AT,
          help="grid of its EBU, p_max and CAM target: the input's or the model's own (cheaper; docs/cam.md)")
    f.add("--labels", None,
          help="class names, one per line (the published config's label file; default Cityscapes)")
    f.add("--epochs", d.epochs, type=int, help="epochs of a fine-tuning job that names none")
    f.add("--batch-size", d.batch_size, type=int, help="frames per optimiser step")
    f.add("--lr", d.learning_rate, type=float, help="peak learning rate")
    f.add("--seed", d.seed, type=int, help="seed of the weights and the shuffling")
    f.add("--max-epochs", d.max_epochs, type=int,
          help="StartJob refuses more epochs (one job holds the worker for its whole run)")
    f.add("--max-batch-size", d.max_batch_size, type=int,
          help="StartJob refuses a larger batch size")
    f.add("--device", d.device,
          help="auto (cuda when present), cpu, cuda")
    f.add("--torch-threads", d.torch_threads, type=int, help="PyTorch threads (0: PyTorch's default)")
    f.add("--miou-tolerance", d.miou_tolerance, type=float,
          help="held-out mIoU a new version may lose and still publish (fraction)")
    f.add("--coordinator", None,
          help="coordinator host:port (enables pool_id)")
    add_channel_args(p, "coordinator", ENV_PREFIX, "the coordinator")
    add_server_args(p, ENV_PREFIX, d.server)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> TrainerConfig:
    """Raises:
        InvalidInput: a required setting is missing or malformed.
    """
    for flag, value in (("--repo", args.repo), ("--state", args.state), ("--data", args.data)):
        if not value:
            raise InvalidInput(f"{flag} (or {ENV_PREFIX}{flag[2:].upper()}) is required")
    roots = paths_from(args, "storage_roots")
    size = parse_size(args.size)
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--model-kwargs is not JSON: {e}") from None
    if not isinstance(model_kwargs, dict):
        raise InvalidInput(f"--model-kwargs must be a JSON object, got {args.model_kwargs!r}")
    return TrainerConfig(
        repository=args.repo, state_dir=args.state, data=args.data, storage_roots=roots,
        eval_split=args.eval_split, seed_data=args.seed_data, seed_split=args.seed_split,
        seed_frames=args.seed_frames, model_name=args.model_name, size=size,
        unet=UNetConfig(width=args.width, depth=args.unet_depth), epochs=args.epochs,
        model_import=args.model_import, model_kwargs=model_kwargs, model_checkpoint=args.model_checkpoint,
        cam_layer=args.cam_layer, cam_target=args.cam_target, cam_method=args.cam_method,
        uncertainty_at=args.uncertainty_at,
        class_names=read_label_file(args.labels) if args.labels else None,
        batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, device=args.device,
        max_epochs=args.max_epochs, max_batch_size=args.max_batch_size,
        torch_threads=args.torch_threads, miou_tolerance=args.miou_tolerance,
        export=ExportConfig(trace_hw=size), coordinator=args.coordinator,
        coordinator_channel=channel_config_from_args(args, "coordinator"),
        server=server_config_from_args(args, TrainerConfig(repository="", state_dir="", data="", storage_roots=[]).server),
        publish_pause_s=float(os.environ.get(ENV_PREFIX + "DEBUG_PUBLISH_PAUSE_S", "0"))).validate()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the banner is the line tests and scripts wait for
    return serve_until_signal("trainer", "trainer listening on port {port}", lambda: TrainerServer(config_from_args(args)), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
