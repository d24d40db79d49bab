"""Label-efficiency benchmark: acquisition strategies side by side, two protocols, one runner.

- frame protocol (the SegXAL paper's): whole frames are labeled; budgets are fractions of the pool's
  frames (default 5, 10, 20, 40 %).
- region protocol: a pixel budget (default 1, 2, 5, 10 % of the pool's pixels); each strategy picks
  regions from its own map (EEM components for EEM, entropy components for entropy, random boxes of
  the EEM regions' size distribution for random). Outside labeled pixels: ignore (255), or the
  model's confident prediction in the pseudo-label arm.

Training measures selection, not noise: at every budget point the model restarts from the same
weights (the seed model of that seed, trained on the seed set) and trains for the same number of
optimiser steps, with the same data order seed, in every arm. Acquisition is sequential: the model of
budget point b picks what is added for point b+1. Each seed has its own seed set, seed model and
random stream; every arm of a seed shares them and the pool outputs of the cycle-0 model.

The maps come from the project's own EEM path (segxal.eem.explain.ExplainedSegmenter for
labels / EBU / CAM / p_max, segxal.eem.frame.score_frame for proximity, PAE and EEM), so a change of
the CAM definition there reaches the benchmark unchanged. The monocular depth net is trained on the
`test` split (standing in for an off-the-shelf depth model): no strategy sees ground truth, depth or
labels, of a pool frame before it is labeled.

Arms flagged `extra` (combinations that were inside the spread at 40 steps) run only when named, to
keep the default set inside the time budget. `eem-gated` gates the proximity term by the model's
own uncertainty (PAE = norm(CAM * proximity * EBU), segxal.eem.fuse.pae's gate): the diagnosis of
the 40-step run was that ungated PAE sends EEM to the near road the model already gets right.

Run it with bench/al_curve.py; the report is written by bench.albench.report.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from segxal import imageio
from segxal.al import strategies as st
from segxal.al.oracles import calibrate_tau, machine_oracle
from segxal.eem.options import EEMOptions
from segxal.eem.frame import score_frame
from segxal.cache import cache_path
from segxal.data.cityscapes import SegDataset, disparity_to_depth, list_frames, load_camera
from segxal.eem.explain import ExplainedSegmenter
from segxal.eem.fuse import frame_score
from segxal.eem.regions import extract_regions, rle_to_mask
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES, IGNORE, NUM_CLASSES
from segxal.metrics import confusion_matrix, iou_report
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from segxal.train import (TrainConfig, disparity_scale_from, load_model, predict_labels, resolve_device,
                          save_checkpoint, train_depth, train_segmentation)

log = logging.getLogger(__name__)

PROTOCOLS = ("frame", "region")
SCORES = ("random", "entropy", "least-confidence", "bald", "coreset", "eem", "eem-topq", "pae")
VULNERABLE = ("person", "rider", "bicycle", "motorcycle")


@dataclass(frozen=True)
class Arm:
    """One acquisition strategy under one protocol. Every flag is its own arm."""
    name: str
    protocol: str  # "frame" | "region"
    score: str  # one of SCORES: the map / frame score it ranks by
    oracle: str = "human"  # frame: "human" (ground truth) | "machine" (pseudo-labels, no human pixels)
    outside: str = "ignore"  # region: labels outside the fixed regions, "ignore" | "pseudo"
    diversity: str = "none"  # frame: "none" | "kcenter" (top-m, then k-center) | "sequence-cap"
    class_balanced: bool = False  # reweight pixel scores by predicted-class rarity
    region_floor: bool = False  # region: drop components smaller than cfg.floor_frac of a frame
    gated: bool = False  # eem / pae: proximity gated by the model's uncertainty (score_frame's gate_proximity)
    spread: bool = False  # region: every frame's best region before any second best (round_robin_scores)
    cells: bool = False  # region: fixed square cells ranked by the map's mean (CEREALS) instead of map components
    # pseudo-labels (machine oracle, outside="pseudo"): 0 = p_max >= cfg.tau; else the tau whose
    # pseudo-labels reach this precision on the seed frames (segxal.al.oracles.calibrate_tau)
    tau_precision: float = 0.0
    extra: bool = False  # not in the default set: runs only when named in BenchConfig.arms


FRAME_ARMS = (  # in the order they run: a run stopped by its deadline keeps the first ones
    Arm("random", "frame", "random"),
    Arm("entropy", "frame", "entropy"),
    Arm("eem", "frame", "eem"),
    Arm("eem-gated", "frame", "eem", gated=True),
    Arm("coreset", "frame", "coreset"),
    Arm("bald", "frame", "bald"),
    Arm("least-conf", "frame", "least-confidence"),
    Arm("eem-topq", "frame", "eem-topq"),
    Arm("pae", "frame", "pae"),
    Arm("eem+cb", "frame", "eem", class_balanced=True),
    Arm("eem+kcenter", "frame", "eem", diversity="kcenter"),
    Arm("eem-machine", "frame", "eem", oracle="machine"),
    Arm("eem-machine-cal", "frame", "eem", oracle="machine", tau_precision=0.9),
    # combinations measured once at 40 steps (bench/results/steps40) and inside the spread there:
    # run only when named (--arms), to keep the default benchmark inside its time budget
    Arm("eem+seqcap", "frame", "eem", diversity="sequence-cap", extra=True),
    Arm("eem-topq+cb+kcenter", "frame", "eem-topq", diversity="kcenter", class_balanced=True, extra=True),
)
REGION_ARMS = (
    Arm("random", "region", "random"),
    Arm("entropy", "region", "entropy"),
    Arm("eem", "region", "eem"),
    Arm("eem-gated", "region", "eem", gated=True),
    Arm("eem-pseudo", "region", "eem", outside="pseudo"),
    Arm("eem+cb", "region", "eem", class_balanced=True),
    Arm("eem+spread", "region", "eem", spread=True),
    Arm("entropy+spread", "region", "entropy", spread=True),  # control: is a gain EEM's or the spread's?
    Arm("eem-pseudo-cal", "region", "eem", outside="pseudo", tau_precision=0.9),
    Arm("eem-cells", "region", "eem", cells=True),
    Arm("entropy-cells", "region", "entropy", cells=True),  # control for eem-cells
    Arm("eem+floor", "region", "eem", region_floor=True, extra=True),
)
ALL_ARMS = FRAME_ARMS + REGION_ARMS


@dataclass
class BenchConfig:
    data: str
    out: str
    size: tuple[int, int] = (64, 128)  # CPU size: the default arms, 3 seeds side by side, in ~45-50 min on 2 cores
    width: int = 8  # U-Net width (the default U-Net is 32 / depth 4: see --full)
    unet_depth: int = 3
    dropout: float = 0.1  # bottleneck dropout of every arm's U-Net: identity except for BALD's MC samples
    seeds: tuple[int, ...] = (0, 1, 2)
    protocols: tuple[str, ...] = PROTOCOLS
    arms: tuple[str, ...] = ()  # arm names to run (both protocols); empty = every arm but the extra ones
    seed_frames: int = 20  # whole ground-truth frames before the first acquisition
    seed_steps: int = 200  # optimiser steps of the seed model, from random init
    # optimiser steps at every budget point, from the seed model's weights. 320: at 64x128 / width 8 a
    # 2x longer schedule no longer moves random beyond its seed spread (bench/results/al.md; 40 did)
    steps: int = 320
    # optimiser steps per budget point instead (same length as the budgets of each protocol run): a
    # schedule that grows with the labeled set, since 2 x steps still adds ~1 point at 20-40 %
    budget_steps: tuple[int, ...] = ()
    batch_size: int = 8
    lr: float = 2e-3
    class_weights: str = "enet"  # the trainer's default loss weighting (segxal.train)
    frame_budgets: tuple[float, ...] = (0.05, 0.10, 0.20, 0.40)  # of the pool's frames
    pixel_budgets: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)  # of the pool's pixels
    mc_samples: int = 8  # BALD dropout samples
    tau: float = 0.9  # machine oracle / pseudo labels: keep predictions with p_max >= tau
    near_m: float = 20.0  # near-field metric: pixels nearer than this (ground-truth depth)
    eem: EEMOptions = field(default_factory=EEMOptions)
    region_min_area: int = 16  # pixels: smaller components are noise (every region arm)
    # Regions are the components of a map above its Otsu threshold, cut by a grid of cells x cells
    # (a labeler fixes bounded pieces; a component as large as the road would not fit a 1 % budget)
    region_grid: int = 4
    floor_frac: float = 0.01  # region-floor arm: components under this fraction of a frame are dropped
    cell_px: int = 16  # cells arms: square cells of this side (16 x 16 = 256 px, random boxes' mean is ~250)
    seq_cap: int = 1  # sequence-cap arm: picks per drive log per cycle before the cap lifts
    candidates_factor: float = 4.0  # kcenter arm: top m = factor * k candidates
    depth_steps: int = 100
    schedule_check: bool = True  # frame random arm again at 2 x steps: is the schedule long enough?
    device: str = "auto"
    # torch CPU threads (0 = torch's default). On a shared 2-core machine 1 is ~10x faster than 2:
    # OpenMP threads busy-wait for each other whenever one is descheduled.
    threads: int = 0
    deadline_s: float = 0.0  # stop starting new arms after this many seconds (0 = no limit)
    cache_dir: str | None = None  # seed models and depth net (default <out>/cache)

    def validate(self) -> "BenchConfig":
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise InvalidInput(f"protocol must be one of {PROTOCOLS}, got {p!r}")
        known = {a.name for a in ALL_ARMS}
        for a in self.arms:
            if a not in known:
                raise InvalidInput(f"unknown arm {a!r}; choose from {', '.join(sorted(known))}")
        for name in ("frame_budgets", "pixel_budgets"):
            b = getattr(self, name)
            if not b or any(not 0 < v <= 1 for v in b) or list(b) != sorted(b):
                raise InvalidInput(f"{name} must be increasing fractions in (0, 1], got {b}")
        if self.steps <= 0 or self.seed_steps <= 0 or self.seed_frames <= 0:
            raise InvalidInput("steps, seed_steps and seed_frames must be positive")
        if self.budget_steps:
            if any(s <= 0 for s in self.budget_steps):
                raise InvalidInput(f"budget_steps must be positive, got {self.budget_steps}")
            for p in self.protocols:
                n = len(self.frame_budgets if p == "frame" else self.pixel_budgets)
                if len(self.budget_steps) != n:
                    raise InvalidInput(f"budget_steps has {len(self.budget_steps)} entries but the {p} "
                                       f"protocol has {n} budgets")
        if self.mc_samples < 2:
            raise InvalidInput("mc_samples must be >= 2")
        if not self.seeds:
            raise InvalidInput("at least one seed")
        self.eem.validate()
        return self

    def steps_at(self, b: int) -> int:
        """Optimiser steps at budget point b (0-based)."""
        return self.budget_steps[b] if self.budget_steps else self.steps

    def arms_for(self, protocol: str) -> list[Arm]:
        return [a for a in ALL_ARMS if a.protocol == protocol
                and (a.name in self.arms if self.arms else not a.extra)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


# ------------------------------------------------------------------ data and shared models

class _Repeated:
    """A fixed-length view of a dataset for a fixed number of optimiser steps: `n_items` items,
    the base frames in successive seeded permutations (each frame seen equally often). Items are
    decoded and normalised once, then served from memory."""

    def __init__(self, base, n_items: int, seed: int):
        rng = np.random.default_rng(seed)
        reps = math.ceil(n_items / len(base))
        self.order = np.concatenate([rng.permutation(len(base)) for _ in range(reps)])[:n_items]
        self.base = base
        self._items: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        j = int(self.order[i])
        if j not in self._items:
            self._items[j] = self.base[j]
        return self._items[j]


@dataclass
class _Data:
    train: SegDataset
    val: SegDataset
    near: np.ndarray  # bool [V, H, W]: val pixels nearer than near_m
    groups: list[str]  # drive-log sequence of each training frame


def _load_data(cfg: BenchConfig) -> _Data:
    train = SegDataset(list_frames(cfg.data, "train", require_labels=True), cfg.size)
    val = SegDataset(list_frames(cfg.data, "val", require_labels=True), cfg.size, with_depth=True)
    near = []
    for i, f in enumerate(val.frames):
        disp = val.raw(i)[2]  # disparity in pixels of the original resolution (resized by nearest)
        depth = disparity_to_depth(disp, load_camera(f))  # metres, 0 = invalid
        near.append((depth > 0) & (depth < cfg.near_m))
    return _Data(train, val, np.stack(near), [f.sequence for f in train.frames])


def _cache_path(cfg: BenchConfig, name: str, **key) -> Path:
    # the one model cache (segxal.cache): `data` enters the key by its content, the rest as given
    return cache_path(Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache", name, **key)


def _train_cfg(cfg: BenchConfig, seed: int, class_weights: str | None = None) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, device=cfg.device,
                       class_weights=cfg.class_weights if class_weights is None else class_weights,
                       progress=False)


def depth_net(cfg: BenchConfig) -> DepthNet:
    """The monocular depth net, trained on the `test` split's disparity (cached): a stand-in for an
    off-the-shelf model, trained on frames that are neither pool nor validation."""
    frames = list_frames(cfg.data, "test")
    path = _cache_path(cfg, "depth", data=str(Path(cfg.data).resolve()), size=cfg.size, steps=cfg.depth_steps)
    if path.is_file():
        return load_model(path)
    ds = SegDataset(frames, cfg.size, with_labels=False, with_depth=True)
    torch.manual_seed(0)
    model = DepthNet(DepthConfig(disparity_scale=disparity_scale_from(ds)))
    train_depth(model, _Repeated(ds, cfg.depth_steps * cfg.batch_size, 0), _train_cfg(cfg, 0, "none"))
    save_checkpoint(path, model, kind="depth")
    return model


def _model_cfg(cfg: BenchConfig) -> UNetConfig:
    return UNetConfig(width=cfg.width, depth=cfg.unet_depth, dropout=cfg.dropout)


def seed_model(cfg: BenchConfig, data: _Data, seed_idx: list[int], seed: int) -> UNet:
    """Cycle-0 model of a seed: random init from the seed, `seed_steps` on the seed set (cached)."""
    path = _cache_path(cfg, f"seed{seed}", data=str(Path(cfg.data).resolve()), size=cfg.size,
                       model=_model_cfg(cfg).to_dict(), idx=seed_idx, steps=cfg.seed_steps, lr=cfg.lr,
                       bs=cfg.batch_size, cw=cfg.class_weights)
    if path.is_file():
        return load_model(path)
    torch.manual_seed(seed)
    model = UNet(_model_cfg(cfg))
    ds = _Repeated(data.train.subset(seed_idx), cfg.seed_steps * cfg.batch_size, seed)
    train_segmentation(model, ds, _train_cfg(cfg, seed))
    save_checkpoint(path, model, kind="unet")
    return model


def train_from(init: UNet, data: _Data, labeled: dict[int, np.ndarray | None], steps: int,
               cfg: BenchConfig, seed: int) -> UNet:
    """A copy of `init` trained for exactly `steps` optimiser steps on the labeled frames.

    Args:
        labeled: train index -> label mask (trainIds, 255 = not labeled), or None for ground truth.
    """
    model = copy.deepcopy(init)
    idx = sorted(labeled)
    overrides = {data.train.frames[i].frame_id: m for i, m in labeled.items() if m is not None}
    ds = _Repeated(data.train.subset(idx, overrides), steps * cfg.batch_size, seed)
    train_segmentation(model, ds, _train_cfg(cfg, seed))
    return model


@torch.no_grad()
def evaluate(model: UNet, data: _Data, batch: int = 16) -> dict:
    """mIoU over the 19 classes, near-field mIoU (ground-truth depth < near_m), per-class IoU."""
    model.eval()
    cm_all = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    cm_near = np.zeros_like(cm_all)
    for s in range(0, len(data.val), batch):
        items = [data.val[i] for i in range(s, min(s + batch, len(data.val)))]
        pred = predict_labels(model, torch.from_numpy(np.stack([it[0] for it in items])))  # [B, H, W]
        gt = np.stack([it[1] for it in items])  # [B, H, W]
        cm_all += confusion_matrix(pred, gt)
        cm_near += confusion_matrix(pred, np.where(data.near[s:s + len(items)], gt, IGNORE))
    rep, near = iou_report(cm_all), iou_report(cm_near)
    return {"miou": rep["miou"], "near_miou": near["miou"], "per_class": rep["per_class"],
            "vulnerable": {c: rep["per_class"][c] for c in VULNERABLE},
            "near_vulnerable": {c: near["per_class"][c] for c in VULNERABLE}}


# ------------------------------------------------------------------ model outputs on the pool

@dataclass
class PoolOutputs:
    """What the strategies may see of the training split: model outputs, never ground truth."""
    labels: np.ndarray  # uint8 [N, H, W] predicted trainIds
    ebu: np.ndarray  # float16 [N, H, W]
    cam: np.ndarray  # float16 [N, H, W]
    pmax: np.ndarray  # float16 [N, H, W]
    feats: np.ndarray  # float32 [N, K] pooled decoder features (forward_features, spatial mean)
    bald: np.ndarray | None = None  # float16 [N, H, W] BALD mutual information


def _images(ds: SegDataset, idx: list[int], dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack([ds[i][0] for i in idx])).to(dev)  # [B, 3, H, W]


def pool_outputs(model: UNet, ds: SegDataset, cfg: BenchConfig, with_bald: bool, batch: int = 16) -> PoolOutputs:
    """Labels, EBU, CAM, p_max (ExplainedSegmenter), pooled features and optionally BALD for every
    frame of `ds`."""
    dev = resolve_device(cfg.device)
    model = model.to(dev).eval()
    explained = ExplainedSegmenter(model).eval()
    parts: dict[str, list] = {k: [] for k in ("labels", "ebu", "cam", "pmax", "feats", "bald")}
    for s in range(0, len(ds), batch):
        x = _images(ds, list(range(s, min(s + batch, len(ds)))), dev)
        with torch.no_grad():
            labels, ebu, cam, pmax = explained(x)  # each [B, H, W]
        parts["labels"].append(labels.cpu().numpy().astype(np.uint8))
        for k, t in (("ebu", ebu), ("cam", cam), ("pmax", pmax)):
            parts[k].append(t.detach().float().cpu().numpy().astype(np.float16))
        with torch.no_grad():
            parts["feats"].append(model.forward_features(x).mean(dim=(2, 3)).cpu().numpy())  # [B, K]
            if with_bald:
                parts["bald"].append(_bald(model, x, cfg.mc_samples).cpu().numpy().astype(np.float16))
    return PoolOutputs(**{k: np.concatenate(v) for k, v in parts.items() if v},
                       **({} if with_bald else {"bald": None}))


def _bald(model: UNet, x: torch.Tensor, samples: int) -> torch.Tensor:
    """BALD map [B, H, W] from `samples` MC-dropout passes (only the dropout layers sample)."""
    drops = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    if not drops:
        raise InvalidInput("BALD needs a U-Net with dropout > 0 (BenchConfig.dropout)")
    for m in drops:
        m.train()
    try:
        probs = torch.stack([model(x).softmax(dim=1) for _ in range(samples)])  # [T, B, C, H, W]
    finally:
        model.eval()
    return torch.stack([st.bald_map(probs[:, b]) for b in range(x.shape[0])])  # [B, H, W]


@torch.no_grad()
def inverse_depth(net: DepthNet, ds: SegDataset, cfg: BenchConfig, batch: int = 16) -> np.ndarray:
    """Relative inverse depth of every frame, float16 [N, H, W]."""
    dev = resolve_device(cfg.device)
    net = net.to(dev).eval()
    return np.concatenate([net(_images(ds, list(range(s, min(s + batch, len(ds)))), dev)).cpu().numpy()
                           .astype(np.float16) for s in range(0, len(ds), batch)])


def score_maps(arm: Arm, out: PoolOutputs, inv: np.ndarray, idx: list[int], cfg: BenchConfig) -> np.ndarray | None:
    """The per-pixel map an arm ranks by, float32 [len(idx), H, W]; None for random and core-set."""
    if arm.score in ("random", "coreset"):
        return None
    if arm.score == "entropy":
        maps = out.ebu[idx].astype(np.float32)
    elif arm.score == "least-confidence":
        maps = st.least_confidence_map(out.pmax[idx])
    elif arm.score == "bald":
        maps = out.bald[idx].astype(np.float32)
    else:  # eem, eem-topq, pae: the project's EEM path
        frames = [score_frame(out.labels[i], out.ebu[i], out.cam[i], inv[i], cfg.eem, with_regions=False,
                              gate_proximity=arm.gated) for i in idx]
        maps = np.stack([f.pae if arm.score == "pae" else f.eem for f in frames])
    if arm.class_balanced:
        w = st.predicted_class_weights(out.labels[idx])
        maps = st.class_balanced(maps, out.labels[idx], w)
    return maps


# ------------------------------------------------------------------ one arm, one seed

@dataclass
class _SeedContext:
    seed: int
    seed_idx: list[int]
    pool: list[int]  # train indices that may be acquired
    model0: UNet
    out0: PoolOutputs  # outputs of model0 on the whole training split (shared by every arm)
    eval0: dict
    region_sizes: tuple[np.ndarray, np.ndarray] | None = None  # (areas, aspects) of model0's EEM regions
    maps0: dict = field(default_factory=dict)  # (score, class_balanced, gated) -> model0's maps over the pool


def _pool_maps(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, out: PoolOutputs, inv: np.ndarray) -> np.ndarray | None:
    """score_maps over the whole pool (rows in ctx.pool order); model0's are computed once per seed."""
    if out is not ctx.out0:
        return score_maps(arm, out, inv, ctx.pool, cfg)
    key = (arm.score, arm.class_balanced, arm.gated)
    if key not in ctx.maps0:
        ctx.maps0[key] = score_maps(arm, out, inv, ctx.pool, cfg)
    return ctx.maps0[key]


