"""CAM health of every published segmentation version: is the explanation term alive?

For each version under <workdir>/repo/<model>[/<model>]/<v>/model.onnx (what the inference servers serve) it
runs the graph with ONNX Runtime on validation frames and prints the share of frames whose `cam`
is all zero or constant (segxal.eem.health), the mean fraction of CAM > 0 pixels, the CAM's
correlation with EBU and p_max, and, where the trainer kept the version's checkpoint
(<workdir>/state/models/<model>/<v>/checkpoint.pt), the largest difference between the served CAM
and pytorch-grad-cam's GradCAM on the same checkpoint and target layer (the bottleneck).

    python bench/cam_health.py --workdir runs/main/services --data data/synth-128x256 --frames 50
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from segxal.data.cityscapes import MEAN, STD, SegDataset, list_frames
from segxal.eem.health import cam_degenerate
from segxal.train import load_model


class _AllPredictedClassesTarget:
    """The shipped class-agnostic target for pytorch-grad-cam: sum over pixels of the predicted logit."""

    def __init__(self, labels: np.ndarray):
        self.mask = torch.from_numpy(labels)

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:  # [C, H, W]
        return model_output.gather(0, self.mask[None].long())[0].sum()


def _grad_cam_diff(ckpt: Path, images: np.ndarray, served_cam: np.ndarray, labels: np.ndarray) -> float:
    from pytorch_grad_cam import GradCAM  # the independent reference, only where a checkpoint exists
    model = load_model(ckpt)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with GradCAM(model=model, target_layers=[model.bottleneck_layer]) as cam:
        ref = cam(input_tensor=x, targets=[_AllPredictedClassesTarget(lab) for lab in labels])
    return float(np.abs(ref - served_cam.astype(np.float32)).max())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the services' workdir of a loop run (repo/, state/)")
    p.add_argument("--data", required=True, help="Cityscapes-layout folder; its val split is used")
    p.add_argument("--model", default="segmentation")
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--json", default="", help="also write the table here")
    args = p.parse_args(argv)
    work = Path(args.workdir)
    val = SegDataset(list_frames(args.data, "val", True))
    step = max(1, len(val) // args.frames)
    images = np.stack([val.raw(i)[0] for i in range(0, len(val), step)][:args.frames])  # uint8 [N, H, W, 3]
    # `segxal up` keeps one repository per model (repo/<model>/<model>/<v>); a shared one is repo/<model>/<v>
    model_dir = work / "repo" / args.model / args.model
    model_dir = model_dir if model_dir.is_dir() else work / "repo" / args.model
    versions = sorted(int(d.name) for d in model_dir.iterdir() if d.name.isdigit())
    rows = []
    print(f"{'version':>7} {'degenerate':>10} {'cam>0':>6} {'corr(ebu)':>9} {'corr(pmax)':>10} {'vs grad-cam':>11}")
    for v in versions:
        sess = ort.InferenceSession(str(model_dir / str(v) / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
        labels, ebu, cam, pmax = [], [], [], []
        for img in images:  # one frame per call, as the EEM service asks
            out = sess.run(["labels", "ebu", "cam", "pmax"], {"image": img[None]})
            for acc, o in zip((labels, ebu, cam, pmax), out):
                acc.append(o[0])
        labels, ebu, cam, pmax = (np.stack(a) for a in (labels, ebu, cam, pmax))
        c = cam.astype(np.float32).ravel()
        row = {"version": v, "frames": len(images),
               "degenerate_share": float(np.mean(cam_degenerate(cam))),
               "cam_positive_fraction": float((cam > 0).mean()),
               "corr_ebu": float(np.corrcoef(c, ebu.astype(np.float32).ravel())[0, 1]),
               "corr_pmax": float(np.corrcoef(c, pmax.astype(np.float32).ravel())[0, 1])}
        ckpt = work / "state" / "models" / args.model / str(v) / "checkpoint.pt"
        row["max_diff_vs_grad_cam"] = _grad_cam_diff(ckpt, images[:8], cam[:8], labels[:8]) if ckpt.is_file() else None
        rows.append(row)
        diff = "-" if row["max_diff_vs_grad_cam"] is None else f"{row['max_diff_vs_grad_cam']:.1e}"
        print(f"{v:>7} {row['degenerate_share']:>10.2f} {row['cam_positive_fraction']:>6.2f} "
              f"{row['corr_ebu']:>+9.2f} {row['corr_pmax']:>+10.2f} {diff:>11}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return {"versions": rows}


if __name__ == "__main__":
    main()
