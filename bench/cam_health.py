"""CAM health: is the explanation term alive, and is it more than the model's confidence?

Per checkpoint and CAM target it prints the share of frames whose `cam` is all zero or constant
(segxal.eem.health, "dead"), the mean fraction of CAM > 0 pixels, and the CAM's correlation with EBU
and with p_max over all pixels of the validation frames (a CAM that follows p_max and opposes EBU is
the model's confidence in disguise).

Two modes:

* a model repository (`--repo DIR`, or a loop run's `--workdir`, whose repository is
  <workdir>/repo/<model>[/<model>]): every version of `--model` served by ONNX Runtime, whatever
  the architecture; the input is prepared as its config.pbtxt says (segxal.modelspec: input size,
  layout, normalisation, fixed batch) and the outputs found by role. Where a loop run's trainer kept
  a U-Net version's checkpoint (<workdir>/state/models/<model>/<v>/checkpoint.pt) it also prints
  the largest difference between the served CAM and pytorch-grad-cam's GradCAM at the bottleneck.

      python bench/cam_health.py --workdir runs/main/services --data data/synth-128x256 --frames 50
      python bench/cam_health.py --repo models/ --model segmentation --data data/synth-128x256

* `--train`: trains architectures that are not the project's U-Net (segxal.models.external, no
  pretrained weights) on the synthetic data for `--epochs` epochs (one run per architecture, one
  thread) and, after the epochs listed in `--at` (default 1, 3, 10), measures the GradCAM of every
  target of segxal.graph.traced_cam at the architecture's default layer. It uses the PyTorch
  explainer that export_traced traces into the served graph (the export's parity check and
  tests/test_traced_cam.py hold ONNX Runtime to it); the CAM is cast to float16 as served.

      python bench/cam_health.py --train --data data/synth-128x256 --train-frames 120 --json runs/cam_health.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from segxal.data.cityscapes import MEAN, STD, SegDataset, list_frames
from segxal.eem.health import cam_degenerate

# architectures teams bring (none is the project's U-Net); no weights downloaded
_SMP = {"encoder_name": "resnet18", "encoder_weights": None, "classes": 19}
_TV = {"weights": None, "weights_backbone": None, "num_classes": 19}
ARCHITECTURES = {
    "smp_deeplabv3plus": ("segmentation_models_pytorch.DeepLabV3Plus", _SMP),
    "smp_pspnet": ("segmentation_models_pytorch.PSPNet", _SMP),
    "smp_unet": ("segmentation_models_pytorch.Unet", _SMP),
    "smp_fpn": ("segmentation_models_pytorch.FPN", _SMP),
    "tv_lraspp": ("torchvision.models.segmentation.lraspp_mobilenet_v3_large", _TV),
    "tv_deeplabv3": ("torchvision.models.segmentation.deeplabv3_mobilenet_v3_large", {**_TV, "aux_loss": False}),
    "tv_fcn": ("torchvision.models.segmentation.fcn_resnet50", {**_TV, "aux_loss": False}),
    "segformer": ("transformers.SegformerForSemanticSegmentation",
                  {"num_labels": 19, "hidden_sizes": [32, 64, 160, 256], "decoder_hidden_size": 128,
                   "depths": [1, 1, 1, 1]}),
}


def health_row(labels, ebu, cam, pmax, truth=None) -> dict:
    """The health figures of one checkpoint (and target) over N frames of [N, H, W] maps."""
    c = cam.astype(np.float32).ravel()

    def corr(other: np.ndarray) -> float:  # NaN when either map is constant over all frames
        o = other.astype(np.float32).ravel()
        return float(np.corrcoef(c, o)[0, 1]) if c.std() > 0 and o.std() > 0 else float("nan")
    row = {"frames": int(cam.shape[0]), "dead_share": float(np.mean(cam_degenerate(cam))),
           "cam_positive_fraction": float((cam > 0).mean()), "corr_ebu": corr(ebu), "corr_pmax": corr(pmax)}
    if truth is not None:
        valid = truth != 255
        row["pixel_accuracy"] = float((labels[valid] == truth[valid]).mean())
    return row


def _val_frames(data: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    val = SegDataset(list_frames(data, "val", True))
    step = max(1, len(val) // n)
    raws = [val.raw(i) for i in range(0, len(val), step)][:n]
    return np.stack([r[0] for r in raws]), np.stack([r[1] for r in raws])  # uint8 [N, H, W, 3], [N, H, W]


# ---- a model repository (any architecture) ----


def _served_cam(cam_layer: str) -> tuple[str, str]:
    """The U-Net's CAM target and method from its config's cam_layer ("bottleneck (class-balanced)",
    "bottleneck (class-balanced, hirescam)"; exports before 2026-12-07 said "bottleneck": class-agnostic)."""
    inside = cam_layer.partition("(")[2].rstrip(")") or "class-agnostic"
    target, _, method = (part.strip() for part in inside.partition(","))
    return target, method or "gradcam"


def _grad_cam_diff(ckpt: Path, images: np.ndarray, served_cam: np.ndarray, spec_cam_layer: str) -> float | None:
    from pytorch_grad_cam import GradCAM, HiResCAM  # the independent reference, only where a checkpoint exists

    from segxal.graph.traced_cam import as_grad_cam_target, make_target
    from segxal.models.unet import UNet
    from segxal.train import load_model
    model = load_model(ckpt)
    if not isinstance(model, UNet) or served_cam.shape[1:] != images.shape[1:3]:
        return None
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    target, method = _served_cam(spec_cam_layer)
    reference = {"gradcam": GradCAM, "hirescam": HiResCAM}[method]
    with reference(model=model, target_layers=[model.bottleneck_layer]) as cam:  # the served target, by name
        target = as_grad_cam_target(make_target(target))
        ref = cam(input_tensor=x, targets=[target] * len(x))
    return float(np.abs(ref - served_cam.astype(np.float32)).max())


def _run_served(session, spec, images: np.ndarray) -> tuple[np.ndarray, ...]:
    """(labels, ebu, cam, pmax) [N, h, w] of one served model, one frame a call as the EEM service
    asks, the input prepared as the model's config says."""
    from segxal.resize import resize_image
    x_spec = spec.image_input
    names = [spec.output_name(r) for r in ("labels", "ebu", "cam", "pmax")]
    if names[2] is None:
        raise SystemExit("this model serves no cam (it is scored with EBU alone)")
    size = spec.input_size or (images.shape[1], images.shape[2])
    dtype = np.dtype(onnx_dtype(session))
    out = []
    for img in images:
        frame = resize_image(img, tuple(size)) if tuple(size) != img.shape[:2] else img
        out.append([o[0] for o in session.run(names, {x_spec.name: spec.preprocessing.apply(frame[None], dtype)})])
    return tuple(np.stack(a) for a in zip(*out))


