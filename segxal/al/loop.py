"""The in-process active-learning loop (`segxal al run`, app/al_run.py): the whole method in one process.

seed set (whole frames, ground truth) -> train -> cycles of:
    score the unlabeled pool (segmentation + depth -> EEM, segxal.eem.frame)
    -> pick the top frames by the strategy -> annotate with the oracle (regions to fix from the EEM)
    -> DICE(prediction, annotation): frames >= threshold leave the query pool
    -> fine-tune on every label so far -> evaluate mIoU on the held-out split
until the cycle's mean DICE reaches the threshold, the budget is spent, or the cycles run out.
Writes cycles.json (one record per cycle) and miou_vs_pixels.png.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from segxal import imageio
from segxal.al.oracles import Cost, machine_oracle, simulated_human
from segxal.eem.options import EEMOptions
from segxal.selection import DEFAULT_SELECTION, PoolFeatures, SelectionSpec, select
from segxal.eem.frame import score_frame
from segxal.al.strategies import LOOP_STRATEGIES as STRATEGIES, strategy_score
from segxal.cache import cache_path
from segxal.data.cityscapes import SegDataset, list_frames
from segxal.eem.explain import ExplainedSegmenter
from segxal.eem.regions import rle_to_mask
from segxal.errors import InvalidInput
from segxal.labels import IGNORE, NUM_CLASSES
from segxal.metrics import iou_report, macro_dice
from segxal.progress import progress as progress_bar
from segxal.models.depth import DepthConfig, DepthNet
from segxal.models.unet import UNet, UNetConfig
from segxal.train import (TrainConfig, disparity_scale_from, evaluate_depth, evaluate_segmentation,
                          load_model, save_checkpoint, train_depth, train_segmentation)

log = logging.getLogger(__name__)
ORACLES = ("human", "human-frame", "machine")
# Label Studio needs the coordinator and a bridge: the services loop (`segxal loop`) only.
SERVICES_ORACLES = ORACLES + ("label-studio",)


@dataclass
class ALConfig:
    data: str
    out: str
    size: tuple[int, int] = (128, 256)
    strategy: str = "eem"
    oracle: str = "human"  # human: region-level simulated person; human-frame: whole frames; machine
    cycles: int = 5
    budget: int = 120  # frames the oracle may be asked for, after the seed set
    per_cycle: int = 0  # frames queried per cycle; 0 = budget // cycles
    seed_frames: int = 48
    width: int = 16
    unet_depth: int = 4
    init_epochs: int = 40
    finetune_epochs: int = 10
    batch_size: int = 8
    lr: float = 2e-3
    tau: float = 0.9  # machine oracle: keep predictions with p_max >= tau
    outside: str = "prediction"  # human oracle: labels outside the regions ("prediction" | "ignore")
    dice_threshold: float = 0.95
    eem: EEMOptions = field(default_factory=EEMOptions)
    # how frames are picked from the strategy's scores (segxal.selection): by score alone, or composed
    selection: SelectionSpec = field(default_factory=lambda: SelectionSpec.parse(DEFAULT_SELECTION))
    depth_source: str = "model"  # "model": monocular depth net; "gt": ground-truth disparity
    depth_checkpoint: str | None = None  # reuse a trained depth net (else trained and cached)
    depth_epochs: int = 6
    cache_dir: str | None = None  # shares the depth net and the seed model between runs
    seed: int = 0
    progress: bool = True

    def validate(self, oracles: tuple[str, ...] = ORACLES) -> "ALConfig":
        if self.strategy not in STRATEGIES:
            raise InvalidInput(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.oracle not in oracles:
            extra = " (label-studio: `segxal loop` only)" if self.oracle in SERVICES_ORACLES else ""
            raise InvalidInput(f"--oracle must be one of {', '.join(oracles)}, got {self.oracle!r}{extra}")
        if self.depth_source not in ("model", "gt"):
            raise InvalidInput(f"--depth-source must be 'model' or 'gt', got {self.depth_source!r}")
        for name in ("cycles", "budget", "seed_frames"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"--{name.replace('_', '-')} must be positive")
        if not 0 < self.dice_threshold <= 1:
            raise InvalidInput("--dice-threshold must be in (0, 1]")
        self.eem.validate()
        self.selection.validate()
        return self

    @property
    def frames_per_cycle(self) -> int:
        return self.per_cycle or max(1, self.budget // self.cycles)


@dataclass
class _State:
    """What the loop knows about the training split between cycles."""
    # index -> annotation (trainIds); insertion order = training order: the seed set by frame id,
    # then frames in the order they were first annotated (the trainer service's order too)
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    human: dict[int, np.ndarray] = field(default_factory=dict)  # index -> bool mask of human pixels
    pool: set[int] = field(default_factory=set)  # indices that may still be queried
    cost: Cost = field(default_factory=Cost)
    queried: int = 0


def seed_indices(cfg: ALConfig, n_train: int) -> list[int]:
    """The seed set: `seed_frames` training frames drawn with the run's seed (indices into the
    training split sorted by frame id). The services loop hands the same frames to the trainer."""
    return np.random.default_rng(cfg.seed).permutation(n_train)[:cfg.seed_frames].tolist()


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _train_cfg(cfg: ALConfig, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                       progress=cfg.progress)


def _cache_path(cfg: ALConfig, name: str, **inputs) -> Path:
    """Where a model this run trains is cached: keyed by the data's content and every input named
    (segxal.cache), so another dataset or other hyper-parameters never reuse it."""
    return cache_path(cfg.cache_dir or cfg.out, name, data=cfg.data, **inputs)


def depth_model_for(cfg: ALConfig, train: SegDataset) -> DepthNet | None:
    """The monocular depth net: a given checkpoint, a cached one, or trained now."""
    if cfg.depth_source == "gt":
        return None
    if cfg.depth_checkpoint:
        model = load_model(cfg.depth_checkpoint)
        if not isinstance(model, DepthNet):
            raise InvalidInput(f"{cfg.depth_checkpoint}: not a depth checkpoint")
        return model
    path = _cache_path(cfg, "depth", size=cfg.size, epochs=cfg.depth_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       seed=cfg.seed)
    if path.is_file():
        return load_model(path)
    train_d = SegDataset(train.frames, cfg.size, with_labels=False, with_depth=True)
    model = DepthNet(DepthConfig(disparity_scale=disparity_scale_from(train_d)))
    train_depth(model, train_d, _train_cfg(cfg, cfg.depth_epochs, cfg.seed), ckpt_path=None)
    save_checkpoint(path, model, kind="depth", meta=evaluate_depth(model, train_d.subset(range(min(32, len(train_d))))))
    return model


def _seed_model(cfg: ALConfig, train: SegDataset, state: _State) -> UNet:
    """The cycle-0 model trained on the seed set; cached so strategies compared on the same seed
    start from the very same weights."""
    path = _cache_path(cfg, "seed", seed=cfg.seed, seed_frames=cfg.seed_frames, size=cfg.size,
                       model=UNetConfig(width=cfg.width, depth=cfg.unet_depth), epochs=cfg.init_epochs,
                       batch_size=cfg.batch_size, lr=cfg.lr)
    if path.is_file():
        return load_model(path)
    torch.manual_seed(cfg.seed)  # initial weights repeat with the seed, as in the trainer service
    model = UNet(UNetConfig(width=cfg.width, depth=cfg.unet_depth))
    ds = _training_set(train, state)
    train_segmentation(model, ds, _train_cfg(cfg, cfg.init_epochs, cfg.seed))
    save_checkpoint(path, model, kind="unet")
    return model


def _training_set(train: SegDataset, state: _State) -> SegDataset:
    return train.subset(list(state.labels), {train.frames[i].frame_id: m for i, m in state.labels.items()})


@torch.no_grad()
def _embeddings(model: UNet, ds: SegDataset, indices: list[int], batch: int) -> np.ndarray:
    """The frames' embeddings [N, D] (UNet.embed: what the served graph's `embedding` output gives)."""
    out = []
    for s in range(0, len(indices), batch):
        x = torch.from_numpy(np.stack([ds[i][0] for i in indices[s:s + batch]])).to(_device())
        out.append(model.embed(x).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _class_shares(labels: np.ndarray) -> np.ndarray:
    """Share of a label map's pixels per class [C] (IGNORE left out), the score result's histogram."""
    counts = np.bincount(labels[labels != IGNORE].ravel().astype(np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES]
    return (counts / max(counts.sum(), 1)).astype(np.float32)


@torch.no_grad()
def _pool_outputs(explained: ExplainedSegmenter, depth: DepthNet | None, ds: SegDataset,
                  indices: list[int], batch: int, progress: bool):
    """Yield (index, labels, ebu, cam, pmax, inverse_depth) for pool frames, batched."""
    dev = _device()
    for s in progress_bar(range(0, len(indices), batch), desc="score pool", unit="batch", enabled=progress):
        idx = indices[s:s + batch]
        items = [ds[i] for i in idx]
        x = torch.from_numpy(np.stack([it[0] for it in items])).to(dev)  # [B, 3, H, W]
        labels, ebu, cam, pmax = (t.cpu().numpy() for t in explained(x))
        if depth is not None:
            inv = depth(x).cpu().numpy()  # [B, H, W]
        else:
            inv = np.stack([it[2] for it in items])
        for k, i in enumerate(idx):
            yield i, labels[k], ebu[k], cam[k], pmax[k], inv[k]


def _annotate(cfg: ALConfig, gt: np.ndarray, labels: np.ndarray, pmax: np.ndarray, frame) -> tuple:
    if cfg.oracle == "machine":
        return machine_oracle(labels, pmax, cfg.tau)
    if cfg.oracle == "human-frame":
        return simulated_human(gt, labels, None)
    masks = [rle_to_mask(r.rle) for r in frame.regions]
    return simulated_human(gt, labels, masks, outside=cfg.outside)


def run(cfg: ALConfig) -> dict:
    """Run the loop; returns the report also written to <out>/cycles.json."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train = SegDataset(list_frames(cfg.data, "train", require_labels=True), cfg.size,
                       with_depth=cfg.depth_source == "gt")
    val = SegDataset(list_frames(cfg.data, "val", require_labels=True), cfg.size)
    if cfg.seed_frames >= len(train):
        raise InvalidInput(f"--seed-frames {cfg.seed_frames} leaves no pool ({len(train)} training frames)")
    rng = np.random.default_rng(cfg.seed + 1)  # random strategy's draws
    seed_set = set(seed_indices(cfg, len(train)))
    state = _State(pool=set(range(len(train))) - seed_set)
    h, w = cfg.size
    for i in sorted(seed_indices(cfg, len(train))):  # seed set: whole frames, ground truth
        state.labels[i] = train.raw(i)[1]
        state.human[i] = np.ones((h, w), bool)
        state.cost += Cost(frames=1, pixels=h * w)

    t0 = time.time()
    depth = depth_model_for(cfg, train)
    model = _seed_model(cfg, train, state).to(_device())
    depth = depth.to(_device()) if depth is not None else None
    records = [_record(0, model, val, state, [], t0, "")]
    log.info("cycle 0: mIoU %.2f on %d seed frames", 100 * records[0]["miou"], cfg.seed_frames)
    stop = "cycles"
    for cycle in range(1, cfg.cycles + 1):
        tc = time.time()
        n_query = min(cfg.frames_per_cycle, cfg.budget - state.queried, len(state.pool))
        if n_query <= 0:
            stop = "budget" if state.queried >= cfg.budget else "pool empty"
            break
        picked = _select(cfg, model, depth, train, state, n_query, rng)
        dices = []
        for i, frame, pmax in picked:
            ann = _annotate(cfg, train.raw(i)[1], frame.labels, pmax, frame)
            prev_h = state.human.get(i)
            if prev_h is not None:  # re-queried frame: earlier human labels stay
                ann.mask[prev_h] = state.labels[i][prev_h]
                ann.human |= prev_h
            state.labels[i], state.human[i] = ann.mask, ann.human
            state.cost += ann.cost
            d = macro_dice(frame.labels, ann.mask)
            dices.append(d)
            if d >= cfg.dice_threshold or cfg.oracle != "human":
                state.pool.discard(i)  # high-confidence (or fully labeled) frames leave the pool
        state.queried += len(picked)
        train_segmentation(model, _training_set(train, state), _train_cfg(cfg, cfg.finetune_epochs, cfg.seed + cycle))
        rec = _record(cycle, model, val, state, dices, tc, "")
        rec["picked"] = [train.frames[i].frame_id for i, _, _ in picked]  # in pick order
        records.append(rec)
        log.info("cycle %d: mIoU %.2f, %d human pixels, mean DICE %.3f", cycle, 100 * rec["miou"],
                 state.cost.pixels, rec["mean_dice"])
        # machine pseudo-labels equal the prediction where kept, so their DICE is 1 by construction:
        # DICE stopping only means something for a human oracle
        if cfg.oracle != "machine" and rec["mean_dice"] >= cfg.dice_threshold:
            stop = "dice"
            break
        if state.queried >= cfg.budget:
            stop = "budget"
            break
    records[-1]["stop_reason"] = stop
    report = {"config": _config_dict(cfg), "cycles": records, "stop_reason": stop,
              "seconds": time.time() - t0}
    imageio.atomic_write_bytes(out / "cycles.json", json.dumps(report, indent=2).encode())
    plot_curves({cfg.strategy: records}, out / "miou_vs_pixels.png")
    save_checkpoint(out / "model.pt", model, kind="unet")
    return report


