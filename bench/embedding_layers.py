"""Which U-Net layer gives the frame embedding that separates drive logs and scenes best?

The served graph's `embedding` output (segxal.export) is UNet.embed: one layer's features, global
average pooled and L2-normalised. Diversity selection needs frames of one drive log to
sit together (near-duplicates) and frames of different scenes (weather x time of day, from each
synthetic frame's camera.json) to sit apart. This bench trains a U-Net briefly (segxal.train, the
project's training code), embeds the frames of one split with every candidate layer
(UNet.embedding_layers: the bottleneck, each decoder stage, the head input) from one forward pass,
and prints per layer, for the untrained and the trained model:

    D           embedding size
    log 1-NN    leave-one-out nearest neighbour (cosine) is a frame of the same drive log
    log sil     silhouette of the drive logs (cosine distance; -1..1, higher = tighter, apart)
    scene 1-NN  the nearest frame of another drive log has the same scene
    scene sil   silhouette of the scenes

    python bench/embedding_layers.py --data data/synth-128x256 --epochs 4 --train-frames 400
    python bench/embedding_layers.py --data data/synth-128x256 --checkpoint runs/unet.pt

Chance levels are printed with the table (1-NN: the share of other frames in the same group).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from segxal.data.cityscapes import SegDataset, list_frames, normalize_image


def _scene(frame) -> str:
    """'weather/time of day' of a synthetic frame (its camera.json), '?' when not recorded."""
    if frame.camera is None:
        return "?"
    synth = json.loads(Path(frame.camera).read_text()).get("synth", {})
    return f"{synth.get('weather', '?')}/{synth.get('time_of_day', '?')}"


def embed_all_layers(model, images: np.ndarray, batch: int = 16) -> dict[str, np.ndarray]:
    """uint8 [N, H, W, 3] -> layer -> [N, D] unit vectors: UNet.pool_embedding of every candidate
    layer's features, captured by forward hooks in one pass (the hooks UNet.embed uses)."""
    model.eval()
    layers = model.embedding_layers
    out: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.stack([normalize_image(im) for im in images[start:start + batch]]))
        captured: dict[str, torch.Tensor] = {}
        handles = [model.embedding_module(name).register_forward_hook(
            lambda m, i, o, name=name: captured.__setitem__(name, o)) for name in layers]
        try:
            with torch.inference_mode():
                model.decode(*model.encode(x))
                for name in layers:
                    out[name].append(model.pool_embedding(captured[name]).numpy())
                if start == 0:  # the same features as UNet.embed (what the export ships)
                    for name in layers:
                        np.testing.assert_allclose(out[name][0], model.embed(x, name).numpy(), atol=1e-5)
        finally:
            for h in handles:
                h.remove()
    return {name: np.concatenate(v) for name, v in out.items()}


def nn_accuracy(emb: np.ndarray, groups: np.ndarray, exclude: np.ndarray | None = None) -> float:
    """Share of frames whose nearest other frame (cosine, unit vectors) is in the same group;
    frames sharing `exclude` (e.g. the drive log) are not candidates."""
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    if exclude is not None:
        sim[exclude[:, None] == exclude[None, :]] = -np.inf
    return float(np.mean(groups[sim.argmax(1)] == groups))


