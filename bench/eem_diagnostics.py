"""Cheap diagnostics of where an EEM points, before a variant spends label-efficiency benchmark time:
for each CAM target and each fusion, on trained U-Net checkpoints, over the validation frames:

    top-5 % wrong     share of the map's top 5 % pixels that the model predicts wrongly
    objects / vulnerable   share of those pixels that are object classes (pole, light, sign, person,
                      rider, car, truck, bus, train, motorcycle, bicycle) / person, rider, motorcycle,
                      bicycle in the ground truth
    frame rho         Spearman correlation of the frame score (mean of the map) with the frame's
                      error rate: does the ranking send labels where the model fails?
and per CAM target: dead frames (CAM all zero or constant), corr(CAM, EBU), corr(CAM, p_max).

The fusions are the product's maths (segxal.eem.frame.score_frame with segxal.eem.options.EEMOptions):
entropy alone, additive 0.5/0.5 (the paper's), light additive 0.9/0.1, multiplicative
EBU (0.5 + 0.5 PAE), and the gated PAE. The CAM targets are GradCAM at the U-Net's bottleneck by
plain autograd (the class-agnostic one equals the served CAM, checked on the first batch):
    class-agnostic   sum_i z_{argmax(i)}(i)          (the shipped target)
    class-balanced   sum_c mean_{i: argmax(i)=c} z_c(i)   (every predicted class weighs the same)
    objects          sum over object-class pixels of z_{argmax(i)}(i)
    ebu-gradient     sum_i EBU(i)                     (where more evidence would change the uncertainty)
Proximity comes from the ground-truth disparity here (a depth net's inverse depth in the product):
these are diagnostics of the fusion and the target, not of the depth model.

    python bench/eem_diagnostics.py --data data/synth-128x256 --epochs 1 3 10
    python bench/eem_diagnostics.py --data data/synth-128x256 --checkpoint runs/main/model.pt
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from segxal.data.cityscapes import SegDataset, list_frames
from segxal.eem.ebu import prediction_statistics
from segxal.eem.explain import ExplainedSegmenter
from segxal.eem.frame import score_frame
from segxal.eem.options import EEMOptions
from segxal.labels import CLASS_NAMES, IGNORE
from segxal.models.unet import UNet, UNetConfig
from segxal.train import TrainConfig, load_model, parse_size, train_segmentation

OBJECTS = tuple(CLASS_NAMES.index(n) for n in ("pole", "traffic light", "traffic sign", "person", "rider", "car",
                                                  "truck", "bus", "train", "motorcycle", "bicycle"))
VULNERABLE = tuple(CLASS_NAMES.index(n) for n in ("person", "rider", "motorcycle", "bicycle"))
TARGETS = ("class-agnostic", "class-balanced", "objects", "ebu-gradient")
FUSIONS = {  # name -> (EEMOptions, gate_proximity); None: EBU alone
    "entropy (EBU) alone": (None, False),
    "additive 0.5 / 0.5 (shipped)": (EEMOptions(), False),
    "additive 0.9 / 0.1": (EEMOptions(alpha=0.9, beta=0.1), False),
    "multiplicative EBU (0.5 + 0.5 PAE)": (EEMOptions(fusion="multiplicative"), False),
    "additive 0.5 / 0.5, gated PAE": (EEMOptions(), True),
}


def _target(name: str, logits: torch.Tensor) -> torch.Tensor:
    """The scalar a GradCAM differentiates, from logits [B, C, H, W] (summed over the batch: each
    frame's gradient only reaches its own activations)."""
    labels = logits.argmax(1, keepdim=True)  # [B, 1, H, W]
    picked = logits.gather(1, labels)[:, 0]  # [B, H, W]
    if name == "class-agnostic":
        return picked.sum()
    if name == "class-balanced":
        onehot = F.one_hot(labels[:, 0], logits.shape[1]).permute(0, 3, 1, 2).float()  # [B, C, H, W]
        counts = onehot.sum((2, 3), keepdim=True).clamp_min(1.0)  # [B, C, 1, 1]
        return (logits * onehot / counts).sum()
    if name == "objects":
        mask = torch.zeros_like(picked, dtype=torch.bool)
        for c in OBJECTS:
            mask |= labels[:, 0] == c
        return (picked * mask).sum()
    if name == "ebu-gradient":
        p = logits.softmax(1)
        return (-(p * p.clamp_min(1e-12).log()).sum(1) / np.log(logits.shape[1])).sum()
    raise ValueError(name)


def gradcam(model: UNet, x: torch.Tensor, target: str) -> np.ndarray:
    """GradCAM at the bottleneck for `target`, scaled as pytorch-grad-cam (ReLU, min-max, bilinear
    to the input, min-max): [B, H, W] in [0, 1]; all zero for a dead CAM."""
    acts = []
    handle = model.embedding_module("bottleneck").register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)  # [B, C, H, W]
            (grad,) = torch.autograd.grad(_target(target, logits), acts[0])
    finally:
        handle.remove()
    a = acts[0].detach()
    cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))  # [B, 1, h, w]

    def minmax(t):
        lo = t.amin((2, 3), keepdim=True)
        return (t - lo) / (t.amax((2, 3), keepdim=True) - lo + 1e-7)
    cam = minmax(F.interpolate(minmax(cam), size=x.shape[-2:], mode="bilinear", align_corners=False))
    return cam[:, 0].numpy()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@torch.no_grad()