def _select(cfg, model, depth, train, state, n_query, rng) -> list:
    """Score the pool and return the top `n_query` as (index, FrameEEM with regions, pmax)."""
    explained = ExplainedSegmenter(model).eval()
    pool = sorted(state.pool)
    if cfg.strategy == "random":
        pool = sorted(rng.choice(pool, size=n_query, replace=False).tolist())
    scored = []  # (score, index)
    shares = {}  # index -> predicted class shares, for a selection with a balance term
    for i, labels, ebu, cam, pmax, inv in _pool_outputs(explained, depth, train, pool,
                                                         cfg.batch_size, cfg.progress):
        shares[i] = _class_shares(labels)
        if cfg.strategy == "random":
            scored.append((0.0, i))
            continue
        f = score_frame(labels, ebu, cam, inv, cfg.eem, with_regions=False)
        scored.append((strategy_score(cfg.strategy, f, cfg.eem.q), i))
    scored.sort(key=lambda t: (-t[0], t[1]))
    if cfg.strategy == "random" or cfg.selection == SelectionSpec():
        chosen = [i for _, i in scored[:n_query]]
    else:  # the coordinator's composed selection, on the same features
        chosen = _compose(cfg, model, train, state, scored, shares, n_query)
    picked = []
    for i, labels, ebu, cam, pmax, inv in _pool_outputs(explained, depth, train, chosen,
                                                         cfg.batch_size, False):
        picked.append((i, score_frame(labels, ebu, cam, inv, cfg.eem, with_regions=True), pmax))
    return picked


