"""Headroom of the label-efficiency benchmark: does labeled data matter under a schedule, and is the
schedule converged? Random frames at a few budgets and step counts, plus the supervised ceiling
(every pool frame), each trained from the seed model (bench.albench.harness.train_from) or from scratch.

    nice -n 19 .venv/bin/python bench/al_headroom.py --data data/synth-64x128 --width 8 \\
        --steps 160 320 640 --budgets 0.05 0.4 1.0 --seeds 0 1 2 --out runs/headroom/w8.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.albench.harness import BenchConfig, _load_data, evaluate, seed_model, train_from
from segxal.models.unet import UNet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="JSON of every (seed, budget, steps, init) result")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--seed-steps", type=int, default=200)
    p.add_argument("--steps", type=int, nargs="+", default=[160, 320])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.4, 1.0], help="fractions of the pool")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--init", choices=("seed", "scratch"), default="seed")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--cache-dir", default="runs/headroom/cache")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = BenchConfig(data=args.data, out=str(Path(args.out).parent), width=args.width, lr=args.lr,
                      seed_steps=args.seed_steps, cache_dir=args.cache_dir)
    data = _load_data(cfg)
    rows = []
    for seed in args.seeds:
        n = len(data.train)
        seed_idx = sorted(np.random.default_rng(seed).permutation(n)[:cfg.seed_frames].tolist())
        pool = sorted(set(range(n)) - set(seed_idx))
        model0 = seed_model(cfg, data, seed_idx, seed)
        e0 = evaluate(model0, data)
        rows.append({"seed": seed, "budget": 0.0, "steps": 0, "init": "seed", "miou": e0["miou"],
                     "near_miou": e0["near_miou"]})
        print(f"seed {seed}: seed model mIoU {100 * e0['miou']:.1f}", flush=True)
        order = np.random.default_rng([seed, 7]).permutation(pool).tolist()
        for frac in args.budgets:
            picks = order[:round(frac * len(pool))]
            for steps in args.steps:
                t0 = time.time()
                torch.manual_seed(seed)
                init = model0 if args.init == "seed" else UNet(model0.cfg)
                model = train_from(init, data, {i: None for i in seed_idx + picks}, steps, cfg, seed=seed * 1000)
                e = evaluate(model, data)
                rows.append({"seed": seed, "budget": frac, "steps": steps, "init": args.init, "width": args.width,
                             "miou": e["miou"], "near_miou": e["near_miou"], "seconds": time.time() - t0})
                print(f"seed {seed} budget {frac:.2f} steps {steps:4d} {args.init}: mIoU {100 * e['miou']:.1f} "
                      f"near {100 * e['near_miou']:.1f} ({time.time() - t0:.0f} s)", flush=True)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