def onnx_dtype(session) -> str:
    return {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(float16)": "float16"}[
        session.get_inputs()[0].type]


def _repository_table(args) -> list[dict]:
    import onnxruntime as ort

    from segxal.resize import resize_nearest
    from services.common.model_repository import ModelRepository, spec_from_config
    work = Path(args.workdir) if args.workdir else None
    if args.repo:
        root = Path(args.repo)
    else:  # `segxal up` keeps one repository per model (repo/<model>/<model>/<v>); a shared one is repo/<model>/<v>
        root = work / "repo" / args.model
        root = root if (root / args.model).is_dir() else work / "repo"
    repo = ModelRepository(root)
    spec = spec_from_config(repo.read_config(args.model))
    images, truth = _val_frames(args.data, args.frames)
    versions = sorted(int(d.name) for d in (root / args.model).iterdir() if d.name.isdigit())
    rows = []
    print(f"{args.model}: cam_layer {spec.cam_layer}")
    print(f"{'version':>7} {'dead':>6} {'cam>0':>6} {'corr(ebu)':>9} {'corr(pmax)':>10} {'vs grad-cam':>11}")
    for v in versions:
        sess = ort.InferenceSession(str(repo.model_file(args.model, v)), providers=["CPUExecutionProvider"])
        labels, ebu, cam, pmax = _run_served(sess, spec, images)
        tr = np.stack([resize_nearest(t, labels.shape[1:]) for t in truth]) if labels.shape[1:] != truth.shape[1:] \
            else truth
        row = {"version": v, **health_row(labels, ebu, cam, pmax, tr)}
        ckpt = work / "state" / "models" / args.model / str(v) / "checkpoint.pt" if work else None
        row["max_diff_vs_grad_cam"] = _grad_cam_diff(ckpt, images[:8], cam[:8], spec.cam_layer) \
            if ckpt is not None and ckpt.is_file() else None
        rows.append(row)
        diff = "-" if row["max_diff_vs_grad_cam"] is None else f"{row['max_diff_vs_grad_cam']:.1e}"
        print(f"{v:>7} {row['dead_share']:>6.2f} {row['cam_positive_fraction']:>6.2f} "
              f"{row['corr_ebu']:>+9.2f} {row['corr_pmax']:>+10.2f} {diff:>11}", flush=True)
    return rows


