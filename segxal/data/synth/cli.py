"""`segxal data synth`: the command line of the generator."""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

from segxal.errors import InvalidInput
from segxal.data.synth.config import SynthConfig, TIMES_OF_DAY, WEATHERS
from segxal.data.synth.dataset import generate


# ------------------------------------------------------------------------------------------- CLI
def _parse_weights(text: str, allowed: tuple, what: str) -> dict[str, float]:
    """'clear=1,fog=0.5' -> {'clear': 1.0, 'fog': 0.5}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise InvalidInput(f"--{what}: expected name=weight items, got {item!r}") from None
        if name.strip() not in allowed:
            raise InvalidInput(f"--{what}: unknown {name.strip()!r}; expected some of {list(allowed)}")
    if not out:
        raise InvalidInput(f"--{what}: no weights given")
    return out


def _format_weights(weights: dict[str, float]) -> str:
    return ",".join(f"{name}={value:g}" for name, value in weights.items())


def _cmd_synth(args: argparse.Namespace) -> int:
    """`segxal data synth`: build the config from the flags, generate, print the folder."""
    cfg = SynthConfig(
        height=args.height, width=args.width, train_sequences=args.train_sequences,
        val_sequences=args.val_sequences, test_sequences=args.test_sequences,
        frames_per_sequence=args.frames_per_sequence, seed=args.seed, frame_interval_s=args.frame_interval,
        difficulty=args.difficulty, traffic_density=args.traffic_density,
        weather_weights=_parse_weights(args.weather, WEATHERS, "weather"),
        time_weights=_parse_weights(args.time_of_day, TIMES_OF_DAY, "time-of-day"),
        sensor_noise=args.sensor_noise, blur_sigma=args.blur_sigma, jpeg_quality=args.jpeg_quality)
    # SIGTERM (a CI timeout, `kill`) should clean up like Ctrl-C: raise, so that generate() removes
    # its temporary folder
    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        out = generate(cfg, args.out, overwrite=args.overwrite, workers=args.workers)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(out)
    return 0


def register_cli(subparsers) -> None:
    """Add `segxal data synth`."""
    data = subparsers.add_parser("data", help="datasets", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    d = SynthConfig()
    p = data_sub.add_parser(
        "synth", help="generate a synthetic driving-scene dataset (Cityscapes layout)",
        description="Generate procedural driving scenes with labels, disparity and camera files in the "
                    "Cityscapes layout (leftImg8bit/, gtFine/, disparity/, camera/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="destination folder (absent or empty)")
    p.add_argument("--height", type=int, default=d.height, help="image height (px)")
    p.add_argument("--width", type=int, default=d.width, help="image width (px)")
    p.add_argument("--train-sequences", type=int, default=d.train_sequences, help="drive logs in train")
    p.add_argument("--val-sequences", type=int, default=d.val_sequences, help="drive logs in val")
    p.add_argument("--test-sequences", type=int, default=d.test_sequences, help="drive logs in test")
    p.add_argument("--frames-per-sequence", type=int, default=d.frames_per_sequence, help="frames per drive log")
    p.add_argument("--frame-interval", type=float, default=d.frame_interval_s, help="seconds between frames")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same bytes")
    p.add_argument("--difficulty", type=float, default=d.difficulty,
                   help="0 = clean renders, 1 = default realism, 2 = harsh camera")
    p.add_argument("--traffic-density", type=float, default=d.traffic_density, help="scales road users")
    p.add_argument("--weather", default=_format_weights(d.weather_weights),
                   help=f"relative weights of {', '.join(WEATHERS)} per sequence")
    p.add_argument("--time-of-day", default=_format_weights(d.time_weights),
                   help=f"relative weights of {', '.join(TIMES_OF_DAY)} per sequence")
    p.add_argument("--sensor-noise", type=float, default=d.sensor_noise, help="read noise std at difficulty 1")
    p.add_argument("--blur-sigma", type=float, default=d.blur_sigma, help="optical blur (px at 512 wide)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="0 = no JPEG artefacts")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (same output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset at --out")
    p.set_defaults(func=_cmd_synth)