def _diag_top_pixels(maps: np.ndarray, labels: np.ndarray, q: float = 0.05) -> dict:
    """Which predicted classes hold the top-q pixels of the picked frames' maps (no ground truth)."""
    counts = np.zeros(NUM_CLASSES + 1, np.int64)
    for m, lab in zip(maps, labels):
        k = max(1, int(q * m.size))
        top = np.argpartition(m.ravel(), m.size - k)[-k:]
        lab = lab.ravel()[top].astype(np.int64)
        counts += np.bincount(np.minimum(lab, NUM_CLASSES), minlength=NUM_CLASSES + 1)
    share = counts[:NUM_CLASSES] / max(1, counts.sum())
    return {CLASS_NAMES[c]: float(share[c]) for c in range(NUM_CLASSES) if share[c] > 0}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by order; enough for continuous scores)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def _cam_dead_share(out: PoolOutputs, idx: list[int]) -> float:
    """Share of frames whose CAM is constant (all zero after ReLU): PAE is then 0 and EEM = alpha EBU."""
    cam = out.cam[idx].astype(np.float32).reshape(len(idx), -1)
    return float(np.mean(cam.max(1) - cam.min(1) <= 1e-6))


def _gt_share(data: _Data, masks: dict[int, np.ndarray | None]) -> dict:
    """Ground-truth class share of newly labeled pixels: reporting only, after selection."""
    counts = np.zeros(NUM_CLASSES, np.int64)
    for i, m in masks.items():
        gt = data.train.raw(i)[1]
        g = gt if m is None else gt[m]
        g = g[g != IGNORE].astype(np.int64)
        counts += np.bincount(g, minlength=NUM_CLASSES)[:NUM_CLASSES]
    share = counts / max(1, counts.sum())
    return {CLASS_NAMES[c]: float(share[c]) for c in range(NUM_CLASSES) if share[c] > 0}


