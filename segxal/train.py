"""Training and evaluation on CPU (GPU when present): segmentation U-Net and depth net.

Checkpoints are written atomically every epoch (model, optimiser, epoch, RNG) so a killed run
resumes where it stopped. The same functions serve the CLI, the in-process active-learning loop
and the trainer service.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from segxal.progress import progress

from segxal import imageio
from segxal.data.cityscapes import SegDataset, list_frames
from segxal.errors import InvalidInput, NotFound
from segxal.labels import CLASS_NAMES, IGNORE, NUM_CLASSES
from segxal.metrics import confusion_matrix, iou_report
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.external import ExternalModel, ExternalModelConfig, num_classes_of
from segxal.models.unet import UNet, UNetConfig

log = logging.getLogger(__name__)
EXTERNAL = "external"  # checkpoint kind of a model built by import path (segxal.models.external)


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    flip: bool = True  # random horizontal flip: driving scenes are left/right symmetric enough
    # Per-class loss weights from the training labels: "none" or "enet" (Paszke et al., ENet 2016:
    # w_c = 1 / ln(1.02 + p_c), p_c the class's pixel share), the usual Cityscapes recipe that keeps
    # rare classes (rider, motorcycle, traffic light) from being drowned by road and building.
    class_weights: str = "none"
    # Random crop (height, width) of each batch at full resolution, or None: whole frames. Objects
    # keep their size (small ones their pixels) while a step costs what a smaller image costs; the
    # usual Cityscapes recipe. Evaluation always runs on whole frames.
    crop: tuple[int, int] | None = None
    device: str = "auto"  # auto = cuda when available
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | Path, model: torch.nn.Module, *, kind: str, optimizer=None,
                    epoch: int = 0, meta: dict | None = None) -> None:
    """Atomic torch.save of model weights + config (+ optimiser state for resuming)."""
    state = {
        "kind": kind,  # "unet" | "depth"
        "config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "torch_rng": torch.get_rng_state(),
        "meta": meta or {},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    imageio.atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"{p}: checkpoint does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise InvalidInput(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from None


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    if ckpt.get("kind") == "unet":
        model = UNet(UNetConfig(**ckpt["config"]))
    elif ckpt.get("kind") == EXTERNAL:
        model = ExternalModel(ExternalModelConfig(**ckpt["config"]))
    elif ckpt.get("kind") == "depth":
        model = DepthNet(DepthConfig(**ckpt["config"]))
    else:
        raise InvalidInput(f"checkpoint kind {ckpt.get('kind')!r} is not 'unet', '{EXTERNAL}' or 'depth'")
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_model(path: str | Path) -> torch.nn.Module:
    return model_from_checkpoint(read_checkpoint(path))


# ---------------------------------------------------------------- training

def _loader(dataset, batch_size: int, shuffle: bool, gen: torch.Generator | None = None,
            drop_single: bool = False) -> DataLoader:
    # workers=0: the dataset caches decoded frames in memory; worker processes would each
    # hold a copy and, on 2 cores, compete with the training threads.
    # drop_single: skip a last batch of one frame (BatchNorm after a global pooling, as in
    # DeepLabV3's ASPP, cannot train on one value per channel); shuffling moves the skipped frame
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0,
                      drop_last=drop_single and len(dataset) % batch_size == 1 and len(dataset) > 1)


def _random_crop(crop: tuple[int, int], gen: torch.Generator, *tensors: torch.Tensor) -> tuple:
    """The same random window [.., y:y+ch, x:x+cw] of every tensor (one window per batch)."""
    (h, w), (ch, cw) = tensors[0].shape[-2:], crop
    if ch > h or cw > w:
        raise InvalidInput(f"crop {ch}x{cw} is larger than the training frames ({h}x{w})")
    y = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
    x = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
    return tuple(t[..., y:y + ch, x:x + cw] for t in tensors)


def _fit(model: torch.nn.Module, dataset, cfg: TrainConfig, loss_fn: Callable, *, kind: str,
         ckpt_path: str | Path | None, desc: str, meta: dict | None = None,
         on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """Shared epoch loop: AdamW + cosine LR, flip augmentation, per-epoch atomic checkpoint,
    resume from `ckpt_path` when it holds an unfinished run of the same length. `on_epoch(epochs
    done, mean loss)` runs after each epoch's checkpoint (progress reports; raising stops the run
    there, resumable)."""
    if len(dataset) == 0:
        raise InvalidInput("training set is empty")
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(dataset) / cfg.batch_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    start_epoch = 0
    if ckpt_path is not None and Path(ckpt_path).is_file():
        ck = read_checkpoint(ckpt_path)
        if ck.get("kind") == kind and ck.get("meta", {}).get("train_epochs") == cfg.epochs \
                and ck.get("optimizer") is not None:
            model.load_state_dict(ck["state_dict"])
            opt.load_state_dict(ck["optimizer"])
            start_epoch = ck["epoch"]
            log.info("resuming %s from epoch %d", ckpt_path, start_epoch)
    losses: list[float] = []  # this call's epochs (a finished checkpoint: none)
    t0 = time.time()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        # re-seeded per epoch so a resumed run shuffles and flips exactly like an unbroken one
        gen.manual_seed(cfg.seed * 100_003 + epoch)
        running, n = 0.0, 0
        it = _loader(dataset, cfg.batch_size, True, gen, drop_single=isinstance(model, ExternalModel))
        bar = progress(it, desc=f"{desc} {epoch + 1}/{cfg.epochs}", unit="batch", enabled=cfg.progress)
        for img, lab, depth in bar:
            img, lab, depth = img.to(device), lab.to(device), depth.to(device)
            if cfg.crop is not None:
                img, lab, depth = _random_crop(cfg.crop, gen, img, lab, depth)
            if cfg.flip and torch.rand(1, generator=gen).item() < 0.5:
                img, lab, depth = img.flip(-1), lab.flip(-1), depth.flip(-1)
            for g in opt.param_groups:  # cosine decay by global step (resumes exactly)
                g["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
            loss = loss_fn(model, img, lab, depth)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += float(loss.detach()) * img.shape[0]
            n += img.shape[0]
            bar.set_postfix(loss=f"{running / n:.4f}")
        losses.append(running / max(n, 1))
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, model, kind=kind, optimizer=opt, epoch=epoch + 1,
                            meta={**(meta or {}), "train_epochs": cfg.epochs, "losses": losses})
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    model.eval()
    return {"losses": losses, "seconds": time.time() - t0,
            "seconds_per_epoch": (time.time() - t0) / max(1, cfg.epochs - start_epoch)}


CLASS_WEIGHTINGS = ("none", "enet")


def class_pixel_counts(dataset, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Labeled pixels per train class over a dataset (annotations included; 255 not counted).

    Raises:
        InvalidInput: a label outside 0..num_classes-1 (and not 255): data and model disagree.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for i in range(len(dataset)):
        lab = np.asarray(dataset[i][1])
        lab = lab[lab != IGNORE].ravel()
        if lab.size and int(lab.max()) >= num_classes:
            raise InvalidInput(f"training labels hold class {int(lab.max())} but the model has {num_classes} "
                               f"classes; the data's label map must be the model's")
        counts += np.bincount(lab, minlength=num_classes)[:num_classes]
    return counts


def class_weights_for(dataset, method: str, num_classes: int = NUM_CLASSES) -> torch.Tensor | None:
    if method not in CLASS_WEIGHTINGS:
        raise InvalidInput(f"class weighting must be one of {CLASS_WEIGHTINGS}, got {method!r}")
    if method == "none":
        return None
    counts = class_pixel_counts(dataset, num_classes)
    p = counts / max(1, counts.sum())
    w = 1.0 / np.log(1.02 + p)
    w[counts == 0] = 0.0  # absent classes never appear as targets; keep the weights finite and plain
    return torch.tensor(w, dtype=torch.float32)


def train_segmentation(model: UNet, dataset, cfg: TrainConfig, ckpt_path=None, meta=None,
                       on_epoch: Callable[[int, float], None] | None = None) -> dict:
    """Fine-tune / train a U-Net or an ExternalModel (segxal.models.external: any model by import
    path) with cross-entropy (255 = not labeled, ignored), class-weighted when cfg.class_weights
    says so."""
    weight = class_weights_for(dataset, cfg.class_weights, num_classes_of(model))
    if weight is not None:
        weight = weight.to(resolve_device(cfg.device))

    def loss(m, img, lab, _depth):
        return F.cross_entropy(m(img), lab, weight=weight, ignore_index=IGNORE)
    return _fit(model, dataset, cfg, loss, kind=EXTERNAL if isinstance(model, ExternalModel) else "unet",
                ckpt_path=ckpt_path, desc="train seg", meta=meta, on_epoch=on_epoch)


def train_depth(model: DepthNet, dataset, cfg: TrainConfig, ckpt_path=None, meta=None) -> dict:
    """L1 on valid pixels between predicted and true relative inverse depth
    (disparity / disparity_scale, clipped to [0, 1]); sky and invalid pixels are left out."""
    scale = model.cfg.disparity_scale

    def loss(m, img, _lab, disp):
        valid = disp > 0
        target = (disp / scale).clamp(0, 1)
        pred = m(img)
        return (pred - target).abs()[valid].mean() if valid.any() else pred.sum() * 0
    return _fit(model, dataset, cfg, loss, kind="depth", ckpt_path=ckpt_path,
                desc="train depth", meta=meta)


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_labels(model: UNet, images: torch.Tensor) -> np.ndarray:
    """images [B, 3, H, W] normalised -> trainIds uint8 [B, H, W]."""
    device = next(model.parameters()).device
    return model(images.to(device)).argmax(1).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def evaluate_segmentation(model: UNet, dataset, batch_size: int = 8) -> np.ndarray:
    """Confusion matrix over a labeled dataset (accumulate, then segxal.metrics.iou_report), over
    the model's classes."""
    model.eval()
    c = num_classes_of(model)
    cm = np.zeros((c, c + 1), dtype=np.int64)
    for img, lab, _ in _loader(dataset, batch_size, False):
        cm += confusion_matrix(predict_labels(model, img), lab.numpy(), c)
    return cm


