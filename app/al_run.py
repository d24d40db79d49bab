"""`segxal al run` and the flags both loops share (`segxal loop` adds its own, app/loop.py): the one
place that turns flags and the --config TOML file into an ALConfig."""
from __future__ import annotations

import argparse
from pathlib import Path

from segxal.al.loop import ORACLES, ALConfig, run
from segxal.al.strategies import LOOP_STRATEGIES as STRATEGIES
from segxal.config_file import add_config_argument
from segxal.eem.options import add_eem_arguments, eem_options_from_args
from segxal.errors import InvalidInput
from segxal.selection import SelectionSpec
from segxal.train import parse_size


def add_al_arguments(p: argparse.ArgumentParser, oracles: tuple[str, ...] = ORACLES) -> None:
    d = ALConfig(data="", out="")
    add_config_argument(p)
    # --data and --out are required, from a flag or the --config file (checked in config_from_args)
    p.add_argument("--data", help="Cityscapes-layout folder with train and val splits (required)")
    p.add_argument("--out", help="folder for cycles.json, the plot and the model (required)")
    p.add_argument("--size", default=f"{d.size[0]}x{d.size[1]}", help="training and scoring size HxW")
    p.add_argument("--strategy", default=d.strategy, choices=STRATEGIES, help="how the pool is ranked")
    p.add_argument("--oracle", default=d.oracle, choices=oracles,
                   help="who labels: human (regions fixed by a simulated person), human-frame (whole frames), machine "
                        "(pseudo-labels)")
    p.add_argument("--cycles", type=int, default=d.cycles, help="most query-train cycles after the seed set")
    p.add_argument("--budget", type=int, default=d.budget, help="frames queried in total after the seed set")
    p.add_argument("--per-cycle", type=int, default=d.per_cycle, help="frames queried per cycle (0: budget / cycles)")
    p.add_argument("--seed-frames", type=int, default=d.seed_frames,
                   help="fully labeled frames the first model trains on")
    p.add_argument("--width", type=int, default=d.width, help="U-Net channels of the first level")
    p.add_argument("--init-epochs", type=int, default=d.init_epochs, help="epochs of the seed model")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs, help="epochs of each cycle's fine-tuning")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="frames per optimiser step")
    add_eem_arguments(p, defaults=d.eem)
    p.add_argument("--selection", default=d.selection.text(),
                   help="how frames are picked from the scores: comma-separated name=value of score, diversity, "
                        "balance (strengths), log_cap, min_distance, min_score, shortlist (segxal/selection/spec.py); "
                        f"default {d.selection.text()!r}")
    p.add_argument("--tau", type=float, default=d.tau, help="machine oracle: keep predicted pixels with p_max >= tau")
    p.add_argument("--outside", default=d.outside, choices=("prediction", "ignore"),
                   help="human oracle: labels outside the fixed regions (the prediction, or none)")
    p.add_argument("--dice-threshold", type=float, default=d.dice_threshold,
                   help="stop when a cycle's mean DICE(prediction, label) reaches it; frames at or above it leave the "
                        "pool")
    p.add_argument("--depth-source", default=d.depth_source, choices=("model", "gt"),
                   help="proximity from the monocular depth net (model) or the ground-truth disparity (gt)")
    p.add_argument("--depth-checkpoint", help="a trained depth net (.pt) instead of training one")
    p.add_argument("--depth-epochs", type=int, default=d.depth_epochs,
                   help="epochs of the depth net when it is trained")
    p.add_argument("--cache-dir",
                   help="shares the depth net and seed model between runs, keyed by data and settings (default: --out)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the seed set, weights and random picks")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args, oracles: tuple[str, ...] = ORACLES) -> ALConfig:
    """The loop's config from flags and the --config file, validated once here (the CLI's entry
    check: a bad flag fails before anything is written).

    Raises:
        InvalidInput: a missing --data / --out or any value ALConfig.validate refuses.
    """
    for name in ("data", "out"):
        if not getattr(args, name):
            raise InvalidInput(f"--{name} is required (a flag, or `{name} = ...` in the --config file)")
    return ALConfig(
        data=args.data, out=args.out, size=parse_size(args.size), strategy=args.strategy,
        oracle=args.oracle, cycles=args.cycles, budget=args.budget, per_cycle=args.per_cycle,
        seed_frames=args.seed_frames, width=args.width, init_epochs=args.init_epochs,
        finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, tau=args.tau, outside=args.outside,
        dice_threshold=args.dice_threshold,
        eem=eem_options_from_args(args, validate=False), selection=SelectionSpec.parse(args.selection),
        depth_source=args.depth_source, depth_checkpoint=args.depth_checkpoint,
        depth_epochs=args.depth_epochs, cache_dir=args.cache_dir, seed=args.seed,
        progress=not args.no_progress).validate(oracles)


def _cmd_run(args) -> int:
    report = run(config_from_args(args))
    print(f"{'cycle':>5} {'mIoU':>6} {'frames':>6} {'regions':>7} {'pixels':>9} {'DICE':>6}")
    for r in report["cycles"]:
        lab = r["labeled"]
        dice = "-" if r["mean_dice"] is None else f"{r['mean_dice']:.3f}"
        print(f"{r['cycle']:>5} {100 * r['miou']:6.2f} {lab['frames']:>6} {lab['regions']:>7} "
              f"{lab['pixels']:>9} {dice:>6}")
    print(f"stopped: {report['stop_reason']}; {report['seconds']:.0f} s; "
          f"wrote {Path(args.out) / 'cycles.json'} and miou_vs_pixels.png")
    return 0


def register_cli(sub) -> None:
    al = sub.add_parser("al", help="active learning").add_subparsers(dest="al_cmd", required=True)
    p = al.add_parser("run", help="run the in-process active-learning loop")
    add_al_arguments(p)
    p.set_defaults(func=_cmd_run)