def _pseudo_tau(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, out: PoolOutputs, data: _Data) -> float:
    """The machine oracle's threshold for this cycle: cfg.tau, or calibrated on the seed frames
    (ground truth that is labeled from the start) to the arm's precision."""
    if arm.tau_precision <= 0:
        return cfg.tau
    gt = np.stack([data.train.raw(i)[1] for i in ctx.seed_idx])  # [S, H, W]
    return calibrate_tau(out.pmax[ctx.seed_idx], out.labels[ctx.seed_idx], gt, arm.tau_precision)


def _labeled_share(masks: list[np.ndarray]) -> float:
    """Share of pixels that carry a label in these pseudo-label masks (0: the oracle returned nothing)."""
    return float(np.mean([(m != IGNORE).mean() for m in masks])) if masks else 0.0


def _frame_pick(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, out: PoolOutputs, inv: np.ndarray,
                data: _Data, labeled: set[int], k: int, rng: np.random.Generator) -> tuple[list[int], dict]:
    cand = [i for i in ctx.pool if i not in labeled]
    k = min(k, len(cand))
    centers = out.feats[sorted(labeled)]
    diag: dict = {}
    if arm.score == "random":
        pos = sorted(rng.choice(len(cand), size=k, replace=False).tolist())
    elif arm.score == "coreset":
        pos = st.k_center_greedy(out.feats[cand], k, centers=centers)
    else:
        row = {i: r for r, i in enumerate(ctx.pool)}
        maps = _pool_maps(arm, cfg, ctx, out, inv)[[row[i] for i in cand]]  # [len(cand), H, W]
        mode = "topq" if arm.score == "eem-topq" else "mean"
        scores = np.atleast_1d(frame_score(maps, mode=mode, q=cfg.eem.q))  # [len(cand)]
        if arm.diversity == "kcenter":
            pos = st.diverse_top_k(scores, out.feats[cand], k, cfg.candidates_factor, centers=centers)
        elif arm.diversity == "sequence-cap":
            pos = st.sequence_capped_top_k(scores, [data.groups[i] for i in cand], k, cfg.seq_cap)
        else:
            pos = st.top_k(scores, k)
        diag["top_pixel_pred_classes"] = _diag_top_pixels(maps[pos], out.labels[[cand[p] for p in pos]])
        if arm.score != "entropy":  # how far the ranking is from plain entropy's (Spearman)
            ebu = out.ebu[cand].astype(np.float32).reshape(len(cand), -1).mean(1)
            diag["rank_corr_with_entropy"] = _spearman(scores, ebu)
    picks = [cand[p] for p in pos]
    diag["sequences"] = len({data.groups[i] for i in picks})
    diag["cam_dead_share"] = _cam_dead_share(out, ctx.pool)
    return picks, diag