@torch.no_grad()
def evaluate_depth(model: DepthNet, dataset, batch_size: int = 8) -> dict:
    """AbsRel and δ<1.25 of depth on valid pixels. The prediction is relative inverse depth, so it
    is aligned to the true disparity by a per-image median scale (the usual protocol for
    relative-depth models, e.g. MiDaS), then both are inverted to depth."""
    model.eval()
    device = next(model.parameters()).device
    absrel, delta, n = 0.0, 0.0, 0
    for img, _, disp in _loader(dataset, batch_size, False):
        pred = model(img.to(device)).cpu()
        for p, d in zip(pred, disp):
            valid = (d > 0) & (p > 1e-4)
            if valid.sum() < 10:
                continue
            p, d = p[valid].double(), d[valid].double()
            p = p * (d.median() / p.median())
            depth_pred, depth_true = 1.0 / p, 1.0 / d  # up to the common factor baseline*fx
            absrel += float(((depth_pred - depth_true).abs() / depth_true).mean())
            ratio = torch.maximum(depth_pred / depth_true, depth_true / depth_pred)
            delta += float((ratio < 1.25).double().mean())
            n += 1
    if n == 0:
        raise InvalidInput("no frame with valid disparity to evaluate depth on")
    return {"abs_rel": absrel / n, "delta_1.25": delta / n, "frames": n}