# ---- --train: foreign architectures, every target ----


def _gradcam_pp(a: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """GradCAM++ (Chattopadhay et al. 2018) as pytorch-grad-cam computes it: per channel the sum of
    ReLU(dT/dA) weighted by the closed-form alpha; a, grad [B, K, h, w] -> [B, h, w]."""
    g2 = grad * grad
    alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g2 * grad + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    weights = (torch.relu(grad) * alpha).sum((2, 3), keepdim=True)  # [B, K, 1, 1], >= 0
    return torch.relu((weights * a).sum(1))


# other channel weightings than the product's (segxal.eem.gradcam.CAM_METHODS), explored here only,
# a, grad [B, K, h, w] -> [B, h, w]; each equals pytorch-grad-cam's class of that name (tests/test_cam_weightings.py)
EXPLORATORY = {
    # LayerCAM (Jiang et al. 2021): only the positive gradients, per location; never negative before the
    # final ReLU where the activations are not (ReLU networks), so it dies only where no feature pushes T up
    "layercam": lambda a, grad: torch.relu((torch.relu(grad) * a).sum(1)),
    "gradcam++": _gradcam_pp,
}


def all_weightings() -> tuple[str, ...]:
    from segxal.eem.gradcam import CAM_METHODS
    return CAM_METHODS + tuple(EXPLORATORY)


def _explainer(weighting: str, model, layer: str, target, grid: str):
    """The traced explainer with the product's CAM method `weighting`, or an EXPLORATORY one."""
    from segxal.graph.traced_cam import TracedExplainer
    if weighting not in EXPLORATORY:
        return TracedExplainer(model, layer, target, MEAN, STD, grid, method=weighting).eval()

    class Weighted(TracedExplainer):
        def cam_map(self, a, grad):
            return EXPLORATORY[weighting](a, grad)
    return Weighted(model, layer, target, MEAN, STD, grid).eval()


def _explain_all(model, layer: str, images: np.ndarray, targets: list[str], grids: list[str],
                 weightings: Sequence[str] = ("gradcam",), batch: int = 10) -> dict:
    """"target" (on the input's grid) or "target@model" (uncertainty_at="model": target, EBU and
    p_max on the model's own grid), "+<weighting>" with another weighting than GradCAM -> (labels, ebu, cam, pmax)
    [N, H, W] of the PyTorch explainer (float16 maps, as served); `layer` may name several layers
    ("a+b": one multi-layer CAM)."""
    from segxal.graph.traced_cam import make_target
    out = {}
    for weighting in weightings:
        for grid in grids:
            for name in targets:
                explainer = _explainer(weighting, model, layer, make_target(name), grid)
                parts = []
                for i in range(0, len(images), batch):
                    labels, ebu, cam, pmax, _ = explainer(torch.from_numpy(images[i:i + batch]))
                    parts.append([t.detach().numpy() for t in (labels, ebu, cam, pmax)])
                key = (name if grid == "input" else f"{name}@{grid}") + ("" if weighting == "gradcam" else f"+{weighting}")
                out[key] = tuple(np.concatenate(a) for a in zip(*parts))
    return out


def _measure(arch: str, epoch: int, loss: float | None, inner, images, truth, args, t0: float) -> list[dict]:
    """Rows of one checkpoint: every layer spec (args.layers) x target (args.targets) x grid
    (args.grids); printed."""
    from segxal.graph.traced_cam import CAM_TARGETS, DEFAULT_LAYERS, expand_layers
    rows = []
    for spec in args.layers or [DEFAULT_LAYERS]:
        layer = expand_layers(inner, spec, tuple(images.shape[1:3]))
        for target, maps in _explain_all(inner, layer, images, args.targets or list(CAM_TARGETS),
                                         args.grids, args.weighting).items():
            target = target if spec == DEFAULT_LAYERS else f"{target} [{spec}]"  # the variant: layer spec and target
            row = {"architecture": arch, "layer": layer, "layer_spec": spec, "epoch": epoch, "loss": loss,
                   "target": target, "train_seconds": time.time() - t0, **health_row(*maps, truth)}
            rows.append(row)
            print(f"{arch:<18} {layer:<22} {epoch:>3} {row['pixel_accuracy']:>5.3f} {target:<21} "
                  f"{row['dead_share']:>5.2f} {row['cam_positive_fraction']:>6.2f} {row['corr_ebu']:>+7.2f} "
                  f"{row['corr_pmax']:>+8.2f}", flush=True)
    return rows


def _header() -> None:
    print(f"{'architecture':<18} {'layer':<22} {'ep':>3} {'acc':>5} {'target':<21} {'dead':>5} {'cam>0':>6} "
          f"{'c(ebu)':>7} {'c(pmax)':>8}", flush=True)


def _train_table(args) -> list[dict]:
    from segxal.models.external import ExternalModel, ExternalModelConfig
    from segxal.train import TrainConfig, train_segmentation
    torch.set_num_threads(args.threads)
    train = SegDataset(list_frames(args.data, "train", True))
    if args.train_frames and args.train_frames < len(train):  # a fixed, spread subset
        keep = np.linspace(0, len(train) - 1, args.train_frames).round().astype(int)
        train = SegDataset([train.frames[i] for i in keep])
    images, truth = _val_frames(args.data, args.frames)
    out_dir = Path(args.out)
    rows: list[dict] = []
    print(f"train {len(train)} frames of {args.data}, validation {len(images)} frames, "
          f"{args.threads} thread(s), measured after epochs {args.at}")
    _header()
    for arch in args.archs:
        import_path, kwargs = ARCHITECTURES[arch]
        torch.manual_seed(args.seed)
        model = ExternalModel(ExternalModelConfig(import_path, kwargs))
        t0 = time.time()

        def measure(epoch: int, loss: float, model=model, arch=arch, t0=t0) -> None:
            if epoch not in args.at:
                return
            model.eval()
            ckpt = out_dir / arch / f"epoch{epoch}.pt"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"config": model.cfg.to_dict(), "state_dict": model.inner.state_dict(), "loss": loss}, ckpt)
            rows.extend(_measure(arch, epoch, loss, model.inner, images, truth, args, t0))
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))
            model.train()

        train_segmentation(model, train, TrainConfig(epochs=max(args.at), batch_size=args.batch_size, lr=args.lr,
                                                     seed=args.seed, progress=False, device="cpu"),
                           on_epoch=measure)
    _summarise(rows, args.max_dead, args.max_abs_corr)
    return rows