def _run_frame_arm(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, data: _Data, inv: np.ndarray,
                   scale: int = 1) -> list[dict]:
    """One frame arm over the budgets; `scale` multiplies the schedule (2: the schedule check)."""
    rng = np.random.default_rng([ctx.seed, 7])  # the random arm's stream (same in the schedule check)
    labeled: dict[int, np.ndarray | None] = {i: None for i in ctx.seed_idx}
    acquired: set[int] = set()
    cost = {"frames": 0, "regions": 0, "pixels": 0}
    model, out = ctx.model0, ctx.out0
    h, w = cfg.size
    records = []
    for b, frac in enumerate(cfg.frame_budgets):
        t0 = time.time()
        target = round(frac * len(ctx.pool))
        picks, diag = _frame_pick(arm, cfg, ctx, out, inv, data, set(labeled), target - len(acquired), rng)
        if arm.oracle == "machine":
            tau = _pseudo_tau(arm, cfg, ctx, out, data)
            diag["tau"] = tau if math.isfinite(tau) else None  # None: no threshold reached the precision
        for i in picks:
            if arm.oracle == "machine":  # pseudo-labels of the model that picked the frame
                labeled[i] = machine_oracle(out.labels[i], out.pmax[i], tau).mask
            else:
                labeled[i] = None
                cost["pixels"] += h * w
            cost["frames"] += 1
            acquired.add(i)
        diag["gt_class_share_of_new_labels"] = _gt_share(data, {i: None for i in picks})
        if arm.oracle == "machine":
            diag["pseudo_labeled_share"] = _labeled_share([labeled[i] for i in picks])
        steps = scale * cfg.steps_at(b)
        model = train_from(ctx.model0, data, labeled, steps, cfg, seed=ctx.seed * 1000 + b)
        rec = {"protocol": "frame", "arm": arm.name, "seed": ctx.seed, "budget": frac, "steps": steps,
               "x": len(acquired) / len(ctx.pool), "cost": dict(cost), **evaluate(model, data),
               "picks": [data.train.frames[i].frame_id for i in picks], "diag": diag}
        if b + 1 < len(cfg.frame_budgets) and arm.score != "random":  # random never looks
            out = pool_outputs(model, data.train, cfg, with_bald=arm.score == "bald")
        rec["seconds"] = time.time() - t0
        records.append(rec)
    return records