def diagnose(model: UNet, val: SegDataset, batch: int = 8, q: float = 0.05) -> dict:
    """Every (target, fusion) row and every target's CAM health, over the frames of `val`."""
    model.eval()
    rows = {t: {f: {"wrong": [], "objects": [], "vulnerable": [], "score": []} for f in FUSIONS} for t in TARGETS}
    health = {t: {"dead": 0, "corr_ebu": [], "corr_pmax": []} for t in TARGETS}
    err_rate, checked = [], False
    for s in range(0, len(val), batch):
        items = [val[i] for i in range(s, min(s + batch, len(val)))]
        x = torch.from_numpy(np.stack([it[0] for it in items]))
        gt = np.stack([it[1] for it in items])  # [B, H, W] trainIds, IGNORE = void
        inv = np.stack([it[2] for it in items])  # disparity: larger = nearer
        logits = model(x)
        labels_t, ebu_t, pmax_t = prediction_statistics(logits)
        labels, ebu, pmax = labels_t.numpy(), ebu_t.numpy(), pmax_t.numpy()
        cams = {t: gradcam(model, x, t) for t in TARGETS}
        if not checked:  # our class-agnostic autograd CAM is the served one
            served = ExplainedSegmenter(model)(x)[2].numpy()
            assert np.abs(served - cams["class-agnostic"]).max() < 1e-3, "autograd CAM != ExplainedSegmenter's"
            checked = True
        for b in range(len(items)):
            valid = gt[b] != IGNORE
            wrong = (labels[b] != gt[b]) & valid
            err_rate.append(wrong.sum() / max(valid.sum(), 1))
            for t in TARGETS:
                cam = cams[t][b]
                health[t]["dead"] += int(cam.max() - cam.min() <= 1e-6)
                health[t]["corr_ebu"].append(_corr(cam, ebu[b]))
                health[t]["corr_pmax"].append(_corr(cam, pmax[b]))
                for f, (opts, gated) in FUSIONS.items():
                    if opts is None:
                        m = ebu[b]
                    else:
                        m = score_frame(labels[b], ebu[b], cam, inv[b], opts, with_regions=False,
                                        gate_proximity=gated).eem
                    k = max(1, int(q * m.size))
                    top = np.argpartition(m.ravel(), m.size - k)[-k:]
                    g = gt[b].ravel()[top]
                    ok = g != IGNORE
                    r = rows[t][f]
                    r["wrong"].append(wrong.ravel()[top].mean())
                    r["objects"].append(np.isin(g[ok], OBJECTS).mean() if ok.any() else 0.0)
                    r["vulnerable"].append(np.isin(g[ok], VULNERABLE).mean() if ok.any() else 0.0)
                    r["score"].append(float(m.mean()))
    out = {"frames": len(err_rate), "overall_error_rate": float(np.mean(err_rate)), "targets": {}}
    for t in TARGETS:
        h = health[t]
        out["targets"][t] = {
            "dead_share": h["dead"] / len(err_rate), "corr_ebu": float(np.nanmean(h["corr_ebu"])),
            "corr_pmax": float(np.nanmean(h["corr_pmax"])),
            "fusions": {f: {"top_wrong": float(np.mean(r["wrong"])), "objects": float(np.mean(r["objects"])),
                            "vulnerable": float(np.mean(r["vulnerable"])),
                            "frame_rho": float(spearmanr(r["score"], err_rate).statistic)}
                        for f, r in rows[t].items()}}
    return out


def _print(name: str, res: dict) -> None:
    print(f"\n### {name}: {res['frames']} val frames, pixel error rate {res['overall_error_rate']:.3f}")
    print("| CAM target | dead | corr(CAM, EBU) | corr(CAM, p_max) |")
    print("|---|---|---|---|")
    for t, r in res["targets"].items():
        print(f"| {t} | {r['dead_share']:.2f} | {r['corr_ebu']:+.2f} | {r['corr_pmax']:+.2f} |")
    print("\n| CAM target | map | top-5 % wrong | objects | vulnerable | frame rho |")
    print("|---|---|---|---|---|---|")
    for t, r in res["targets"].items():
        for f, v in r["fusions"].items():
            if f.startswith("entropy") and t != TARGETS[0]:
                continue  # EBU alone does not depend on the CAM
            print(f"| {t} | {f} | {v['top_wrong']:.2f} | {v['objects']:.2f} | {v['vulnerable']:.3f} | "
                  f"{v['frame_rho']:+.2f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="Cityscapes-layout folder with train and val splits")
    p.add_argument("--checkpoint", help="a trained U-Net (segxal train seg / the loop's model.pt); else train one")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 10],
                   help="without --checkpoint: train a U-Net and diagnose it after each of these epochs")
    p.add_argument("--size", default="128x256", help="H x W the frames are resized to")
    p.add_argument("--width", type=int, default=16, help="U-Net width of the model trained here")
    p.add_argument("--val-frames", type=int, default=50, help="validation frames diagnosed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", help="write every figure as JSON here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    size = parse_size(a.size)
    val_frames = list_frames(a.data, "val", require_labels=True)[: a.val_frames]
    val = SegDataset(val_frames, size, with_depth=True)
    results = {}
    t0 = time.time()
    if a.checkpoint:
        results[Path(a.checkpoint).name] = diagnose(load_model(a.checkpoint), val)
        _print(Path(a.checkpoint).name, results[Path(a.checkpoint).name])
    else:
        torch.manual_seed(0)
        model = UNet(UNetConfig(width=a.width))
        train = SegDataset(list_frames(a.data, "train", require_labels=True), size)
        done = 0
        for e in sorted(a.epochs):
            train_segmentation(model, train, TrainConfig(epochs=e - done, seed=e))
            done = e
            key = f"U-Net width {a.width}, epoch {e}"
            results[key] = diagnose(model, val)
            _print(key, results[key])
    print(f"\n{time.time() - t0:.0f} s")
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