def _compose(cfg: ALConfig, model: UNet, train: SegDataset, state: _State, scored: list[tuple[float, int]],
             shares: dict[int, np.ndarray], n_query: int) -> list[int]:
    """segxal.selection.select over the scored pool, with the labelled frames' embeddings (diversity)
    and their labels' class shares (balance); drive log = the frame's sequence."""
    spec = cfg.selection
    idx = [i for _, i in scored]
    labelled = sorted(state.labels)
    emb = lab_emb = None
    if spec.needs_embeddings:
        emb = _embeddings(model, train, idx, cfg.batch_size)
        lab_emb = _embeddings(model, train, labelled, cfg.batch_size) if labelled else None
    lab_hist = np.sum([_class_shares(state.labels[i]) for i in labelled], axis=0) if labelled else None
    pool = PoolFeatures(ids=[str(i) for i in idx], scores=np.array([s for s, _ in scored]), embeddings=emb,
                        class_hist=np.stack([shares[i] for i in idx]),
                        log_ids=[train.frames[i].sequence for i in idx])
    picks = select(pool, n_query, spec, labelled_embeddings=lab_emb, labelled_class_hist=lab_hist)
    return [idx[p.index] for p in picks]


def _record(cycle: int, model: UNet, val: SegDataset, state: _State, dices: list[float],
            t_start: float, stop: str) -> dict:
    rep = iou_report(evaluate_segmentation(model, val))
    labeled_px = int(sum(int((m != IGNORE).sum()) for m in state.labels.values()))
    return {
        "cycle": cycle, "miou": rep["miou"], "per_class": rep["per_class"],
        "labeled": {**state.cost.to_dict(), "frames_with_labels": len(state.labels),
                    "pixels_with_labels": labeled_px},
        "queried_this_cycle": len(dices),
        "mean_dice": float(np.mean(dices)) if dices else None,
        "pool_size": len(state.pool), "seconds": time.time() - t_start, "stop_reason": stop,
    }


def _config_dict(cfg: ALConfig) -> dict:
    d = asdict(cfg)
    d["size"] = list(cfg.size)
    d["selection"] = cfg.selection.text()
    return d


def plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    """mIoU against human-labeled pixels, one line per strategy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, recs in curves.items():
        ax.plot([r["labeled"]["pixels"] / 1e6 for r in recs], [100 * r["miou"] for r in recs],
                marker="o", label=name)
    ax.set_xlabel("human-labeled pixels (millions)")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    imageio.atomic_write_bytes(path, buf.getvalue())
