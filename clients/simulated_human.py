"""Simulated human client, for experiments (docs/design.md, "Oracle modes"): a labeler who copies the
ground truth inside the regions a task asks to fix (or the whole frame), takes its time, and makes
mistakes at a set rate. It counts what the work cost in frames, regions and pixels.

    python -m clients.simulated_human --coordinator host:port --pool NAME --dataset data/synth \
        [--scope regions|frame] [--delay-s 2] [--delay-per-region-s 0.5] \
        [--wrong-label-rate 0.05] [--skip-region-rate 0.1] [--seed 0] [--max-tasks N] [--follow]

Ground truth comes from a Cityscapes-layout folder (segxal.data.cityscapes), found by the frame's
Cityscapes id (`<city>_<seq>_<frame>`, the name of its *_leftImg8bit.png) in any split. Outside the
fixed pixels the annotation says "not annotated" (255) by default, so the coordinator's pixel count
is what the simulated person decided; `--outside prediction` fills in the task's stored prediction
instead, as the in-process loop does (segxal.al.oracles.simulated_human).

Mistakes: `--wrong-label-rate r` gives round(r * n) of the n labeled pixels it touched another
class, uniform over the pool's other classes (the coordinator's class list: 18 others for
Cityscapes); `--skip-region-rate p` leaves each region undone with
probability p (a task whose regions are all skipped is released). Waiting: `--delay-s` per task
plus `--delay-per-region-s` per region fixed; leases are heartbeated meanwhile.
Every flag has an environment variable SEGXAL_SIMULATED_HUMAN_<FLAG>; flags win.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from clients.labeling import (Answer, Decline, LabelingConfig, LabelingSession, Lease, add_labeling_args,
                              add_work_args, labeling_config_from_args, region_masks, work)
from segxal import imageio
from segxal.al.oracles import simulated_human
from segxal.data.cityscapes import IMAGE_SUFFIX, Frame, list_frames, load_train_ids
from segxal.errors import InvalidInput, NotFound, SegxalError
from segxal.labels import IGNORE

ENV_PREFIX = "SEGXAL_SIMULATED_HUMAN_"
SCOPES = ("regions", "frame")
OUTSIDE = ("ignore", "prediction")


@dataclass
class SimulatedHumanConfig:
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    dataset: str = ""  # Cityscapes-layout root holding gtFine/*_labelIds.png
    splits: tuple[str, ...] = ()  # splits to look frames up in; empty: every split in the dataset
    scope: str = "regions"  # "regions": fix the task's regions (whole frame when it has none); "frame"
    outside: str = "ignore"  # outside the fixed pixels: "ignore" (255) or the task's "prediction"
    delay_s: float = 0.0  # seconds per task
    delay_per_region_s: float = 0.0  # extra seconds per region fixed
    wrong_label_rate: float = 0.0  # fraction of labeled touched pixels given another class
    skip_region_rate: float = 0.0  # probability that a region is left undone
    seed: int = 0

    def validate(self) -> "SimulatedHumanConfig":
        if self.scope not in SCOPES:
            raise InvalidInput(f"simulated human: scope must be one of {SCOPES}, got {self.scope!r}")
        if self.outside not in OUTSIDE:
            raise InvalidInput(f"simulated human: outside must be one of {OUTSIDE}, got {self.outside!r}")
        for name in ("wrong_label_rate", "skip_region_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInput(f"simulated human: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.delay_s < 0 or self.delay_per_region_s < 0:
            raise InvalidInput("simulated human: delays must be >= 0")
        if not self.dataset:
            raise InvalidInput("simulated human: name the ground-truth dataset (--dataset)")
        return self


def cityscapes_id(frame_uri: str) -> str:
    """'<city>_<seq>_<frame>' from a frame URI ending in _leftImg8bit.png (else the file's stem)."""
    name = PurePosixPath(frame_uri.replace("\\", "/")).name
    return name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else PurePosixPath(name).stem


class GroundTruth:
    """Ground-truth trainIds of a Cityscapes-layout folder, by Cityscapes frame id.

    Raises:
        NotFound / InvalidInput: the folder is missing or holds no split with images.
    """

    def __init__(self, root: str, splits: tuple[str, ...] = ()):
        base = Path(root) / "leftImg8bit"
        if not splits:
            if not base.is_dir():
                raise NotFound(f"{base}: missing; expected the Cityscapes layout leftImg8bit/<split>/<city>/")
            splits = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
        self._frames: dict[str, Frame] = {}
        for split in splits:
            for frame in list_frames(root, split):
                self._frames.setdefault(frame.frame_id, frame)
        self.root = root

    def train_ids(self, frame_id: str, shape: tuple[int, int]) -> np.ndarray:
        """trainIds uint8 [H, W] (255 = ignore) of the frame.

        Raises:
            NotFound: the dataset has no such frame, or no label file for it.
            InvalidInput: the label's size is not `shape`.
        """
        frame = self._frames.get(frame_id)
        if frame is None:
            raise NotFound(f"no frame {frame_id!r} in the ground-truth dataset {self.root}")
        return load_train_ids(frame, shape)


def mislabel(labels: np.ndarray, touched: np.ndarray, rate: float, rng: np.random.Generator,
             num_classes: int) -> np.ndarray:
    """Give round(rate * n) of the n labeled touched pixels another class, uniform over the other
    classes of 0..num_classes-1 (the pool's classes)."""
    candidates = np.flatnonzero(touched.ravel() & (labels.ravel() < num_classes))  # [n]
    k = int(round(rate * candidates.size))
    if k == 0:
        return labels
    out = labels.copy().ravel()
    picked = rng.choice(candidates, size=k, replace=False)  # [k]
    out[picked] = (out[picked] + rng.integers(1, num_classes, size=k)) % num_classes  # never the true class
    return out.reshape(labels.shape)


class SimulatedHuman:
    """The oracle `clients.labeling.work` calls for each leased task.

    Args:
        cfg: scope, mistakes, delays.
        truth: the ground truth.
        stop: set it to cut a delay short (the task is then released).
    """

    def __init__(self, cfg: SimulatedHumanConfig, truth: GroundTruth, stop: threading.Event | None = None):
        self.cfg = cfg.validate()
        self.truth = truth
        self.rng = np.random.default_rng(cfg.seed)
        self.stop = stop or threading.Event()

    def __call__(self, lease: Lease) -> Answer | Decline:
        task = lease.task
        shape = (task.height, task.width)
        gt = self.truth.train_ids(cityscapes_id(task.frame_uri), shape)  # [H, W]
        regions = self.cfg.scope == "regions" and len(task.regions) > 0
        masks: list[np.ndarray] | None = None
        region_ids: tuple[int, ...] = ()
        if regions:
            kept = [(r.region_id, m) for r, m in zip(task.regions, region_masks(task))
                    if self.rng.random() >= self.cfg.skip_region_rate]
            if not kept:
                return Decline(f"skipped all {len(task.regions)} regions")
            region_ids = tuple(i for i, _ in kept)
            masks = [m for _, m in kept]
        if self.cfg.outside == "prediction":
            if not task.prediction_uri:
                raise InvalidInput(f"task {task.task_id} has no stored prediction for --outside prediction")
            pred = imageio.read_label(task.prediction_uri)  # [H, W]
        else:
            pred = np.full(shape, IGNORE, dtype=np.uint8)
        ann = simulated_human(gt, pred, masks, outside="prediction")  # pred is all-255 for "ignore"
        labels = mislabel(ann.mask, ann.human, self.cfg.wrong_label_rate, self.rng,
                          len(lease.session.class_names))  # the pool's classes, not Cityscapes'
        if not (labels != IGNORE).any():
            return Decline("the ground truth marks nothing in the requested regions")
        if self.stop.wait(self.cfg.delay_s + self.cfg.delay_per_region_s * len(region_ids)):
            return Decline("stopped while annotating")
        return Answer(labels, region_ids, ann.cost)


def build_parser() -> argparse.ArgumentParser:
    d = SimulatedHumanConfig()
    env = lambda name, default: os.environ.get(ENV_PREFIX + name, default)  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m clients.simulated_human", description=__doc__.splitlines()[0])
    add_labeling_args(p, ENV_PREFIX)
    p.add_argument("--dataset", default=env("DATASET", ""), help="Cityscapes-layout folder with gtFine labels")
    p.add_argument("--split", dest="splits", action="append", default=None,
                   help="split to look frames up in (repeatable; default: all)")
    p.add_argument("--scope", choices=SCOPES, default=env("SCOPE", d.scope),
                   help="fix the EEM regions only, or the whole frame")
    p.add_argument("--outside", choices=OUTSIDE, default=env("OUTSIDE", d.outside),
                   help="labels outside the regions: ignore, or the model's prediction")
    p.add_argument("--delay-s", type=float, default=float(env("DELAY_S", d.delay_s)), help="seconds spent per task")
    p.add_argument("--delay-per-region-s", type=float, default=float(env("DELAY_PER_REGION_S", d.delay_per_region_s)),
                   help="extra seconds per region fixed")
    p.add_argument("--wrong-label-rate", type=float, default=float(env("WRONG_LABEL_RATE", d.wrong_label_rate)),
                   help="share of the labeled pixels given another class (a careless person)")
    p.add_argument("--skip-region-rate", type=float, default=float(env("SKIP_REGION_RATE", d.skip_region_rate)),
                   help="probability that a region is left undone")
    p.add_argument("--seed", type=int, default=int(env("SEED", d.seed)), help="seed of the mistakes")
    add_work_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> SimulatedHumanConfig:
    return SimulatedHumanConfig(
        labeling=labeling_config_from_args(args), dataset=args.dataset, splits=tuple(args.splits or ()),
        scope=args.scope, outside=args.outside, delay_s=args.delay_s, delay_per_region_s=args.delay_per_region_s,
        wrong_label_rate=args.wrong_label_rate, skip_region_rate=args.skip_region_rate, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args).validate()
        truth = GroundTruth(cfg.dataset, cfg.splits)
        with LabelingSession(cfg.labeling, kind="simulated-human") as session:
            summary = work(session, SimulatedHuman(cfg, truth), max_tasks=args.max_tasks,
                           follow=args.follow, idle_s=args.idle_s)
    except SegxalError as e:
        print(f"simulated human: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