def silhouette(emb: np.ndarray, groups: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score
    if len(set(groups)) < 2:
        return float("nan")
    return float(silhouette_score(emb, groups, metric="cosine"))


def chance_nn(groups: np.ndarray, exclude: np.ndarray | None = None) -> float:
    """Expected 1-NN accuracy of a random neighbour among the allowed candidates."""
    shares = []
    for i in range(len(groups)):
        allowed = np.ones(len(groups), bool)
        allowed[i] = False
        if exclude is not None:
            allowed &= exclude != exclude[i]
        shares.append(np.mean(groups[allowed] == groups[i]))
    return float(np.mean(shares))


def table(embeddings: dict[str, np.ndarray], logs: np.ndarray, scenes: np.ndarray) -> list[dict]:
    rows = []
    for name, emb in embeddings.items():
        rows.append({"layer": name, "dim": int(emb.shape[1]), "log_nn": nn_accuracy(emb, logs),
                     "log_silhouette": silhouette(emb, logs),
                     "scene_nn": nn_accuracy(emb, scenes, exclude=logs),
                     "scene_silhouette": silhouette(emb, scenes)})
    return rows


def _print(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'layer':>11} {'D':>5} {'log 1-NN':>9} {'log sil':>8} {'scene 1-NN':>11} {'scene sil':>10}")
    for r in rows:
        print(f"{r['layer']:>11} {r['dim']:>5} {r['log_nn']:>9.3f} {r['log_silhouette']:>+8.3f} "
              f"{r['scene_nn']:>11.3f} {r['scene_silhouette']:>+10.3f}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="synthetic Cityscapes-layout folder (segxal data synth)")
    p.add_argument("--split", default="val", help="frames to embed (drive logs of 5 frames)")
    p.add_argument("--checkpoint", default="", help="a trained U-Net checkpoint instead of training one")
    p.add_argument("--epochs", type=int, default=4, help="brief training on the train split")
    p.add_argument("--train-frames", type=int, default=400, help="train frames used (evenly spaced)")
    p.add_argument("--width", type=int, default=16, help="U-Net width (the loop's seed model: 16)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="", help="write the tables here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from segxal.metrics import iou_report
    from segxal.models.unet import EMBEDDING_LAYER, UNet, UNetConfig
    from segxal.train import TrainConfig, evaluate_segmentation, load_model, train_segmentation
    frames = list_frames(args.data, args.split, require_labels=True)
    logs = np.array([f.sequence for f in frames])
    scenes = np.array([_scene(f) for f in frames], dtype=object)
    images = np.stack([SegDataset(frames, with_labels=False).raw(i)[0] for i in range(len(frames))])
    print(f"{len(frames)} {args.split} frames, {len(set(logs))} drive logs, scenes {dict(Counter(map(str, scenes)))}")
    print(f"chance: log 1-NN {chance_nn(logs):.3f}, scene 1-NN {chance_nn(scenes, logs):.3f}")
    result: dict = {"frames": len(frames), "logs": len(set(logs)), "shipped": EMBEDDING_LAYER,
                    "chance": {"log_nn": chance_nn(logs), "scene_nn": chance_nn(scenes, logs)}}
    if args.checkpoint:
        model = load_model(args.checkpoint)
    else:
        torch.manual_seed(args.seed)
        model = UNet(UNetConfig(width=args.width, depth=args.depth))
        result["untrained"] = table(embed_all_layers(model, images), logs, scenes)
        _print("untrained (random weights)", result["untrained"])
        train = list_frames(args.data, "train", require_labels=True)
        step = max(1, len(train) // args.train_frames)
        t0 = time.time()
        train_segmentation(model, SegDataset(train[::step][:args.train_frames]),
                           TrainConfig(epochs=args.epochs, seed=args.seed, progress=False, device="cpu"))
        result["train_s"] = time.time() - t0
    model.eval()
    result["val_miou"] = float(iou_report(evaluate_segmentation(model, SegDataset(frames)))["miou"])
    result["trained"] = table(embed_all_layers(model, images), logs, scenes)
    _print(f"trained ({args.checkpoint or f'{args.epochs} epochs on {args.train_frames} frames'}; "
           f"{args.split} mIoU {result['val_miou']:.3f})", result["trained"])
    best = max(result["trained"], key=lambda r: (r["log_nn"] + r["scene_nn"], r["log_silhouette"]))
    result["best"] = best["layer"]
    print(f"\nbest (log 1-NN + scene 1-NN, then log silhouette): {best['layer']}; shipped: {EMBEDDING_LAYER}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
