"""Held-out mIoU per published version and time per fine-tuning job, through the real trainer
service (in-process gRPC server + client), as the main loop drives it:

    cycle 0: the seed set only -> version 1
    cycle k: region-level annotations of the next pool frames (ground truth inside a box, 255
             elsewhere) -> fine-tune from the current version -> gates -> version k + 1

    python bench/trainer_cycles.py --out runs/bench-trainer [--size 128x256 --width 8 ...]

Prints one row per job and writes <out>/trainer_cycles.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from segxal import imageio
from segxal.data.cityscapes import list_frames, load_train_ids
from segxal.data.synth import SynthConfig, generate
from segxal.export import ExportConfig
from segxal.labels import IGNORE
from segxal.models.unet import UNetConfig
from segxal.storage import local_uri
from segxal.train import parse_size
from services.common.server import ServerConfig
from services.trainer.api import AnnotationRef, JobRequest, TrainingOptions
from services.trainer.client import TrainerClient
from services.trainer.config import TrainerConfig
from services.trainer.server import TrainerServer


def _region_annotations(frames, out: Path) -> list[AnnotationRef]:
    refs = []
    for frame in frames:
        gt = load_train_ids(frame)  # [H, W]
        h, w = gt.shape
        mask = np.full_like(gt, IGNORE)
        mask[h // 3:, w // 4: 3 * w // 4] = gt[h // 3:, w // 4: 3 * w // 4]
        path = out / f"{frame.frame_id}.png"
        imageio.write_png(path, mask)
        refs.append(AnnotationRef(frame_uri=local_uri(frame.image), mask_uri=local_uri(path), region_level=True))
    return refs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="128x256")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--unet-depth", type=int, default=3)
    p.add_argument("--sequences", type=int, default=12, help="training sequences of 4 frames")
    p.add_argument("--seed-frames", type=int, default=16)
    p.add_argument("--per-cycle", type=int, default=8)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--first-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--torch-threads", type=int, default=2)
    args = p.parse_args()
    out = Path(args.out)
    size = parse_size(args.size)
    data = out / "data"
    if not (data / "leftImg8bit").is_dir():
        generate(SynthConfig(height=size[0], width=size[1], train_sequences=args.sequences, val_sequences=3,
                             test_sequences=1, frames_per_sequence=4, seed=0), data)
    for d in ("repo", "annotations"):
        (out / d).mkdir(parents=True, exist_ok=True)
    cfg = TrainerConfig(repository=str(out / "repo"), state_dir=str(out / "state"), data=str(data),
                        storage_roots=[str(data), str(out / "annotations")], seed_data=str(data),
                        seed_frames=args.seed_frames, size=size,
                        unet=UNetConfig(width=args.width, depth=args.unet_depth), epochs=args.epochs,
                        learning_rate=args.lr, torch_threads=args.torch_threads, export=ExportConfig(trace_hw=size),
                        server=ServerConfig(address="127.0.0.1:0"))
    pool = list_frames(data, "train", require_labels=True)[args.seed_frames:]
    rows = []
    server = TrainerServer(cfg)
    server.start()
    try:
        with TrainerClient(server.target, timeout_s=600) as client:
            print(f"{'cycle':>5} {'anns':>4} {'frames':>6} {'base':>4} {'base mIoU':>9} {'mIoU':>6} "
                  f"{'version':>7} {'job s':>6} {'train s':>7}  refused")
            for cycle in range(args.cycles + 1):
                anns = _region_annotations(pool[(cycle - 1) * args.per_cycle: cycle * args.per_cycle],
                                           out / "annotations") if cycle else []
                done = [a for a in rows for a in a.get("annotations", [])]
                t0 = time.monotonic()
                job = client.wait(client.start_job(JobRequest(
                    cycle_id=f"c{cycle}", annotations=done + anns, publish=True,
                    options=TrainingOptions(epochs=args.first_epochs if cycle == 0 else 0))).job_id)
                wall = time.monotonic() - t0
                r = job.report
                row = {"cycle": cycle, "annotations_total": job.spec.annotation_count,
                       "train_frames": job.train_frame_count, "base_version": job.base_version,
                       "base_miou": r.base.miou if r.base else None,
                       "miou": r.candidate.miou if r.candidate else None, "published_version": r.published_version,
                       "refused": r.publish_refused, "job_seconds": r.job_seconds, "train_seconds": r.train_seconds,
                       "wall_seconds": wall, "epochs": job.spec.epochs, "device": r.device, "error": job.error}
                print(f"{cycle:>5} {row['annotations_total']:>4} {row['train_frames']:>6} {job.base_version:>4} "
                      f"{(row['base_miou'] or 0) * 100:>9.2f} {(row['miou'] or 0) * 100:>6.2f} "
                      f"{r.published_version:>7} {r.job_seconds:>6.1f} {r.train_seconds:>7.1f}  {r.publish_refused[:60]}")
                rows.append({**row, "annotations": anns})
    finally:
        server.stop()
    report = {"args": vars(args), "cycles": [{k: v for k, v in r.items() if k != "annotations"} for r in rows]}
    (out / "trainer_cycles.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
