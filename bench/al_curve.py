"""Active-learning strategies side by side on the same seed set, split and budget.

For each seed: random, entropy (EBU only), PAE only, EEM (mean score), EEM (top-q score), and EEM
with the machine oracle, all starting from the same cycle-0 model and depth net. Prints mIoU at
each budget point (mean ± std over seeds), the area under the mIoU-vs-labeled-pixels curve, and the
fraction of the training split's pixels each needs to reach 95 % of the full-supervision mIoU.
A difference smaller than the spread over seeds is no difference.

    .venv/bin/python bench/al_curve.py --data data/synth-128x256 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segxal.al.loop import ALConfig, add_al_arguments, config_from_args, plot_curves, run
from segxal.data.cityscapes import SegDataset, list_frames
from segxal.metrics import iou_report
from segxal.models.unet import UNet, UNetConfig
from segxal.train import TrainConfig, evaluate_segmentation, train_segmentation

ARMS = [  # (name, strategy, oracle)
    ("random", "random", "human"),
    ("entropy", "entropy", "human"),
    ("pae", "pae", "human"),
    ("eem", "eem", "human"),
    ("eem-topq", "eem-topq", "human"),
    ("eem+machine", "eem", "machine"),
]


def full_supervision_miou(cfg: ALConfig, epochs: int) -> float:
    """mIoU of the same U-Net trained on every training label (the 95 % target)."""
    train = SegDataset(list_frames(cfg.data, "train", require_labels=True), cfg.size)
    val = SegDataset(list_frames(cfg.data, "val", require_labels=True), cfg.size)
    model = UNet(UNetConfig(width=cfg.width, depth=cfg.unet_depth))
    train_segmentation(model, train, TrainConfig(epochs=epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                                                 progress=cfg.progress))
    return iou_report(evaluate_segmentation(model, val))["miou"]


def auc(records: list[dict], total_pixels: int) -> float:
    """Area under mIoU vs fraction of pixels labeled, over the budget actually used."""
    x = np.array([r["labeled"]["pixels"] for r in records], float) / total_pixels
    y = np.array([r["miou"] for r in records])
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def pixels_to_reach(records: list[dict], target: float, total_pixels: int) -> float | None:
    for r in records:
        if r["miou"] >= target:
            return r["labeled"]["pixels"] / total_pixels
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_al_arguments(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=[a[0] for a in ARMS])
    p.add_argument("--full-epochs", type=int, default=0, help="0 = init + cycles * finetune epochs")
    args = p.parse_args()
    base = config_from_args(args)
    out = Path(args.out)
    n_train = len(list_frames(base.data, "train"))
    total_pixels = n_train * base.size[0] * base.size[1]
    full_epochs = args.full_epochs or base.init_epochs + base.cycles * base.finetune_epochs
    full = full_supervision_miou(base, full_epochs)
    print(f"full supervision ({n_train} frames, {full_epochs} epochs): mIoU {100 * full:.2f}")
    results: dict[str, list[list[dict]]] = {}
    for seed in args.seeds:
        for name, strategy, oracle in ARMS:
            if name not in args.arms:
                continue
            cfg = config_from_args(args)
            cfg.seed, cfg.strategy, cfg.oracle = seed, strategy, oracle
            cfg.out = str(out / f"{name}_s{seed}")
            cfg.cache_dir = str(out / "cache")
            results.setdefault(name, []).append(run(cfg)["cycles"])
            print(f"  done {name} seed {seed}: final mIoU {100 * results[name][-1][-1]['miou']:.2f}", flush=True)
    _print_table(results, full, total_pixels)
    plot_curves({n: runs[0] for n, runs in results.items()}, out / "al_curves.png")
    (out / "al_curve.json").write_text(json.dumps({"full_miou": full, "results": results}, indent=1))


def _print_table(results, full, total_pixels) -> None:
    n_cycles = max(len(r) for runs in results.values() for r in runs)
    head = "arm          " + " ".join(f"c{c:<11d}" for c in range(n_cycles))
    print("\nmIoU (%) per cycle, mean ± std over seeds; labeled pixels (% of split) in brackets")
    print(head + "  AUC           to-95%-of-full")
    for name, runs in results.items():
        cells = []
        for c in range(n_cycles):
            vals = [100 * r[c]["miou"] for r in runs if c < len(r)]
            px = [100 * r[c]["labeled"]["pixels"] / total_pixels for r in runs if c < len(r)]
            cells.append(f"{np.mean(vals):5.1f}±{np.std(vals):3.1f}[{np.mean(px):3.0f}]" if vals else " " * 12)
        aucs = [100 * auc(r, total_pixels) for r in runs]
        reach = [pixels_to_reach(r, 0.95 * full, total_pixels) for r in runs]
        reach_s = ",".join("never" if v is None else f"{100 * v:.0f}%" for v in reach)
        print(f"{name:12s} " + " ".join(cells) + f"  {np.mean(aucs):5.2f}±{np.std(aucs):4.2f}  {reach_s}")


if __name__ == "__main__":
    main()
