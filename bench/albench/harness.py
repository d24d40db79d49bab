"""Label-efficiency benchmark: acquisition strategies side by side, two protocols, one runner.

Setting (bench/albench/frozen.py): a U-Net is trained once on a disjoint labelled dataset
(`pretrain_data`, never pool, validation or test; on the 7 Cityscapes categories by default,
`body_labels`) and all of it but its last decoder stage and head is frozen; every model of the
benchmark is that body plus a last stage and 19-class head trained on cached body outputs. A seed's
model 0 is that small decoder trained on the seed set; at every budget point it restarts from model
0's weights and trains the same number of steps with the same data-order seed in every arm, so the
arms differ only in what they labelled. Acquisition is sequential: the model of budget point b
picks for point b+1.

Splits: `train` = seed set + pool; `val` = design only (headroom, schedule); `test` = every number
the report states (no arm was designed on it). The depth net that gives EEM its proximity term is
trained on `pretrain_data` too.

Protocols, both picking frames through the product's selection (segxal.selection.select, the
coordinator's code path):
- frame: whole frames; budgets are fractions of the pool's frames, met exactly.
- region (cells): fixed square cells (CEREALS, Mackowiak et al. 2018) of `cell_px` x `cell_px`;
  budgets are fractions of the pool's pixels, rounded to whole cells and met exactly. Each cycle
  `select` picks frames (score = the mean of the frame's best `cells_per_frame` unlabelled cells of
  the arm's map; the arm's spec adds diversity etc.), then each picked frame gives its best
  `cells_per_frame` unlabelled cells by the map's mean (the last frame the remainder). Random picks
  frames by random scores and cells uniformly at random: its regions have exactly the size of every
  other arm's.

Arms: `random` (several draws per seed: its curve per seed is their mean), map scores (entropy,
least confidence, BALD with MC dropout, EEM with its fusions) ranked by `select` with a plain score
spec, core-set (`select` with diversity alone, on the product's frame embedding UNet.embed) and
the composed selections (score x diversity, + class balance, + drive-log cap). Key arms run on every
seed (power at 0.5 mIoU); the others on the first `exploratory_seeds` seeds, marked exploratory.

Run it with bench/al_curve.py; statistics in bench.albench.stats, tables in bench.albench.report.
"""
from __future__ import annotations

import gzip
import json
import logging
import math
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bench.albench import frozen as fz
from segxal import imageio
from segxal.al import strategies as st
from cityscapesscripts.helpers.labels import labels as cs_labels

from segxal.cache import cache_path
from segxal.data.cityscapes import SegDataset, disparity_to_depth, list_frames, load_camera
from segxal.eem.explain import ExplainedSegmenter
from segxal.eem.frame import score_frame
from segxal.eem.gradcam import DEFAULT_UNET_CAM_METHOD, DEFAULT_UNET_CAM_TARGET, UNET_CAM_TARGETS
from segxal.eem.options import EEMOptions
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES, IGNORE, NUM_CLASSES
from segxal.metrics import confusion_matrix, iou_report
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from segxal.selection import PoolFeatures, SelectionSpec, select
from segxal.train import (TrainConfig, disparity_scale_from, load_model, resolve_device, save_checkpoint,
                          train_depth, train_segmentation)

log = logging.getLogger(__name__)

