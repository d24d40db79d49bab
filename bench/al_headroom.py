"""Headroom of the label-efficiency benchmark's setting, measured on the validation split (design
only; the benchmark reports on test): model 0 (seed set) -> random frames at each budget -> the
ceiling with every pool frame labelled, at the run's steps and at 2 x steps, per seed. Writes a JSON
of every row, a Markdown table (--md) and the convergence check by the paired criterion
(--convergence-md). The three settings of bench/results/headroom.md:

    H=".venv/bin/python bench/al_headroom.py --data data/al-64x128 --pretrain-data data/al-pre-64x128"
    $H --body-labels classes --lr 0.002 --seed-frames 5 --out runs/headroom/classes16.json
    $H --body-labels categories --lr 0.002 --seed-frames 5 --out runs/headroom/cat16.json
    $H --body-labels categories --lr 0.01 --seed-frames 3 --budgets 0.01 0.04 0.16 1.0 \\
        --out runs/headroom/final.json
    .venv/bin/python bench/al_headroom.py --tables-only --merge runs/headroom/*.json \\
        --md bench/results/headroom.md --convergence-md bench/results/convergence.md
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.albench.harness import VULNERABLE, BenchConfig, evaluate, load_data, seed_model, train_model
from bench.albench.stats import paired_comparison


def measure(cfg: BenchConfig, seeds: list[int], budgets: list[float], on_row=None) -> list[dict]:
    """Rows {width, seed, budget (0 = model 0, 1 = ceiling), steps, miou, vulnerable, seconds} on val."""
    data = load_data(cfg, report_split="val")
    n = len(data.train)
    rows = []
    for seed in seeds:
        seed_idx = sorted(np.random.default_rng(seed).permutation(n)[:cfg.seed_frames].tolist())
        pool = sorted(set(range(n)) - set(seed_idx))
        t0 = time.time()
        m0 = seed_model(cfg, data, seed_idx, seed)
        rows.append({"width": cfg.width, "body": cfg.body_labels, "lr": cfg.lr, "seed_frames": cfg.seed_frames,
                     "seed": seed, "budget": 0.0, "steps": cfg.seed_steps,
                     **_metrics(evaluate(m0, data)), "seconds": time.time() - t0})
        on_row and on_row(rows[-1])
        order = np.random.default_rng([seed, 7, 0]).permutation(pool).tolist()
        for frac in budgets:
            picks = order[:round(frac * len(pool))]
            masks = {i: data.train_gt[i] for i in seed_idx + picks}
            for steps in (cfg.steps, 2 * cfg.steps):
                t0 = time.time()
                m = train_model(m0, data, masks, steps, cfg, seed=seed * 1000)
                rows.append({"width": cfg.width, "body": cfg.body_labels, "lr": cfg.lr, "seed_frames": cfg.seed_frames,
                             "seed": seed, "budget": frac, "steps": steps,
                             **_metrics(evaluate(m, data)), "seconds": time.time() - t0})
                on_row and on_row(rows[-1])
    return rows


def _metrics(e: dict) -> dict:
    return {"miou": 100 * e["miou"], "near_miou": 100 * e["near_miou"],
            "vulnerable": {c: 100 * (e["vulnerable"][c] or 0.0) for c in VULNERABLE}}


def _setting(r: dict) -> tuple:
    """A row's setting: width, what the body learned, the decoder's lr, seed frames (older rows: the defaults
    of their run, 2e-3 and 5)."""
    return r["width"], r.get("body", "classes"), r.get("lr", 2e-3), r.get("seed_frames", 5)


def _title(setting: tuple) -> str:
    width, body, lr, seed_frames = setting
    return f"width {width}, body trained on {body}, decoder lr {lr:g}, {seed_frames} seed frames"


def table(rows: list[dict]) -> list[str]:
    """Markdown: per width, mean over seeds of val mIoU at each budget and steps; vulnerable classes."""
    out = []
    for setting in sorted({_setting(r) for r in rows}):
        rs = [r for r in rows if _setting(r) == setting]
        budgets = sorted({r["budget"] for r in rs})
        steps = sorted({r["steps"] for r in rs if r["budget"] > 0})
        seeds = sorted({r["seed"] for r in rs})
        out += [f"### {_title(setting)} ({len(seeds)} seeds; val mIoU %, mean±SD over seeds)", "",
                "| budget (of pool frames) | " + " | ".join(f"{s} steps" for s in steps)
                + " | Δ 2x steps (paired) | person / rider / bicycle / motorcycle IoU at the longer schedule |",
                "|---|" + "---|" * (len(steps) + 2)]
        for b in budgets:
            cells, per = [], {}
            for s in steps if b > 0 else [None]:
                v = {r["seed"]: r for r in rs if r["budget"] == b and (b == 0 or r["steps"] == s)}
                per[s] = v
                m = [x["miou"] for x in v.values()]
                cells.append(f"{np.mean(m):.1f}±{np.std(m, ddof=1):.1f}" if len(m) > 1 else f"{m[0]:.1f}")
            if b == 0:
                cells = [cells[0]] + ["" for _ in steps[1:]]
                delta = ""
            else:
                d = [per[steps[-1]][s]["miou"] - per[steps[0]][s]["miou"] for s in per[steps[0]]]
                delta = f"{np.mean(d):+.2f}±{np.std(d, ddof=1) if len(d) > 1 else 0:.2f}"
            last = per[steps[-1] if b > 0 else None]
            vul = " / ".join(f"{np.mean([x['vulnerable'][c] for x in last.values()]):.1f}" for c in VULNERABLE)
            name = "model 0 (seed set)" if b == 0 else ("ceiling (every pool frame)" if b >= 1 else f"{100 * b:g} %")
            out.append(f"| {name} | " + " | ".join(cells) + f" | {delta} | {vul} |")
        out.append("")
    return out


def convergence(rows: list[dict]) -> list[str]:
    """Markdown: the paired criterion per setting: 2 x steps minus steps per seed (random frames, val
    mIoU), per budget and over the budgets below the ceiling, with a 95 % t interval; converged
    where the interval holds 0."""
    out = []
    for setting in sorted({_setting(r) for r in rows}):
        rs = [r for r in rows if _setting(r) == setting and r["budget"] > 0]
        steps = sorted({r["steps"] for r in rs})
        if len(steps) < 2:
            continue
        budgets = sorted({r["budget"] for r in rs})
        out += [f"### {_title(setting)}: {steps[0]} -> {steps[-1]} steps", "",
                "| budget | seeds | Δ val mIoU (2 x steps - steps) | 95 % CI | converged (CI holds 0)? |",
                "|---|---|---|---|---|"]
        curve: dict[int, list[float]] = {}
        for b in budgets + [None]:
            if b is None:  # the whole curve below the ceiling: what the benchmark's endpoint averages
                d = [float(np.mean(v)) for v in curve.values()]
                name = "whole curve (budgets < 100 %)"
            else:
                lo = {r["seed"]: r["miou"] for r in rs if r["budget"] == b and r["steps"] == steps[0]}
                hi = {r["seed"]: r["miou"] for r in rs if r["budget"] == b and r["steps"] == steps[-1]}
                d = [hi[k] - lo[k] for k in sorted(set(lo) & set(hi))]
                if b < 1:
                    for k in sorted(set(lo) & set(hi)):
                        curve.setdefault(k, []).append(hi[k] - lo[k])
                name = "ceiling" if b >= 1 else f"{100 * b:g} %"
            c = paired_comparison("2x", "1x", d, "schedule")
            ok = "yes" if math.isfinite(c.ci_low) and c.ci_low <= 0 <= c.ci_high else "no"
            ci = f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}]" if math.isfinite(c.ci_low) else "-"
            out.append(f"| {name} | {c.n} | {c.mean:+.2f} | {ci} | {ok} |")
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data")
    p.add_argument("--pretrain-data")
    p.add_argument("--out", help="JSON of every row")
    p.add_argument("--md", help="Markdown headroom table to write")
    p.add_argument("--convergence-md", help="Markdown convergence table to write (the paired criterion)")
    p.add_argument("--width", type=int, nargs="+", default=[16])
    p.add_argument("--body-labels", nargs="+", default=["categories"], choices=("classes", "categories"),
                   help="what the frozen body is trained on (each is measured)")
    p.add_argument("--steps", type=int, default=BenchConfig.steps)
    p.add_argument("--lr", type=float, default=BenchConfig.lr, help="peak learning rate of the small decoder")
    p.add_argument("--seed-frames", type=int, default=BenchConfig.seed_frames)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.02, 0.04, 0.08, 0.16, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cache-dir", default="runs/headroom/cache")
    p.add_argument("--merge", nargs="+", help="JSON rows of earlier invocations to put in the same table")
    p.add_argument("--tables-only", action="store_true", help="no training: the tables from --merge alone")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows: list[dict] = []
    if not args.tables_only and not (args.data and args.pretrain_data and args.out):
        p.error("--data, --pretrain-data and --out are required (unless --tables-only)")
    for w, body in [] if args.tables_only else [(w, b) for b in args.body_labels for w in args.width]:
        cfg = replace(BenchConfig(data=args.data, out=str(Path(args.out).parent), pretrain_data=args.pretrain_data,
                                  cache_dir=args.cache_dir),
                      width=w, steps=args.steps, seed_frames=args.seed_frames, lr=args.lr,
                      body_labels=body)
        cfg.validate()

        def show(r: dict) -> None:
            print(f"width {r['width']} {r['body']} seed {r['seed']} budget {r['budget']:.2f} steps {r['steps']}: "
                  f"val mIoU "
                  f"{r['miou']:.1f} vulnerable {[round(v, 1) for v in r['vulnerable'].values()]} "
                  f"({r['seconds']:.0f} s)", flush=True)
            rows.append(r)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=1))
        measure(cfg, args.seeds, args.budgets, on_row=show)
    if args.md or args.convergence_md:
        for extra in args.merge or []:  # rows of earlier invocations (other widths or bodies)
            rows = json.loads(Path(extra).read_text()) + rows
        Path(args.md).write_text("\n".join(table(rows)) + "\n")
    if args.convergence_md:
        Path(args.convergence_md).write_text("\n".join(convergence(rows)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