def _checkpoint_table(args) -> list[dict]:
    """The checkpoints an earlier --train run saved (<dir>/<arch>/epoch<N>.pt), measured again: other
    targets or grids without training again."""
    from segxal.models.external import ExternalModel, ExternalModelConfig
    torch.set_num_threads(args.threads)
    images, truth = _val_frames(args.data, args.frames)
    rows: list[dict] = []
    _header()
    for arch in args.archs:
        for epoch in args.at:
            path = Path(args.checkpoints) / arch / f"epoch{epoch}.pt"
            if not path.is_file():
                continue
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            model = ExternalModel(ExternalModelConfig(**ckpt["config"]))
            model.inner.load_state_dict(ckpt["state_dict"])
            model.eval()
            rows.extend(_measure(arch, epoch, ckpt.get("loss"), model.inner, images, truth, args, time.time()))
    _summarise(rows, args.max_dead, args.max_abs_corr)
    return rows


def _meets(r: dict, max_dead: float, max_abs_corr: float) -> bool:
    return r["dead_share"] <= max_dead and abs(r["corr_ebu"]) <= max_abs_corr  # NaN (constant maps) fails


def target_summary(rows: list[dict], max_dead: float, max_abs_corr: float) -> dict[str, tuple[int, int, float, float]]:
    """target -> (checkpoints meeting both bounds, checkpoints, worst dead share, worst |corr EBU|)."""
    out = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == target]
        corr = [abs(r["corr_ebu"]) for r in mine if np.isfinite(r["corr_ebu"])]
        out[target] = (sum(_meets(r, max_dead, max_abs_corr) for r in mine), len(mine),
                       max(r["dead_share"] for r in mine), max(corr) if corr else float("nan"))
    return out