def _components(m: np.ndarray, labels: np.ndarray, min_area: int, grid: int) -> list[tuple[np.ndarray, float]]:
    """(bool mask, mean map value) of each piece of each map component above Otsu's threshold
    (segxal.eem.regions.extract_regions), cut by a grid x grid cell grid; pieces under min_area go."""
    h, w = m.shape
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    pieces = []
    for r in extract_regions(m, labels, threshold=None, mode="otsu", min_area=min_area):
        mask = rle_to_mask(r.rle).astype(bool)
        x0, y0, bw, bh = r.bbox
        for a in range(grid):
            if ys[a + 1] <= y0 or ys[a] >= y0 + bh:
                continue
            for b in range(grid):
                if xs[b + 1] <= x0 or xs[b] >= x0 + bw:
                    continue
                piece = np.zeros_like(mask)
                piece[ys[a]:ys[a + 1], xs[b]:xs[b + 1]] = mask[ys[a]:ys[a + 1], xs[b]:xs[b + 1]]
                n = int(piece.sum())
                if n >= max(1, min_area):
                    pieces.append((piece, float(m[piece].mean())))
    return pieces


def _cells(m: np.ndarray, done: np.ndarray | None, side: int) -> list[tuple[np.ndarray, float]]:
    """(bool mask of the cell's unlabeled pixels, the map's mean over them) for each side x side cell
    of a frame. The fixed-size regions of CEREALS (Mackowiak et al., BMVC 2018): a labeler gets a
    whole square, boundaries and interiors alike, wherever the map's mean is high. Why: with the
    shape fixed to random boxes', what remains between a map arm and random is where the map sends
    the labeler (bench/results/al.md: entropy cells tie random, EEM cells lose ~1.2 points)."""
    h, w = m.shape
    out = []
    for y in range(0, h, side):
        for x in range(0, w, side):
            mask = np.zeros((h, w), bool)
            mask[y:y + side, x:x + side] = True
            if done is not None:
                mask &= ~done
            if mask.any():
                out.append((mask, float(m[mask].mean())))
    return out


