"""Label-efficiency benchmark: acquisition strategies through the product's selection, frame and
region (cells) protocols, paired statistics over seeds, in one invocation.

Writes <out>/al.json.gz (every cycle, the config and the commit), <out>/al.md (primary endpoints with
95 % CIs, Holm-corrected p, power; descriptive curves; vulnerable classes and cost; the schedule
check), <out>/al_frame.png and al_region.png. Details: bench/albench/harness.py (setting, protocols,
arms), bench/albench/stats.py (statistics fixed before the run), bench/albench/report.py.

    # data once: the benchmark's (train = seed set + pool, val = design, test = report) and a
    # disjoint labelled dataset for the frozen encoder and the depth net (another generator seed)
    .venv/bin/segxal data synth --out data/al-64x128 --height 64 --width 128 \\
        --train-sequences 60 --val-sequences 15 --test-sequences 20 --seed 0
    .venv/bin/segxal data synth --out data/al-pre-64x128 --height 64 --width 128 \\
        --train-sequences 60 --val-sequences 2 --test-sequences 2 --seed 1
    # the benchmark (bench/results/al.md: its wall time there), two worker processes of one torch thread
    .venv/bin/python bench/al_curve.py --data data/al-64x128 --pretrain-data data/al-pre-64x128 \\
        --out bench/results --jobs 2 --seeds $(seq 0 59) --deadline-min 55 --note bench/results/al_reading.md
    # CI: tiny images and schedules, every arm, seconds
    .venv/bin/python bench/al_curve.py --quick --data D --pretrain-data P --out /tmp/al
    # re-render al.md from a run's report (no run; earlier runs' al.json too)
    .venv/bin/python bench/al_curve.py --report bench/results/al.json.gz --note bench/results/al_reading.md \\
        --out bench/results
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from bench.albench.harness import (ALL_ARMS, PROTOCOLS, BenchConfig, full_size, load_report, print_progress,
                                   run_benchmark, write_report)
from bench.albench.report import markdown, plot
from segxal.errors import SegxalError
from segxal.train import parse_size


def quick(cfg: BenchConfig) -> BenchConfig:
    """Tiny images and schedules: the whole pipeline in seconds (tests), every arm."""
    return replace(cfg, size=(32, 64), width=4, unet_depth=3, seeds=(0, 1), exploratory_seeds=1, random_draws=2,
                   seed_frames=4, seed_steps=4, steps=3, encoder_steps=4, batch_size=4, depth_steps=4, mc_samples=2,
                   cell_px=16, cells_per_frame=2, frame_budgets=(0.1, 0.3), pixel_budgets=(0.05, 0.1))


def build_config(args: argparse.Namespace) -> BenchConfig:
    """The configuration from the command line (--quick / --full first, then each flag given)."""
    cfg = BenchConfig(data=args.data, out=args.out, pretrain_data=args.pretrain_data or "", device=args.device)
    if args.quick:
        cfg = quick(cfg)
    if args.full:
        cfg = full_size(cfg)
    overrides = {k: v for k, v in {
        "size": parse_size(args.size) if args.size else None, "width": args.width,
        "unet_depth": args.unet_depth, "steps": args.steps, "seed_steps": args.seed_steps,
        "encoder_steps": args.encoder_steps, "seed_frames": args.seed_frames, "batch_size": args.batch_size,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "exploratory_seeds": args.exploratory_seeds, "random_draws": args.random_draws,
        "protocols": tuple(args.protocols) if args.protocols else None,
        "arms": tuple(args.arms) if args.arms else None, "cache_dir": args.cache_dir,
        "deadline_s": 60 * args.deadline_min if args.deadline_min else None, "threads": args.threads,
        "cell_px": args.cell_px,
    }.items() if v is not None}
    cfg = replace(cfg, **overrides)
    if args.no_schedule_check:
        cfg.schedule_check = False
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", help="Cityscapes-layout folder with train, val and test splits")
    p.add_argument("--pretrain-data", help="a disjoint labelled dataset (train split): frozen encoder, depth net")
    p.add_argument("--report", metavar="REPORT",
                   help="no run: render al.md and the plots from this al.json.gz (or an earlier run's al.json)")
    p.add_argument("--out", default="bench/results", help="folder for al.json.gz, al.md and the plots")
    p.add_argument("--quick", action="store_true", help="tiny images and schedules (tests)")
    p.add_argument("--full", action="store_true", help="256x512, the default U-Net (width 32, depth 4), 64 px cells")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--size", help="HxW (default 64x128; --full 256x512)")
    p.add_argument("--width", type=int, help="U-Net width (default 16)")
    p.add_argument("--unet-depth", type=int, help="U-Net levels (default 3)")
    p.add_argument("--steps", type=int, help="decoder steps at every budget point")
    p.add_argument("--seed-steps", type=int, help="decoder steps of model 0 on the seed set")
    p.add_argument("--encoder-steps", type=int, help="steps of the frozen encoder's training on --pretrain-data")
    p.add_argument("--seed-frames", type=int, help="ground-truth frames before the first acquisition")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of the key arms (default 0-11)")
    p.add_argument("--exploratory-seeds", type=int,
                   help="the first this many seeds run the exploratory arms (default 3)")
    p.add_argument("--random-draws", type=int, help="random arm draws per seed, averaged (default 3)")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS)
    p.add_argument("--arms", nargs="+", choices=sorted({a.name for a in ALL_ARMS}), help="default: every arm")
    p.add_argument("--cell-px", type=int, help="region protocol: cell side in pixels (default 16)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine more threads are slower; "
                        "0 = torch's default)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes, seeds spread over them (each --threads threads): 2 on the 2-core machine")
    p.add_argument("--cache-dir", help="frozen encoder and depth net (default <out>/cache)")
    p.add_argument("--deadline-min", type=float,
                   help="start no new key-arm seed after this many minutes (the exploratory arms run on the first seeds)")
    p.add_argument("--note", help="Markdown file put into al.md after the header (the reading)")
    p.add_argument("--no-schedule-check", action="store_true", help="skip the 2 x steps run of random")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.report:
        try:
            report = load_report(args.report)
        except (OSError, ValueError) as e:
            print(f"error: cannot read {args.report}: {e}", file=sys.stderr)
            return 2
        return _write(report, Path(args.out), _note(args.note))
    if not args.data or not args.pretrain_data:
        p.error("--data and --pretrain-data are required (unless --report)")
    try:
        cfg = build_config(args)
        report = run_benchmark(cfg, on_arm=print_progress, jobs=args.jobs)
    except SegxalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _write(report, Path(cfg.out), _note(args.note))


def _note(path: str | None) -> str:
    return Path(path).read_text() if path else ""


def _write(report: dict, out: Path, note: str = "") -> int:
    out.mkdir(parents=True, exist_ok=True)
    data = write_report(out, report)
    text = markdown(report, note=note)
    (out / "al.md").write_text(text + "\n")
    files = plot(report, out)
    print(text)
    print("wrote " + ", ".join(str(f) for f in [data, out / "al.md", *files]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