def _summarise(rows: list[dict], max_dead: float, max_abs_corr: float) -> None:
    """Which target meets dead <= max_dead and |corr(EBU)| <= max_abs_corr at every checkpoint."""
    print(f"\ntarget                checkpoints  meets dead<={max_dead:.0%} and |corr ebu|<={max_abs_corr} "
          f"  worst dead  worst |corr ebu|")
    for target, (ok, n, dead, corr) in target_summary(rows, max_dead, max_abs_corr).items():
        print(f"{target:<21} {n:>11}  {ok:>3}/{n:<3} {'ALL' if ok == n else '':<38}{dead:>10.2f}  {corr:>15.2f}")


def markdown(rows: list[dict], max_dead: float, max_abs_corr: float) -> str:
    """--train rows as Markdown: per architecture and checkpoint, each target's dead share / corr(CAM,
    EBU) / corr(CAM, p_max), **bold** where it meets both bounds; then per target the checkpoints that
    meet them, over the architectures that learned (pixel accuracy above 0.5 at the last checkpoint)."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    ok = lambda r: _meets(r, max_dead, max_abs_corr)  # noqa: E731
    several = len({r.get("layer_spec", "last") for r in rows}) > 1  # then a row per checkpoint, layers below
    out = [f"| architecture{'' if several else ' (layer)'} | epoch | pixel acc. | " + " | ".join(targets) + " |",
           "|---|---|---|" + "---|" * len(targets)]
    cells: dict = {}
    for r in rows:
        key = (r["architecture"], None if several else r["layer"], r["epoch"])
        cells.setdefault(key, {})[r["target"]] = r
    for (arch, layer, epoch), by in cells.items():
        acc = next(iter(by.values()))["pixel_accuracy"]
        txt = [(lambda c: f"**{c}**" if ok(by[t]) else c)(
            f"{by[t]['dead_share']:.2f} / {by[t]['corr_ebu']:+.2f} / {by[t]['corr_pmax']:+.2f}") if t in by else "-"
            for t in targets]
        out.append(f"| {arch}{'' if layer is None else f' ({layer})'} | {epoch} | {acc:.3f} | " + " | ".join(txt) + " |")
    if several:
        layers = {(r["architecture"], r.get("layer_spec", "last")): r["layer"] for r in rows}
        out += ["", "Layers: " + "; ".join(f"{a} {spec} = `{name}`" for (a, spec), name in layers.items())]
    last = {}
    for r in rows:
        if r["epoch"] >= last.get(r["architecture"], (0, 0))[0]:
            last[r["architecture"]] = (r["epoch"], r["pixel_accuracy"])
    learned = {a for a, (_, acc) in last.items() if acc > 0.5}
    out += ["", f"Checkpoints meeting dead <= {max_dead:.0%} and |corr EBU| <= {max_abs_corr}, over the "
            f"{len(learned)} architectures that learned ({', '.join(sorted(learned))}):", "",
            "| target | checkpoints meeting both | worst dead share | worst abs. corr(EBU) |", "|---|---|---|---|"]
    summary = target_summary([r for r in rows if r["architecture"] in learned], max_dead, max_abs_corr)
    out += [f"| {t} | {ok}/{n} | {dead:.2f} | {corr:.2f} |" for t, (ok, n, dead, corr) in summary.items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="Cityscapes-layout folder; its val split is measured")
    p.add_argument("--workdir", help="the services' workdir of a loop run (repo/, state/)")
    p.add_argument("--repo", help="any model repository (Triton layout)")
    p.add_argument("--model", default="segmentation")
    p.add_argument("--frames", type=int, default=50, help="validation frames measured")
    p.add_argument("--train", action="store_true", help="train the --archs and measure every target (see above)")
    p.add_argument("--archs", nargs="+", default=["smp_deeplabv3plus", "smp_pspnet", "smp_unet", "smp_fpn",
                                                  "tv_lraspp", "tv_deeplabv3", "segformer"],
                   choices=sorted(ARCHITECTURES))
    p.add_argument("--epochs", dest="at", type=int, nargs="+", default=[1, 3, 10],
                   help="measure after these epochs of one run as long as the largest")
    p.add_argument("--train-frames", type=int, default=0, help="train on this many train frames (0: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--targets", nargs="+", help="CAM targets measured (default: every one)")
    p.add_argument("--grids", nargs="+", default=["input"], choices=("input", "model"),
                   help="--train: the grids of the target, EBU and p_max measured (segxal.graph.traced_cam)")
    p.add_argument("--layers", nargs="+",
                   help="--train / --checkpoints: the CAM layer specs measured, per architecture (default: the "
                        "export's, segxal.graph.traced_cam.DEFAULT_LAYERS: the family's default), last (the last "
                        "stage), strideS (the last stage at output stride <= S), a layer name, or several joined "
                        "by + (one CAM)")
    p.add_argument("--weighting", nargs="+", default=["gradcam"], choices=all_weightings(),
                   help="the CAM's channel weightings measured: the product's CAM methods (gradcam, hirescam) "
                        "and explorations (layercam, gradcam++)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/cam_health", help="--train: where the checkpoints go")
    p.add_argument("--max-dead", type=float, default=0.05)
    p.add_argument("--max-abs-corr", type=float, default=0.3)
    p.add_argument("--json", default="", help="also write the table here")
    p.add_argument("--md", help="--train / --merge: write the Markdown tables here")
    p.add_argument("--merge", nargs="+", help="no run: the tables of these --json files of --train runs")
    p.add_argument("--checkpoints", help="measure the checkpoints a --train run saved in this folder (its --out)")
    args = p.parse_args(argv)
    if args.merge:
        loaded = [json.loads(Path(f).read_text()) for f in args.merge]
        rows = [r for d in loaded for r in (d["rows"] if isinstance(d, dict) else d)]
        _summarise(rows, args.max_dead, args.max_abs_corr)
        if args.md:
            Path(args.md).write_text(markdown(rows, args.max_dead, args.max_abs_corr))
        return {"rows": rows}
    if not args.data:
        p.error("--data is needed (unless --merge)")
    if args.train:
        rows = _train_table(args)
    elif args.checkpoints:
        rows = _checkpoint_table(args)
    elif args.workdir or args.repo:
        rows = _repository_table(args)
    else:
        p.error("give --train, --repo or --workdir")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.md and (args.train or args.checkpoints):
        Path(args.md).write_text(markdown(rows, args.max_dead, args.max_abs_corr))
    return {"rows": rows}


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