PROTOCOLS = ("frame", "region")
BODY_LABELS = ("classes", "categories")
# trainId -> Cityscapes category index (0 flat ... 6 vehicle); 255 stays 255
CATEGORY_OF_TRAIN_ID = np.full(256, IGNORE, np.int64)
CATEGORY_OF_TRAIN_ID[:NUM_CLASSES] = [l.categoryId - 1 for l in sorted(
    (l for l in cs_labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)]
SCORES = ("random", "none", "entropy", "least-confidence", "bald", "eem")
VULNERABLE = ("person", "rider", "bicycle", "motorcycle")
# EEM variants (segxal.eem.options.EEMOptions): what the product ships (the multiplicative fusion
# EBU (a + b PAE) at equal weights), the paper's additive fusion a EBU + b PAE, and a light proximity
# term in the additive fusion. Spelled out, so that a change of the product's default shows here.
EEM_VARIANTS = {
    "multiplicative": EEMOptions(alpha=0.5, beta=0.5, fusion="multiplicative"),
    "additive": EEMOptions(alpha=0.5, beta=0.5, fusion="additive"),
    "light": EEMOptions(alpha=0.9, beta=0.1, fusion="additive"),
}


@dataclass(frozen=True)
class Arm:
    """One acquisition strategy under one protocol: a map (score) and a composed selection."""
    name: str
    protocol: str  # "frame" | "region"
    score: str  # one of SCORES: the per-pixel map it ranks by ("none": no score, diversity alone)
    selection: str = "score=1"  # segxal.selection.SelectionSpec text form
    eem: str = "multiplicative"  # EEM_VARIANTS key (score "eem" only); the product's default
    cam_target: str = DEFAULT_UNET_CAM_TARGET  # the U-Net's CAM target (segxal.eem.gradcam); the shipped one
    cam_method: str = DEFAULT_UNET_CAM_METHOD  # its channel weighting (segxal.eem.gradcam.CAM_METHODS); the shipped one
    key: bool = False  # a key arm runs on every seed; the others on cfg.exploratory_seeds seeds

    @property
    def spec(self) -> SelectionSpec:
        return SelectionSpec.parse(self.selection)

    @property
    def cam(self) -> tuple[str, str]:
        """(target, method) of the CAM in its EEM."""
        return self.cam_target, self.cam_method


FRAME_ARMS = (  # key arms first: a run stopped by its deadline keeps them
    Arm("random", "frame", "random", key=True),
    Arm("entropy", "frame", "entropy", key=True),
    Arm("coreset", "frame", "none", "score=0,diversity=1", key=True),
    Arm("eem-add", "frame", "eem", eem="additive", key=True),  # the paper's EEM
    Arm("eem", "frame", "eem", key=True),  # the product's EEM (the best fusion, fusion_region/)
    Arm("eem+div", "frame", "eem", "score=1,diversity=1", key=True),  # the product's composed default
    Arm("entropy+div", "frame", "entropy", "score=1,diversity=1"),
    Arm("eem+div+bal", "frame", "eem", "score=1,diversity=1,balance=1"),
    Arm("eem+div+cap", "frame", "eem", "score=1,diversity=1,log_cap=1"),
    Arm("eem-light", "frame", "eem", eem="light"),
    # other CAM targets on the U-Net (issue 32): only the CAM in the product's EEM differs
    Arm("eem-ebugrad", "frame", "eem", cam_target="ebu-gradient"),
    Arm("eem-clsagn", "frame", "eem", cam_target="class-agnostic"),  # the paper's, shipped until 2026-12-07
    Arm("eem-hires", "frame", "eem", cam_method="hirescam"),  # HiResCAM of the shipped target (docs/cam.md)
    Arm("bald", "frame", "bald"),
    Arm("least-conf", "frame", "least-confidence"),
)
REGION_ARMS = (
    Arm("random", "region", "random", key=True),
    Arm("entropy", "region", "entropy", key=True),
    Arm("eem-add", "region", "eem", eem="additive", key=True),
    Arm("eem", "region", "eem", key=True),
    Arm("eem+div", "region", "eem", "score=1,diversity=1", key=True),
    Arm("entropy+div", "region", "entropy", "score=1,diversity=1"),
    Arm("eem-ebugrad", "region", "eem", cam_target="ebu-gradient"),
    Arm("eem-clsagn", "region", "eem", cam_target="class-agnostic"),
    Arm("eem-hires", "region", "eem", cam_method="hirescam"),
)
ALL_ARMS = FRAME_ARMS + REGION_ARMS


@dataclass
class BenchConfig:
    """Everything a run depends on; recorded in the report."""
    data: str  # Cityscapes layout with train (seed set + pool), val (design) and test (report) splits
    out: str
    pretrain_data: str = ""  # disjoint labelled dataset (train split): the frozen encoder and the depth net
    size: tuple[int, int] = (64, 128)
    width: int = 16  # U-Net width (bench/results/headroom.md)
    unet_depth: int = 3
    dropout: float = 0.1  # bottleneck Dropout2d of the body's one training (frozen after)
    head_dropout: float = 0.2  # dropout on the head's input: the trainable stage's training and BALD's samples
    # key arms: seed after seed until the deadline (80 % power at 0.5 mIoU needs (1.96 + 0.84)^2 (SD/0.5)^2 + ~2
    # seeds: 10 at SD 0.5, the run's al.md states the power its seeds give)
    seeds: tuple[int, ...] = tuple(range(20))
    exploratory_seeds: int = 3  # non-key arms run on the first this many seeds
    random_draws: int = 3  # random arm: draws per seed, averaged into its curve
    protocols: tuple[str, ...] = PROTOCOLS
    arms: tuple[str, ...] = ()  # arm names to run (both protocols); empty = all
    encoder_steps: int = 600  # the frozen body's training (full U-Net) on pretrain_data
    body_lr: float = 2e-3  # its peak learning rate
    # what the body learns on pretrain_data: "classes" (the 19 trainIds) or "categories" (the 7
    # Cityscapes categories: flat, construction, object, nature, sky, human, vehicle), so that the
    # 19-class head must learn person from rider, car from truck, bicycle from motorcycle from the
    # benchmark's labels (bench/results/headroom.md)
    body_labels: str = "categories"
    seed_frames: int = 3  # whole ground-truth frames before the first acquisition
    seed_steps: int = 150  # decoder steps of model 0 on the seed set
    steps: int = 150  # decoder steps at every budget point, from model 0 (bench/results/convergence.md)
    batch_size: int = 8
    lr: float = 1e-2  # the small decoder's peak learning rate (cosine to 0): near converged in `steps` (headroom.md)
    # three budgets a factor 4 apart: where the headroom is (bench/results/headroom.md), at the cost of a
    # budget point per arm (the run's time buys seeds instead)
    frame_budgets: tuple[float, ...] = (0.01, 0.04, 0.16)  # of the pool's frames
    pixel_budgets: tuple[float, ...] = (0.005, 0.02, 0.08)  # of the pool's pixels, in whole cells
    cell_px: int = 16  # region protocol: square cells of this side
    cells_per_frame: int = 4  # region protocol: cells a picked frame gives per cycle
    mc_samples: int = 20  # BALD dropout samples
    near_m: float = 20.0  # near-field metric: test pixels nearer than this (ground-truth depth)
    depth_steps: int = 100
    # random (draw 0) again at 2 x steps on the first exploratory_seeds seeds: converged on test?
    # (the design check on val with more budgets: bench/al_headroom.py, bench/results/convergence.md)
    schedule_check: bool = True
    device: str = "cpu"
    threads: int = 1  # torch CPU threads (1: on a shared machine more threads are slower)
    deadline_s: float = 0.0  # start no new key-arm seed after this many seconds (0: no limit)
    cache_dir: str | None = None  # encoder, depth net (default <out>/cache)

    def validate(self) -> "BenchConfig":
        """Raises InvalidInput on a bad configuration."""
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
        if min(self.steps, self.seed_steps, self.seed_frames, self.encoder_steps, self.random_draws) <= 0:
            raise InvalidInput("steps, seed_steps, seed_frames, encoder_steps and random_draws must be positive")
        if self.body_labels not in BODY_LABELS:
            raise InvalidInput(f"body_labels must be one of {BODY_LABELS}, got {self.body_labels!r}")
        if self.mc_samples < 2:
            raise InvalidInput("mc_samples must be >= 2")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InvalidInput(f"seeds must be distinct and at least one, got {self.seeds}")
        if not self.pretrain_data:
            raise InvalidInput("pretrain_data: a labelled dataset disjoint from --data is needed for the "
                               "frozen encoder (e.g. `segxal data synth --seed 1`)")
        if Path(self.pretrain_data).resolve() == Path(self.data).resolve():
            raise InvalidInput("pretrain_data must not be the benchmark's data (the encoder would see the test split)")
        m = 2 * 2 ** self.unet_depth
        if self.size[0] % m or self.size[1] % m or self.size[0] % self.cell_px or self.size[1] % self.cell_px:
            raise InvalidInput(f"size {self.size} must be a multiple of {m} (the U-Net) and of cell_px {self.cell_px}")
        return self

    def arms_for(self, protocol: str) -> list[Arm]:
        return [a for a in ALL_ARMS if a.protocol == protocol and (not self.arms or a.name in self.arms)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        return d


# ------------------------------------------------------------------ data, encoder, depth

@dataclass
class _Data:
    train: SegDataset
    train_images: np.ndarray  # float32 [N, 3, H, W], normalised
    train_gt: np.ndarray  # uint8 [N, H, W]: read only for labelled frames and reporting
    test_gt: np.ndarray  # uint8 [T, H, W]
    near: np.ndarray  # bool [T, H, W]: test pixels nearer than near_m
    groups: list[str]  # drive log of each training frame
    encoder: UNet
    train_feats: fz.Features
    test_feats: fz.Features
    inv: np.ndarray  # float16 [N, H, W] relative inverse depth of the training frames


def _split(cfg: BenchConfig, root: str, split: str, depth: bool = False) -> SegDataset:
    frames = list_frames(root, split, require_labels=True)
    if not frames:
        raise InvalidInput(f"{root} has no labelled frames in its {split!r} split")
    return SegDataset(frames, cfg.size, with_depth=depth)


def _images(ds: SegDataset) -> np.ndarray:
    return np.stack([ds[i][0] for i in range(len(ds))])


def _cache_path(cfg: BenchConfig, name: str, **key) -> Path:
    # the one model cache (segxal.cache): `data` enters the key by its content, the rest as given
    return cache_path(Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache", name, **key)


def _model_cfg(cfg: BenchConfig) -> UNetConfig:
    return UNetConfig(width=cfg.width, depth=cfg.unet_depth, dropout=cfg.dropout)


def _train_cfg(cfg: BenchConfig, seed: int, class_weights: str) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed, device=cfg.device,
                       class_weights=class_weights, progress=False)


class _Repeated:
    """n_items items of a dataset, its frames in successive seeded permutations."""

    def __init__(self, base, n_items: int, seed: int):
        rng = np.random.default_rng(seed)
        reps = math.ceil(n_items / len(base))
        self.order = np.concatenate([rng.permutation(len(base)) for _ in range(reps)])[:n_items]
        self.base = base

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        return self.base[int(self.order[i])]


class _Categories:
    """A dataset's items with trainIds mapped to Cityscapes categories."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, lab, depth = self.base[i]
        return img, CATEGORY_OF_TRAIN_ID[lab], depth


def encoder_model(cfg: BenchConfig) -> UNet:
    """The frozen body's U-Net: a full U-Net trained `encoder_steps` steps on pretrain_data's train
    split, on cfg.body_labels (cached); all but its last decoder stage and head are used."""
    cats = cfg.body_labels == "categories"
    mcfg = replace(_model_cfg(cfg), num_classes=int(CATEGORY_OF_TRAIN_ID[:NUM_CLASSES].max()) + 1) if cats \
        else _model_cfg(cfg)
    path = _cache_path(cfg, "encoder", data=cfg.pretrain_data, size=cfg.size, model=mcfg.to_dict(),
                       steps=cfg.encoder_steps, lr=cfg.body_lr, bs=cfg.batch_size, labels=cfg.body_labels)
    if path.is_file():
        return load_model(path)
    ds = _split(cfg, cfg.pretrain_data, "train")
    torch.manual_seed(0)
    model = UNet(mcfg)
    train_segmentation(model, _Repeated(_Categories(ds) if cats else ds, cfg.encoder_steps * cfg.batch_size, 0),
                       replace(_train_cfg(cfg, 0, "enet"), lr=cfg.body_lr))
    save_checkpoint(path, model, kind="unet")
    return model


def depth_net(cfg: BenchConfig) -> DepthNet:
    """The monocular depth net (a stand-in for an off-the-shelf model), trained on pretrain_data's
    disparity (cached): it never sees a pool, validation or test frame."""
    path = _cache_path(cfg, "depth", data=cfg.pretrain_data, size=cfg.size, steps=cfg.depth_steps)
    if path.is_file():
        return load_model(path)
    ds = SegDataset(list_frames(cfg.pretrain_data, "train"), cfg.size, with_labels=False, with_depth=True)
    torch.manual_seed(0)
    model = DepthNet(DepthConfig(disparity_scale=disparity_scale_from(ds)))
    train_depth(model, _Repeated(ds, cfg.depth_steps * cfg.batch_size, 0), _train_cfg(cfg, 0, "none"))
    save_checkpoint(path, model, kind="depth")
    return model


def load_data(cfg: BenchConfig, report_split: str = "test") -> _Data:
    """Splits, frozen-encoder features and inverse depth for a run.

    Args:
        cfg: the configuration.
        report_split: the split the numbers come from: "test" (the benchmark) or "val" (design:
            headroom and schedule, bench/al_headroom.py).

    Raises:
        InvalidInput: a missing split or a bad dataset.
    """
    train = _split(cfg, cfg.data, "train")
    rep = _split(cfg, cfg.data, report_split, depth=True)
    near = []
    for i, f in enumerate(rep.frames):
        depth = disparity_to_depth(rep.raw(i)[2], load_camera(f))  # metres, 0 = invalid
        near.append((depth > 0) & (depth < cfg.near_m))
    enc = encoder_model(cfg).to(resolve_device(cfg.device))
    images = _images(train)
    inv = _inverse_depth(depth_net(cfg), images, cfg)
    return _Data(train, images, np.stack([train.raw(i)[1] for i in range(len(train))]),
                 np.stack([rep.raw(i)[1] for i in range(len(rep))]), np.stack(near),
                 [f.sequence for f in train.frames], enc, fz.encode_split(enc, images),
                 fz.encode_split(enc, _images(rep)), inv)


@torch.no_grad()
def _inverse_depth(net: DepthNet, images: np.ndarray, cfg: BenchConfig, batch: int = 32) -> np.ndarray:
    net = net.to(resolve_device(cfg.device)).eval()
    dev = resolve_device(cfg.device)
    return np.concatenate([net(torch.from_numpy(images[s:s + batch]).to(dev)).cpu().numpy().astype(np.float16)
                           for s in range(0, len(images), batch)])


def evaluate(model: UNet, data: _Data) -> dict:
    """mIoU over the 19 classes on the report split, near-field mIoU (ground-truth depth < near_m),
    per-class IoU."""
    pred = fz.predict(model, data.test_feats)  # [T, H, W]
    rep = iou_report(confusion_matrix(pred, data.test_gt))
    near = iou_report(confusion_matrix(pred, np.where(data.near, data.test_gt, IGNORE)))
    return {"miou": rep["miou"], "near_miou": near["miou"], "per_class": rep["per_class"],
            "vulnerable": {c: rep["per_class"][c] for c in VULNERABLE}}


def train_model(init: UNet, data: _Data, masks: dict[int, np.ndarray], steps: int, cfg: BenchConfig,
                seed: int) -> UNet:
    """The decoder of `init` trained `steps` steps on the labelled frames (masks: train index -> trainIds,
    255 = not labelled)."""
    return fz.train_decoder(init, data.train_feats, masks, steps, cfg.batch_size, cfg.lr, seed,
                            head_dropout=cfg.head_dropout)


def seed_model(cfg: BenchConfig, data: _Data, seed_idx: list[int], seed: int) -> UNet:
    """Model 0 of a seed: the frozen encoder, a decoder initialised from the seed and trained on the seed set."""
    return fz.train_decoder(fz.fresh_decoder(data.encoder, seed), data.train_feats,
                            {i: data.train_gt[i] for i in seed_idx}, cfg.seed_steps, cfg.batch_size, cfg.lr,
                            seed, head_dropout=cfg.head_dropout)


# ------------------------------------------------------------------ model outputs on the pool

@dataclass
class PoolOutputs:
    """What the strategies may see of the training split: model outputs, never ground truth."""
    labels: np.ndarray  # uint8 [N, H, W] predicted trainIds
    ebu: np.ndarray  # float16 [N, H, W]
    cam: np.ndarray  # float16 [N, H, W]
    pmax: np.ndarray  # float16 [N, H, W]
    embedding: np.ndarray  # float32 [N, D]: UNet.embed (the product's frame embedding)
    class_hist: np.ndarray  # float32 [N, C]: share of each frame's predicted pixels per class
    bald: np.ndarray | None = None  # float16 [N, H, W] BALD mutual information


def pool_outputs(model: UNet, data: _Data, cfg: BenchConfig, with_bald: bool,
                 cam_target: str = DEFAULT_UNET_CAM_TARGET, batch: int = 32,
                 cam_method: str = DEFAULT_UNET_CAM_METHOD) -> PoolOutputs:
    """Labels, EBU, CAM, p_max (the product's ExplainedSegmenter), the frame embedding and class
    histograms, and optionally BALD, for every training frame; the CAM is `cam_target`'s at the
    bottleneck, by `cam_method` (the written-out VJP where it has the target, else with_cam_target)."""
    model = model.eval()
    vjp_target = cam_target if cam_target in UNET_CAM_TARGETS else DEFAULT_UNET_CAM_TARGET
    explained = ExplainedSegmenter(model, cam_target=vjp_target, cam_method=cam_method).eval()
    parts: dict[str, list] = {k: [] for k in ("labels", "ebu", "cam", "pmax", "embedding")}
    for s in range(0, len(data.train_images), batch):
        x = torch.from_numpy(data.train_images[s:s + batch]).to(data.train_feats.x.device)
        with torch.inference_mode():
            labels, ebu, cam, pmax = explained(x)  # each [B, H, W]
            parts["embedding"].append(fz.frame_embedding(model, x).cpu().numpy().astype(np.float32))
        parts["labels"].append(labels.cpu().numpy().astype(np.uint8))
        for k, t in (("ebu", ebu), ("cam", cam), ("pmax", pmax)):
            parts[k].append(t.float().cpu().numpy().astype(np.float16))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    hist = np.stack([np.bincount(np.minimum(lab.ravel(), NUM_CLASSES), minlength=NUM_CLASSES + 1)[:NUM_CLASSES]
                     for lab in out["labels"]]).astype(np.float32)
    out["class_hist"] = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    bald = fz.bald(model, data.train_feats, cfg.mc_samples, cfg.head_dropout) if with_bald else None
    outputs = PoolOutputs(**out, bald=bald)
    return outputs if cam_target == vjp_target else with_cam_target(outputs, model, data, cam_target,
                                                                     method=cam_method)


def with_cam_target(out: PoolOutputs, model: UNet, data: _Data, target: str, batch: int = 32,
                    method: str = DEFAULT_UNET_CAM_METHOD) -> PoolOutputs:
    """`out` with the `method` CAM of `target` at the U-Net's bottleneck (the shipped layer), computed by the
    traced route's explainer in eager mode (segxal.graph.traced_cam; for the targets the written-out
    VJP has, it equals the VJP, tests/test_al_bench.py), float16 as served."""
    from segxal.graph.traced_cam import TracedExplainer, make_target
    layer = next(n for n, m in model.named_modules() if m is model.bottleneck_layer)
    explainer = TracedExplainer(model.eval(), layer, make_target(target), (0, 0, 0), (1, 1, 1), method=method).eval()
    cams = []
    for s in range(0, len(data.train_images), batch):
        x = torch.from_numpy(data.train_images[s:s + batch]).to(data.train_feats.x.device)
        cams.append(explainer.explain(x)[3].detach().cpu().numpy().astype(np.float16))
    return replace(out, cam=np.concatenate(cams))


def score_maps(arm: Arm, out: PoolOutputs, inv: np.ndarray, idx: list[int]) -> np.ndarray | None:
    """The per-pixel map an arm ranks by, float32 [len(idx), H, W]; None for random and diversity alone."""
    if arm.score in ("random", "none"):
        return None
    if arm.score == "entropy":
        return out.ebu[idx].astype(np.float32)
    if arm.score == "least-confidence":
        return st.least_confidence_map(out.pmax[idx])
    if arm.score == "bald":
        return out.bald[idx].astype(np.float32)
    opts = EEM_VARIANTS[arm.eem]
    return np.stack([score_frame(out.labels[i], out.ebu[i], out.cam[i], inv[i], opts, with_regions=False).eem
                     for i in idx])


# ------------------------------------------------------------------ one arm, one seed

@dataclass
class _SeedContext:
    seed: int
    seed_idx: list[int]
    pool: list[int]  # train indices that may be acquired
    model0: UNet
    out0: PoolOutputs  # model 0's outputs on the training split (shared by every arm of the seed)
    eval0: dict
    maps0: dict = field(default_factory=dict)  # (score, eem, cam target) -> model 0's maps over the pool
    targets0: dict = field(default_factory=dict)  # (cam target, method) -> out0 with that CAM


def _first_outputs(ctx: _SeedContext, arm: Arm, data: _Data) -> PoolOutputs:
    """Model 0's pool outputs as `arm` sees them: ctx.out0, or with its CAM (target, method) (once a seed)."""
    if arm.cam == (DEFAULT_UNET_CAM_TARGET, DEFAULT_UNET_CAM_METHOD):
        return ctx.out0
    if arm.cam not in ctx.targets0:
        ctx.targets0[arm.cam] = with_cam_target(ctx.out0, ctx.model0, data, arm.cam_target, method=arm.cam_method)
    return ctx.targets0[arm.cam]


def _pool_maps(arm: Arm, ctx: _SeedContext, out: PoolOutputs, inv: np.ndarray) -> np.ndarray | None:
    """score_maps over the whole pool (rows in ctx.pool order); model 0's are computed once per seed."""
    if out is not ctx.out0 and out is not ctx.targets0.get(arm.cam):
        return score_maps(arm, out, inv, ctx.pool)
    key = (arm.score, arm.eem, arm.cam)
    if key not in ctx.maps0:
        ctx.maps0[key] = score_maps(arm, out, inv, ctx.pool)
    return ctx.maps0[key]


def _select(arm: Arm, data: _Data, out: PoolOutputs, cand: list[int], scores: np.ndarray, k: int,
            labelled: list[int]) -> list[int]:
    """The product's selection over candidate train indices -> the picked indices, in pick order."""
    spec = arm.spec
    pool = PoolFeatures(ids=[data.train.frames[i].frame_id for i in cand], scores=np.asarray(scores, np.float64),
                        embeddings=out.embedding[cand], class_hist=out.class_hist[cand],
                        log_ids=[data.groups[i] for i in cand])
    picks = select(pool, k, spec, labelled_embeddings=out.embedding[labelled] if labelled else None,
                   labelled_class_hist=out.class_hist[labelled].sum(0) if labelled else None)
    if spec.log_cap and len(picks) < k:  # the cap ran out of logs: the rest by the same selection uncapped
        rest = [j for j in range(len(cand)) if j not in {p.index for p in picks}]
        sub = PoolFeatures(ids=[pool.ids[j] for j in rest], scores=pool.scores[rest],
                           embeddings=pool.embeddings[rest], class_hist=pool.class_hist[rest])
        done = labelled + [cand[p.index] for p in picks]
        more = select(sub, k - len(picks), replace(spec, log_cap=0), labelled_embeddings=out.embedding[done],
                      labelled_class_hist=out.class_hist[done].sum(0))
        return [cand[p.index] for p in picks] + [cand[rest[p.index]] for p in more]
    return [cand[p.index] for p in picks]


def _frame_scores(arm: Arm, ctx: _SeedContext, out: PoolOutputs, inv: np.ndarray, cand: list[int],
                  rng: np.random.Generator) -> np.ndarray:
    if arm.score == "random":
        return rng.random(len(cand))
    if arm.score == "none":
        return np.zeros(len(cand))
    row = {i: r for r, i in enumerate(ctx.pool)}
    maps = _pool_maps(arm, ctx, out, inv)[[row[i] for i in cand]]
    return maps.reshape(len(cand), -1).mean(1).astype(np.float64)


def _gt_share(data: _Data, masks: dict[int, np.ndarray | None]) -> dict:
    """Ground-truth class share of newly labelled pixels: reporting only, after selection."""
    counts = np.zeros(NUM_CLASSES, np.int64)
    for i, m in masks.items():
        g = data.train_gt[i] if m is None else data.train_gt[i][m]
        g = g[g != IGNORE].astype(np.int64)
        counts += np.bincount(g, minlength=NUM_CLASSES)[:NUM_CLASSES]
    share = counts / max(1, counts.sum())
    return {CLASS_NAMES[c]: float(share[c]) for c in range(NUM_CLASSES) if share[c] > 0}


def _run_frame_arm(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, data: _Data, draw: int = 0,
                   scale: int = 1) -> list[dict]:
    """One frame arm over the budgets; `draw` numbers random's draws; `scale` multiplies the steps."""
    rng = np.random.default_rng([ctx.seed, 7, draw])
    masks = {i: data.train_gt[i] for i in ctx.seed_idx}
    acquired: list[int] = []
    out = _first_outputs(ctx, arm, data)
    h, w = cfg.size
    records = []
    for b, frac in enumerate(cfg.frame_budgets):
        t0 = time.time()
        target = round(frac * len(ctx.pool))
        cand = [i for i in ctx.pool if i not in masks]
        scores = _frame_scores(arm, ctx, out, data.inv, cand, rng)
        picks = _select(arm, data, out, cand, scores, target - len(acquired), sorted(masks))
        for i in picks:
            masks[i] = data.train_gt[i]
        acquired += picks
        steps = scale * cfg.steps
        model = train_model(ctx.model0, data, masks, steps, cfg, seed=ctx.seed * 1000 + b)
        rec = {"protocol": "frame", "arm": arm.name, "seed": ctx.seed, "draw": draw, "budget": frac,
               "steps": steps, "target": target, "shortfall": target - len(acquired),
               "x": len(acquired) / len(ctx.pool),
               "cost": {"frames": len(acquired), "regions": len(acquired), "pixels": len(acquired) * h * w},
               **evaluate(model, data), "picks": [data.train.frames[i].frame_id for i in picks],
               "diag": {"logs": len({data.groups[i] for i in picks}), "n_picks": len(picks),
                        "gt_class_share_of_new_labels": _gt_share(data, {i: None for i in picks})}}
        if b + 1 < len(cfg.frame_budgets) and arm.score != "random":  # random never looks
            out = pool_outputs(model, data, cfg, with_bald=arm.score == "bald", cam_target=arm.cam_target,
                               cam_method=arm.cam_method)
        rec["seconds"] = time.time() - t0
        records.append(rec)
    return records


def cell_masks(shape: tuple[int, int], side: int) -> np.ndarray:
    """bool [K, H, W]: the frame's side x side cells, row-major."""
    h, w = shape
    out = np.zeros((h // side * (w // side), h, w), bool)
    k = 0
    for y in range(0, h, side):
        for x in range(0, w, side):
            out[k, y:y + side, x:x + side] = True
            k += 1
    return out


def cell_scores(m: np.ndarray, side: int) -> np.ndarray:
    """The map's mean over each side x side cell of the frame, row-major [K]."""
    h, w = m.shape
    return m.reshape(h // side, side, w // side, side).mean(axis=(1, 3)).ravel()


def pick_cells(arm: Arm, ctx: _SeedContext, data: _Data, out: PoolOutputs, maps: np.ndarray | None,
               taken: dict[int, set[int]], n_cells: int, per_frame: int, n_per_frame: int,
               rng: np.random.Generator, side: int) -> list[tuple[int, int]]:
    """(train index, cell number) of the next n_cells cells: frames by `select`, cells within by the map.

    Args:
        maps: the arm's maps over the pool (rows in ctx.pool order); None for random.
        taken: train index -> cells already labelled (updated by the caller).
        per_frame: cells a picked frame gives; n_per_frame: cells in a frame.

    Returns:
        exactly n_cells cells while the pool has them.
    """
    row = {i: r for r, i in enumerate(ctx.pool)}
    cand = [i for i in ctx.pool if len(taken.get(i, ())) < n_per_frame]
    order: dict[int, list[int]] = {}  # frame -> its free cells, best first
    fscore = np.zeros(len(cand))
    for j, i in enumerate(cand):
        free = [c for c in range(n_per_frame) if c not in taken.get(i, ())]
        if maps is None:
            cells = [free[c] for c in rng.permutation(len(free))]
        else:
            cs = cell_scores(maps[row[i]], side)
            cells = sorted(free, key=lambda c: -cs[c])
            fscore[j] = float(np.mean(cs[cells[:per_frame]]))
        order[i] = cells
    if maps is None:
        fscore = rng.random(len(cand))
    k = math.ceil(n_cells / per_frame)
    labelled = sorted(set(ctx.seed_idx) | set(taken))
    frames = _select(arm, data, out, cand, fscore, k, labelled)
    chosen: list[tuple[int, int]] = []
    for i in frames:
        chosen += [(i, c) for c in order[i][:min(per_frame, n_cells - len(chosen))]]
    if len(chosen) < n_cells:  # frames ran short of cells: the best remaining cells of picked frames
        rest = [(i, c) for i in frames for c in order[i][per_frame:]]
        chosen += rest[:n_cells - len(chosen)]
    return chosen


def _run_region_arm(arm: Arm, cfg: BenchConfig, ctx: _SeedContext, data: _Data, draw: int = 0) -> list[dict]:
    rng = np.random.default_rng([ctx.seed, 11, draw])
    h, w = cfg.size
    side = cfg.cell_px
    cells = cell_masks((h, w), side)  # [K, H, W]
    n_per_frame = len(cells)
    pool_cells = len(ctx.pool) * n_per_frame
    taken: dict[int, set[int]] = {}
    cost = {"frames": 0, "regions": 0, "pixels": 0}
    out = _first_outputs(ctx, arm, data)
    records = []
    for b, frac in enumerate(cfg.pixel_budgets):
        t0 = time.time()
        target = round(frac * pool_cells)  # whole cells: frac of the pool's pixels, to a cell
        need = target - cost["regions"]
        maps = _pool_maps(arm, ctx, out, data.inv)
        chosen = pick_cells(arm, ctx, data, out, maps, taken, need, cfg.cells_per_frame, n_per_frame, rng, side)
        new_frames = set()
        for i, c in chosen:
            if i not in taken:
                cost["frames"] += 1
                taken[i] = set()
            taken[i].add(c)
            new_frames.add(i)
            cost["regions"] += 1
            cost["pixels"] += side * side
        masks = {i: data.train_gt[i] for i in ctx.seed_idx}
        for i, cs in taken.items():
            hm = cells[sorted(cs)].any(0)
            masks[i] = np.where(hm, data.train_gt[i], IGNORE).astype(np.uint8)
        model = train_model(ctx.model0, data, masks, cfg.steps, cfg, seed=ctx.seed * 1000 + b)
        new = {}
        for i, c in chosen:
            new[i] = new.get(i, np.zeros((h, w), bool)) | cells[c]
        rec = {"protocol": "region", "arm": arm.name, "seed": ctx.seed, "draw": draw, "budget": frac,
               "steps": cfg.steps, "target": target * side * side,
               "shortfall": (target - cost["regions"]) * side * side,
               "x": cost["pixels"] / (len(ctx.pool) * h * w), "cost": dict(cost), **evaluate(model, data),
               "picks": [f"{data.train.frames[i].frame_id}#{c}" for i, c in chosen],  # frame#cell this cycle
               "diag": {"regions_this_cycle": len(chosen), "frames_this_cycle": len(new_frames),
                        "logs": len({data.groups[i] for i in new_frames}),
                        "region_px": [side * side], "gt_class_share_of_new_labels": _gt_share(data, new)}}
        if b + 1 < len(cfg.pixel_budgets) and arm.score != "random":
            out = pool_outputs(model, data, cfg, with_bald=arm.score == "bald", cam_target=arm.cam_target,
                               cam_method=arm.cam_method)
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
    out0 = pool_outputs(model0, data, cfg, with_bald=need_bald)
    return _SeedContext(seed, seed_idx, pool, model0, out0, evaluate(model0, data))


REPORT_FILE = "al.json.gz"  # every cycle record of a run: gzip, as a 23-seed run is ~7 MB of JSON


def write_report(out_dir: Path, report: dict) -> Path:
    """<out_dir>/al.json.gz, atomically (a stopped run keeps what it finished); gzip without a
    timestamp, so the same report gives the same bytes."""
    path = Path(out_dir) / REPORT_FILE
    imageio.atomic_write_bytes(path, gzip.compress(json.dumps(report).encode(), mtime=0))
    return path


def load_report(path: str | Path) -> dict:
    """A run's report from al.json.gz or, as earlier runs wrote it, al.json."""
    data = Path(path).read_bytes()
    return json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def git_commit() -> dict:
    """The commit the run's code is at, and whether the benchmark's own files differ from it."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench/albench", "bench/al_curve.py",
                                "segxal/selection", "segxal/eem", "segxal/al"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": []}
    return {"commit": head or "unknown", "dirty": dirty.splitlines()}


def _seed_unit(cfg: BenchConfig, data: _Data, seed: int, n_seed: int, need_bald: bool, t_start: float,
               on_arm=None) -> dict:
    """What one seed adds to the report: model 0's evaluation, the key arms' runs, random's 2 x steps
    check, and on the first `exploratory_seeds` seeds the exploratory arms. A seed that would start
    after the deadline is skipped (a unit's length is the seed's; the key arms' power is what a
    deadline trades), whatever arms it runs: only the first MIN_SEEDS always run, so that every
    arm has an interval (exploratory arms on every seed once had no deadline at all)."""
    if cfg.deadline_s and n_seed >= MIN_SEEDS and time.time() - t_start > cfg.deadline_s:
        return {"seed": seed, "skipped": True}
    exploratory = n_seed < cfg.exploratory_seeds
    ctx = _seed_context(cfg, data, seed, need_bald and exploratory)
    unit = {"seed": seed, "skipped": False, "runs": [], "schedule": [],
            "cycle0": {"seed": seed, "seed_frames": cfg.seed_frames, "pool": len(ctx.pool), **ctx.eval0}}
    for protocol in cfg.protocols:
        for arm in cfg.arms_for(protocol):
            if not (arm.key or exploratory):
                continue
            runner = _run_frame_arm if protocol == "frame" else _run_region_arm
            for d in range(cfg.random_draws if arm.score == "random" else 1):
                recs = runner(arm, cfg, ctx, data, d)
                unit["runs"].extend(recs)
                if on_arm:
                    on_arm(recs)
            if protocol == "frame" and arm.score == "random" and cfg.schedule_check:
                recs = _run_frame_arm(arm, cfg, ctx, data, 0, scale=2)
                unit["schedule"].extend(recs)
                if on_arm:
                    on_arm(recs)
    return unit


MIN_SEEDS = 3  # seeds that run whatever the deadline (a paired interval needs a few)
_WORKER: dict = {}  # a worker process's configuration and data (run_benchmark with jobs > 1)


def _worker_init(cfg: BenchConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _WORKER.update(cfg=cfg, data=load_data(cfg))


def _worker_unit(args: tuple) -> dict:
    seed, n_seed, need_bald, t_start = args
    return _seed_unit(_WORKER["cfg"], _WORKER["data"], seed, n_seed, need_bald, t_start, print_progress)


def run_benchmark(cfg: BenchConfig, on_arm=None, jobs: int = 1) -> dict:
    """Run every (seed, protocol, arm) and return the report, also written to <out>/al.json.gz after each
    seed (a run stopped early keeps what it finished). One invocation, one commit: with jobs > 1 the
    seeds are spread over that many worker processes (each `cfg.threads` torch threads, its own copy
    of the cached data); a seed's arms always run in one process, in the same order.

    Args:
        cfg: the benchmark configuration.
        on_arm: optional callback(records) after each arm (progress printing; workers print themselves).
        jobs: worker processes (1: this process).

    Returns:
        {"config", "commit", "cycle0": [per-seed evaluation of model 0], "runs": [cycle records],
         "schedule": [records of the 2 x steps check], "skipped_seeds", "seconds", "loadavg", "jobs"}.

    Raises:
        InvalidInput: a bad configuration or dataset, or jobs < 1.
    """
    cfg.validate()
    if jobs < 1:
        raise InvalidInput(f"jobs must be at least 1, got {jobs}")
    t_start = time.time()
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg)  # also fills the cache (encoder, depth net) the workers read
    report = {"config": cfg.to_dict(), "commit": git_commit(), "report_split": "test", "jobs": jobs,
              "n_train": len(data.train), "n_test": len(data.test_gt), "cycle0": [], "runs": [],
              "schedule": [], "skipped_seeds": [], "setup_seconds": time.time() - t_start}
    need_bald = any(a.score == "bald" for p in cfg.protocols for a in cfg.arms_for(p))
    units = [(seed, n, need_bald, t_start) for n, seed in enumerate(cfg.seeds)]

    def add(unit: dict) -> None:
        if unit["skipped"]:
            report["skipped_seeds"].append(unit["seed"])
        else:
            report["cycle0"].append(unit["cycle0"])
            report["runs"].extend(unit["runs"])
            report["schedule"].extend(unit["schedule"])
        report["seconds"] = time.time() - t_start
        write_report(out_dir, report)

    if jobs == 1:
        for seed, n, nb, t0 in units:
            add(_seed_unit(cfg, data, seed, n, nb, t0, on_arm))
    else:
        import multiprocessing as mp
        del data  # the workers load their own
        # spawn, not fork: a forked child of a process that has run torch's thread pools can hang
        with mp.get_context("spawn").Pool(jobs, initializer=_worker_init, initargs=(cfg,)) as pool:
            for unit in pool.imap_unordered(_worker_unit, units):
                add(unit)
        for key in ("cycle0", "runs", "schedule"):  # seed order, as one process writes it (stable within a seed)
            report[key].sort(key=lambda c: cfg.seeds.index(c["seed"]))
        report["skipped_seeds"].sort()
    report["seconds"] = time.time() - t_start
    report["loadavg"] = _loadavg()
    write_report(out_dir, report)
    return report


def print_progress(recs: list[dict]) -> None:
    """run_benchmark's on_arm for the command line: one line per finished arm."""
    r = recs[-1]
    print(f"  {r['protocol']:6s} seed {r['seed']:2d} {r['arm']:14s} draw {r['draw']} steps {r['steps']:4d}: mIoU "
          + " ".join(f"{100 * x['miou']:.1f}" for x in recs)
          + f"  ({sum(x['seconds'] for x in recs):.0f} s)", flush=True)


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def full_size(cfg: BenchConfig) -> BenchConfig:
    """The full-size configuration: 256 x 512 frames, the default U-Net (width 32, depth 4), 64 px cells."""
    d = UNetConfig()
    return replace(cfg, size=(256, 512), width=d.width, unet_depth=d.depth, cell_px=64)