def disparity_scale_from(dataset, percentile: float = 99.5, max_frames: int = 64) -> float:
    """The disparity that maps to inverse depth 1.0: a high percentile of valid disparity."""
    vals = []
    for i in range(min(len(dataset), max_frames)):
        _, _, disp = dataset.raw(i)
        if disp is not None:
            vals.append(disp[disp > 0])
    vals = np.concatenate(vals) if vals else np.array([])
    if vals.size == 0:
        raise InvalidInput("the training frames have no valid disparity")
    return float(np.percentile(vals, percentile))


# ---------------------------------------------------------------- CLI

def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidInput(f"--size must look like 256x512, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise InvalidInput(f"--size must be positive, got {text!r}")
    return h, w


def _check_size(size: tuple[int, int], multiple: int, flag: str = "--size") -> None:
    if size[0] % multiple or size[1] % multiple:
        raise InvalidInput(f"{flag} {size[0]}x{size[1]}: height and width must be multiples of {multiple}")


def _train_cfg(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       progress=not args.no_progress,
                       class_weights=getattr(args, "class_weights", "none"),
                       crop=parse_size(args.crop) if getattr(args, "crop", "") else None)


def _limit(frames, n):
    return frames[:n] if n else frames


def _cmd_train_seg(args) -> int:
    size = parse_size(args.size)
    model = UNet(UNetConfig(width=args.width, depth=args.depth))
    _check_size(size, model.multiple)
    if args.crop:
        _check_size(parse_size(args.crop), model.multiple, "--crop")
    train = SegDataset(_limit(list_frames(args.data, "train", require_labels=True), args.limit), size)
    val = SegDataset(list_frames(args.data, "val", require_labels=True), size)
    stats = train_segmentation(model, train, _train_cfg(args), ckpt_path=args.out)
    report = {**iou_report(evaluate_segmentation(model, val)), "train": stats,
              "train_frames": len(train), "val_frames": len(val), "size": list(size),
              "model": model.cfg.to_dict()}
    _write_report(args.out, report)
    _print_iou(report)
    print(f"seconds per epoch: {stats['seconds_per_epoch']:.1f}  checkpoint: {args.out}")
    return 0


def _cmd_train_depth(args) -> int:
    size = parse_size(args.size)
    train = SegDataset(_limit(list_frames(args.data, "train"), args.limit), size,
                       with_labels=False, with_depth=True)
    val = SegDataset(list_frames(args.data, "val"), size, with_labels=False, with_depth=True)
    model = DepthNet(DepthConfig(width=args.width, depth=args.depth,
                                 disparity_scale=disparity_scale_from(train)))
    _check_size(size, model.multiple)
    stats = train_depth(model, train, _train_cfg(args), ckpt_path=args.out)
    report = {**evaluate_depth(model, val), "train": stats, "model": model.cfg.to_dict()}
    _write_report(args.out, report)
    print(f"depth AbsRel {report['abs_rel']:.3f}  δ<1.25 {report['delta_1.25']:.3f}  "
          f"({report['frames']} val frames; {stats['seconds_per_epoch']:.1f} s/epoch)")
    return 0


def _cmd_eval(args) -> int:
    model = load_model(args.checkpoint)
    if not isinstance(model, UNet):
        raise InvalidInput(f"{args.checkpoint}: not a segmentation checkpoint")
    size = parse_size(args.size)
    ds = SegDataset(list_frames(args.data, args.split, require_labels=True), size)
    report = iou_report(evaluate_segmentation(model, ds))
    _print_iou(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _write_report(ckpt: str, report: dict) -> None:
    imageio.atomic_write_bytes(Path(ckpt).with_suffix(".json"), json.dumps(report, indent=2).encode())


def _print_iou(report: dict) -> None:
    print(f"mIoU {100 * report['miou']:.2f}")
    for name in CLASS_NAMES:
        v = report["per_class"][name]
        print(f"  {name:14s} {'   -' if v is None else f'{100 * v:5.1f}'}")


def _common(p: argparse.ArgumentParser, width: int) -> None:
    p.add_argument("--data", required=True, help="Cityscapes-layout folder (segxal data synth)")
    p.add_argument("--out", required=True, help="checkpoint path (.pt); a report .json goes beside")
    p.add_argument("--size", default="256x512", help="HxW to train at (default 256x512)")
    p.add_argument("--width", type=int, default=width, help="channels of the first level (doubling per level)")
    p.add_argument("--depth", type=int, default=4, help="levels of the U-Net (downsamplings)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=8, help="frames per optimiser step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, shuffling and augmentation")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training frames")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register_cli(sub) -> None:
    train = sub.add_parser("train", help="train the segmentation or depth model").add_subparsers(
        dest="what", required=True)
    p = train.add_parser("seg", help="train the U-Net on all labels; prints val mIoU per class")
    _common(p, width=32)
    p.add_argument("--class-weights", choices=CLASS_WEIGHTINGS, default="enet",
                   help="per-class loss weights from the training labels (enet: 1/ln(1.02+p))")
    p.add_argument("--crop", default="", help="train on random HxW crops at full resolution (e.g. 128x256); "
                   "evaluation uses whole frames")
    p.set_defaults(func=_cmd_train_seg)
    p = train.add_parser("depth", help="train the depth net; prints AbsRel and δ<1.25")
    _common(p, width=16)
    p.set_defaults(func=_cmd_train_depth)
    p = sub.add_parser("eval", help="mIoU and per-class IoU of a checkpoint")
    p.add_argument("--data", required=True, help="Cityscapes-layout folder (leftImg8bit/, gtFine/)")
    p.add_argument("--checkpoint", required=True, help="segmentation checkpoint (.pt) from `segxal train seg`")
    p.add_argument("--split", default="val", help="split to evaluate on")
    p.add_argument("--size", default="256x512", help="evaluation size HxW (frames are resized to it)")
    p.add_argument("--json", help="also write the report here")
    p.set_defaults(func=_cmd_eval)
