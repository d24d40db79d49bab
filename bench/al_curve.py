"""Label-efficiency benchmark: every acquisition strategy, frame and region protocols, several seeds.

Writes <out>/al.json (every cycle), <out>/al.md (tables, paired differences with random, verdict,
diagnosis), <out>/al_frame.png, al_region.png, al_schedule.png; prints the tables.
Details: bench.albench.harness (protocols, training schedule) and bench.albench.report (statistics).

    # data once (CPU size): 300 train / 75 val frames, 50 test frames for the depth net
    .venv/bin/segxal data synth --out data/synth-64x128 --height 64 --width 128 \\
        --train-sequences 60 --val-sequences 15 --test-sequences 10
    # every default arm, both protocols, 3 seeds side by side (one process each, --jobs): ~45-50 min on 2 cores
    .venv/bin/python bench/al_curve.py --data data/synth-64x128 --out bench/results
    # every arm, the extra ones too: add --arms followed by every name in --help
    # runs split by hand (other arms, other machines) merge into one report:
    .venv/bin/python bench/al_curve.py --merge runs/a/al.json runs/b/al.json --note NOTE.md --out bench/results
    # headroom (supervised ceiling, random at several schedules): bench/al_headroom.py
    # full size (GPU): 256x512, the default U-Net
    .venv/bin/python bench/al_curve.py --full --device cuda --data data/synth-256x512 --out runs/al-full
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from bench.albench.harness import (ALL_ARMS, PROTOCOLS, BenchConfig, full_size, merge_reports, print_progress,
                              run_benchmark, run_seeds_in_parallel)
from bench.albench.report import markdown, plot
from segxal.errors import SegxalError
from segxal.train import parse_size


def quick(cfg: BenchConfig) -> BenchConfig:
    """Tiny images and schedules: the whole pipeline in seconds (tests), every arm (the extra ones too)."""
    return replace(cfg, size=(32, 64), width=4, unet_depth=3, seeds=(0, 1), seed_frames=4, seed_steps=6,
                   steps=4, batch_size=4, depth_steps=4, mc_samples=2, region_min_area=4,
                   frame_budgets=(0.1, 0.3), pixel_budgets=(0.02, 0.05),
                   arms=tuple(dict.fromkeys(a.name for a in ALL_ARMS)))


def build_config(args: argparse.Namespace) -> BenchConfig:
    cfg = BenchConfig(data=args.data, out=args.out, device=args.device)
    if args.quick:
        cfg = quick(cfg)
    if args.full:
        cfg = full_size(cfg)
    overrides = {k: v for k, v in {
        "size": parse_size(args.size) if args.size else None, "width": args.width,
        "unet_depth": args.unet_depth, "steps": args.steps, "seed_steps": args.seed_steps,
        "budget_steps": tuple(args.budget_steps) if args.budget_steps else None,
        "seed_frames": args.seed_frames, "batch_size": args.batch_size,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "protocols": tuple(args.protocols) if args.protocols else None,
        "arms": tuple(args.arms) if args.arms else None, "cache_dir": args.cache_dir,
        "deadline_s": 60 * args.deadline_min if args.deadline_min else None, "threads": args.threads,
    }.items() if v is not None}
    cfg = replace(cfg, **overrides)
    if args.no_schedule_check:
        cfg.schedule_check = False
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", help="Cityscapes-layout folder with train, val and test splits")
    p.add_argument("--merge", nargs="+", metavar="AL_JSON",
                   help="no run: one report over the al.json of several runs (e.g. one per seed)")
    p.add_argument("--out", default="bench/results", help="folder for al.json, al.md and the plots")
    p.add_argument("--quick", action="store_true", help="tiny images and schedules (tests)")
    p.add_argument("--full", action="store_true", help="256x512 and the default U-Net (width 32, depth 4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--size", help="HxW (default 64x128; --full 256x512)")
    p.add_argument("--width", type=int)
    p.add_argument("--unet-depth", type=int)
    p.add_argument("--steps", type=int, help="optimiser steps at every budget point")
    p.add_argument("--budget-steps", type=int, nargs="+",
                   help="optimiser steps per budget point (one per budget), instead of --steps at every point")
    p.add_argument("--seed-steps", type=int)
    p.add_argument("--seed-frames", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS)
    p.add_argument("--arms", nargs="+", choices=sorted({a.name for a in ALL_ARMS}))
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine more threads are slower; 0 = torch's default)")
    p.add_argument("--jobs", type=int, default=0,
                   help="seeds run side by side, one process each (default 0: every seed at once; 1: one process)")
    p.add_argument("--cache-dir", help="seed models and depth net (default <out>/cache)")
    p.add_argument("--deadline-min", type=float, help="start no new arm after this many minutes")
    p.add_argument("--note", help="Markdown file put into al.md after the configuration (what changed and why)")
    p.add_argument("--no-schedule-check", action="store_true", help="skip the 2 x steps run of random")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.merge:
        return _write(merge_reports([json.loads(Path(f).read_text()) for f in args.merge]), Path(args.out),
                      _note(args.note))
    if not args.data:
        p.error("--data is required (unless --merge)")
    try:
        cfg = build_config(args)
        jobs = args.jobs or len(cfg.seeds)
        if jobs > 1 and len(cfg.seeds) > 1:
            report = run_seeds_in_parallel(cfg, jobs, on_arm=print_progress)
        else:
            report = run_benchmark(cfg, on_arm=print_progress)
    except SegxalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _write(report, Path(cfg.out), _note(args.note))


def _note(path: str | None) -> str:
    return Path(path).read_text() if path else ""


def _write(report: dict, out: Path, note: str = "") -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "al.json").write_text(json.dumps(report, indent=1))
    text = markdown(report, note=note)
    (out / "al.md").write_text(text + "\n")
    files = plot(report, out)
    print(text)
    print("wrote " + ", ".join(str(f) for f in [out / "al.json", out / "al.md", *files]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