def _region_candidates(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, out: PoolOutputs, inv: np.ndarray,
                       human: dict[int, np.ndarray]) -> list[tuple[int, np.ndarray, float]]:
    """(train index, new-pixel mask, region score) for every region of the arm's map over the pool."""
    maps = _pool_maps(arm, cfg, ctx, out, inv)
    min_area = max(cfg.region_min_area, int(cfg.floor_frac * cfg.size[0] * cfg.size[1])) \
        if arm.region_floor else cfg.region_min_area
    cands = []
    for m, i in zip(maps, ctx.pool):
        done = human.get(i)
        if arm.cells:
            cands += [(i, mask, score) for mask, score in _cells(m, done, cfg.cell_px)]
            continue
        if done is not None:
            m = np.where(done, 0.0, m)
        if not (m > 0).any():
            continue
        for mask, score in _components(m, out.labels[i], min_area, cfg.region_grid):
            if done is not None:
                mask &= ~done
            if mask.any():
                cands.append((i, mask, score))
    return cands


def region_size_sample(cfg: BenchConfig, ctx: _SeedContext, inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(areas, width/height aspects) of the cycle-0 EEM regions: the random arm's size distribution."""
    if ctx.region_sizes is None:
        maps = _pool_maps(Arm("eem", "region", "eem"), cfg, ctx, ctx.out0, inv)
        areas, aspects = [], []
        for m, i in zip(maps, ctx.pool):
            for mask, _ in _components(m, ctx.out0.labels[i], cfg.region_min_area, cfg.region_grid):
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                areas.append(int(mask.sum()))
                aspects.append((cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1))
        if not areas:
            raise InvalidInput("the cycle-0 EEM maps have no regions to take a size distribution from")
        ctx.region_sizes = (np.array(areas), np.array(aspects))
    return ctx.region_sizes


def _run_region_arm(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, data: _Data, inv: np.ndarray) -> list[dict]:
    rng = np.random.default_rng([ctx.seed, 11])
    h, w = cfg.size
    pool_px = len(ctx.pool) * h * w
    human: dict[int, np.ndarray] = {}  # train index -> bool mask of ground-truth pixels
    pseudo: dict[int, np.ndarray] = {}  # train index -> pseudo-label mask (pseudo arm)
    cost = {"frames": 0, "regions": 0, "pixels": 0}
    out = ctx.out0
    records = []
    for b, frac in enumerate(cfg.pixel_budgets):
        t0 = time.time()
        need = int(round(frac * pool_px)) - cost["pixels"]
        if arm.score == "random":
            areas, aspects = region_size_sample(cfg, ctx, inv)
            pos_of = {p: i for p, i in enumerate(ctx.pool)}
            boxes = st.random_boxes(rng, len(ctx.pool), (h, w), areas, aspects, need,
                                    excluded={p: human[i] for p, i in pos_of.items() if i in human})
            chosen = [(pos_of[p], m) for p, m in boxes]
        else:
            cands = _region_candidates(arm, cfg, ctx, out, inv, human)
            scores = np.array([c[2] for c in cands])  # [R]
            if arm.spread and cands:
                scores = st.round_robin_scores(scores, np.array([c[0] for c in cands]))
            sel = st.fill_pixel_budget(scores, np.array([c[1].sum() for c in cands]), max(0, need)) if cands else []
            chosen = [(cands[j][0], cands[j][1]) for j in sel]
        new: dict[int, np.ndarray] = {}
        tau = _pseudo_tau(arm, cfg, ctx, out, data) if arm.outside == "pseudo" else None
        for i, m in chosen:
            if i not in human:
                cost["frames"] += 1
                human[i] = np.zeros((h, w), bool)
            m = m & ~human[i]
            human[i] |= m
            new[i] = new.get(i, np.zeros((h, w), bool)) | m
            cost["regions"] += 1
            cost["pixels"] += int(m.sum())
            if arm.outside == "pseudo":
                pseudo[i] = machine_oracle(out.labels[i], out.pmax[i], tau).mask
        labeled: dict[int, np.ndarray | None] = {i: None for i in ctx.seed_idx}
        for i, hm in human.items():
            rest = pseudo.get(i, np.full((h, w), IGNORE, np.uint8))
            labeled[i] = np.where(hm, data.train.raw(i)[1], rest).astype(np.uint8)
        model = train_from(ctx.model0, data, labeled, cfg.steps_at(b), cfg, seed=ctx.seed * 1000 + b)
        areas_new = [int(m.sum()) for _, m in chosen]
        diag = {"regions_this_cycle": len(chosen), "frames_this_cycle": len(new),
                "mean_region_px": float(np.mean(areas_new)) if areas_new else 0.0,
                "sequences": len({data.groups[i] for i in new}),
                "cam_dead_share": _cam_dead_share(out, ctx.pool),
                "gt_class_share_of_new_labels": _gt_share(data, new)}
        if tau is not None:
            diag["tau"] = tau if math.isfinite(tau) else None
            diag["pseudo_labeled_share"] = _labeled_share([pseudo[i] for i in new])
        rec = {"protocol": "region", "arm": arm.name, "seed": ctx.seed, "budget": frac, "steps": cfg.steps_at(b),
               "x": cost["pixels"] / pool_px, "cost": dict(cost), **evaluate(model, data), "diag": diag}
        if b + 1 < len(cfg.pixel_budgets) and arm.score != "random":
            out = pool_outputs(model, data.train, cfg, with_bald=arm.score == "bald")
        rec["seconds"] = time.time() - t0
        records.append(rec)
    return records


# ------------------------------------------------------------------ the whole benchmark

def _seed_context(cfg: BenchConfig, data: _Data, seed: int, need_bald: bool) -> _SeedContext:
    n = len(data.train)
    if cfg.seed_frames >= n:
        raise InvalidInput(f"seed_frames {cfg.seed_frames} leaves no pool ({n} training frames)")
    seed_idx = sorted(np.random.default_rng(seed).permutation(n)[:cfg.seed_frames].tolist())
    pool = sorted(set(range(n)) - set(seed_idx))
    model0 = seed_model(cfg, data, seed_idx, seed)
    out0 = pool_outputs(model0, data.train, cfg, with_bald=need_bald)
    return _SeedContext(seed, seed_idx, pool, model0, out0, evaluate(model0, data))


def _write_json(path: Path, report: dict) -> None:
    imageio.atomic_write_bytes(path, json.dumps(report, indent=1).encode())


def run_benchmark(cfg: BenchConfig, on_arm=None) -> dict:
    """Run every (seed, protocol, arm) and return the report also written to <out>/al.json after
    each arm (a run stopped early keeps what it finished).

    Args:
        cfg: the benchmark configuration.
        on_arm: optional callback(records) after each arm (progress printing).

    Returns:
        {"config", "cycle0": [per-seed evaluation of the seed model], "runs": [cycle records],
         "schedule": [records of the 2 x steps check], "skipped": [...], "seconds", "loadavg"}.

    Raises:
        InvalidInput: a bad configuration or dataset.
    """
    cfg.validate()
    t_start = time.time()
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    data = _load_data(cfg)
    inv = inverse_depth(depth_net(cfg), data.train, cfg)  # [N, H, W], model-independent: once
    report = {"config": cfg.to_dict(), "n_train": len(data.train), "n_val": len(data.val),
              "cycle0": [], "runs": [], "schedule": [], "skipped": []}
    need_bald = any(a.score == "bald" for p in cfg.protocols for a in cfg.arms_for(p))
    for seed in cfg.seeds:
        ctx = _seed_context(cfg, data, seed, need_bald)
        report["cycle0"].append({"seed": seed, "seed_frames": cfg.seed_frames, "pool": len(ctx.pool),
                                 **ctx.eval0})

        def late() -> bool:
            return bool(cfg.deadline_s) and time.time() - t_start > cfg.deadline_s

        def schedule_check() -> None:
            recs = _run_frame_arm(FRAME_ARMS[0], cfg, ctx, data, inv, scale=2)
            report["schedule"].extend(recs)
            if on_arm:
                on_arm(recs)
        checked = not (cfg.schedule_check and "frame" in cfg.protocols)
        for protocol in cfg.protocols:
            for arm in cfg.arms_for(protocol):
                if late():
                    report["skipped"].append({"seed": seed, "protocol": protocol, "arm": arm.name})
                    continue
                runner = _run_frame_arm if protocol == "frame" else _run_region_arm
                recs = runner(arm, cfg, ctx, data, inv)
                report["runs"].extend(recs)
                if on_arm:
                    on_arm(recs)
                if not checked and arm is FRAME_ARMS[0]:  # right after random: a deadline keeps it
                    schedule_check()
                    checked = True
                report["seconds"] = time.time() - t_start
                _write_json(out_dir / "al.json", report)
        if not checked and not late():
            schedule_check()
    report["seconds"] = time.time() - t_start
    report["loadavg"] = _loadavg()
    _write_json(out_dir / "al.json", report)
    return report


def print_progress(recs: list[dict]) -> None:
    """run_benchmark's on_arm for the command line: one line per finished arm (module level, so
    that the per-seed processes of run_seeds_in_parallel can call it too)."""
    r = recs[-1]
    print(f"  {r['protocol']:6s} seed {r['seed']} {r['arm']:22s} steps {r['steps']:4d}: mIoU "
          + " ".join(f"{100 * x['miou']:.1f}" for x in recs)
          + f"  near {100 * r['near_miou']:.1f}  ({sum(x['seconds'] for x in recs):.0f} s)", flush=True)


def merge_reports(reports: list[dict]) -> dict:
    """One report over runs of the same configuration with different seeds (or arms)."""
    merged = {**reports[0], "runs": [], "cycle0": [], "schedule": [], "skipped": []}
    for r in reports:
        for key in ("runs", "cycle0", "schedule", "skipped"):
            merged[key] += r.get(key, [])
    merged["cycle0"] = list({c["seed"]: c for c in merged["cycle0"]}.values())  # one per seed
    order = {(a.protocol, a.name): i for i, a in enumerate(ALL_ARMS)}  # tables list arms in run order
    merged["runs"].sort(key=lambda r: (order.get((r["protocol"], r["arm"]), len(order)), r["seed"], r["budget"]))
    merged["config"] = {**reports[0]["config"], "seeds": sorted({c["seed"] for c in merged["cycle0"]}),
                        "protocols": [p for p in PROTOCOLS
                                      if any(p in r["config"]["protocols"] for r in reports)]}
    merged["seconds"] = max(r.get("seconds", 0) for r in reports)
    merged["process_seconds_sum"] = sum(r.get("seconds", 0) for r in reports)
    merged["loadavg"] = "; ".join(str(r.get("loadavg")) for r in reports)
    return merged


def run_seeds_in_parallel(cfg: BenchConfig, jobs: int, on_arm=None) -> dict:
    """run_benchmark with one process per seed (at most `jobs` at once), merged into one report.

    Each seed's arms already run one torch thread each on CPU (BenchConfig.threads); seeds are
    independent (own seed set, seed model and random streams), so a machine with several cores runs
    them side by side: on 2 cores, the 3 seeds take about half the single-process time. The depth net,
    shared by every seed, is trained (or read from the cache) first, so the processes never race on it.
    Per-seed reports go to <out>/seed-<s>/al.json; the merged report's `seconds` is this call's wall time.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    cfg.validate()
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    depth_net(cfg)  # into the cache before the seeds start
    parts = [replace(cfg, seeds=(s,), out=str(Path(cfg.out) / f"seed-{s}"),
                     cache_dir=cfg.cache_dir or str(Path(cfg.out) / "cache")) for s in cfg.seeds]
    # spawn, not fork: a forked child of a process whose OpenMP pool is running can hang in torch
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        reports = list(pool.map(run_benchmark, parts, [on_arm] * len(parts)))
    merged = merge_reports(reports)
    merged["seconds"] = time.time() - t0
    merged["config"] = {**merged["config"], "out": cfg.out}
    _write_json(Path(cfg.out) / "al.json", merged)
    return merged


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def full_size(cfg: BenchConfig) -> BenchConfig:
    """The full-size configuration: 256 x 512 frames and the default U-Net (width 32, depth 4)."""
    d = UNetConfig()
    return replace(cfg, size=(256, 512), width=d.width, unet_depth=d.depth)
