"""Machine oracle client: pseudo-labels from the served model (docs/design.md, "Oracle modes"): the
predicted trainIds where p_max >= tau, "not annotated" (255) elsewhere, submitted as a whole-frame
annotation. Frames that hold no confident pixel are released for another labeler.

    python -m clients.machine --coordinator host:port --inference host:port --pool NAME \
        --frame-root /data/frames [--tau 0.9] [--max-tasks N] [--follow]

Frames are read by their URI through segxal.storage, confined to the --frame-root folders, then
segmented by the one inference client (services.inference.client); the oracle itself is
segxal.al.oracles.machine_oracle. Prints a JSON summary (submitted, released, cost) at the end.
Every flag has an environment variable SEGXAL_MACHINE_<FLAG>; flags win.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field

from clients.labeling import (Answer, Decline, LabelingConfig, LabelingSession, Lease, add_labeling_args,
                              add_work_args, labeling_config_from_args, work)
from segxal.al.oracles import machine_oracle
from segxal.errors import InvalidInput, SegxalError
from segxal.labels import IGNORE
from segxal.storage import FrameStorage
from services.inference.client import DEFAULT_SEGMENTATION_MODEL, InferenceClient

ENV_PREFIX = "SEGXAL_MACHINE_"


@dataclass
class MachineOracleConfig:
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    inference: str = "127.0.0.1:8001"  # the inference server (KServe v2: ours or Triton)
    model: str = DEFAULT_SEGMENTATION_MODEL
    model_version: str = ""  # "": the server's newest version
    tau: float = 0.9  # pseudo-label where p_max >= tau (docs/design.md, "Oracle modes")
    frame_roots: list[str] = field(default_factory=list)  # frames are read only under these folders
    inference_timeout_s: float = 60.0


class MachineOracle:
    """The oracle `clients.labeling.work` calls for each leased task.

    Args:
        cfg: tau, model version.
        inference: the inference client (segmentation with p_max).
        storage: where frames are read from.
    """

    def __init__(self, cfg: MachineOracleConfig, inference: InferenceClient, storage: FrameStorage):
        if not 0.0 <= cfg.tau <= 1.0:
            raise InvalidInput(f"machine oracle: tau must be in [0, 1], got {cfg.tau}")
        self.cfg = cfg
        self.inference = inference
        self.storage = storage

    def __call__(self, lease: Lease) -> Answer | Decline:
        """Pseudo-labels of the task's frame.

        Raises:
            InvalidInput: the frame is unreadable, or the model gives no p_max.
            NotReady: the inference server is down (the task is released by the caller).
        """
        rgb = self.storage.read_rgb(lease.task.frame_uri)  # [H, W, 3]
        seg = self.inference.infer_segmentation(rgb[None], version=self.cfg.model_version)
        if seg["pmax"] is None:
            raise InvalidInput(f"model {self.cfg.model!r} returns no p_max (nor logits to derive it from)")
        ann = machine_oracle(seg["labels"][0], seg["pmax"][0], self.cfg.tau)
        if not (ann.mask != IGNORE).any():
            return Decline(f"no pixel with p_max >= {self.cfg.tau} (model {seg['model_version']})")
        return Answer(ann.mask, (), ann.cost)


def build_parser() -> argparse.ArgumentParser:
    d = MachineOracleConfig()
    env = lambda name, default: os.environ.get(ENV_PREFIX + name, default)  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m clients.machine", description=__doc__.splitlines()[0])
    add_labeling_args(p, ENV_PREFIX)
    p.add_argument("--inference", default=env("INFERENCE", d.inference), help="inference server host:port")
    p.add_argument("--model", default=env("MODEL", d.model), help="segmentation model name")
    p.add_argument("--model-version", default=env("MODEL_VERSION", d.model_version), help="empty: newest")
    p.add_argument("--tau", type=float, default=float(env("TAU", d.tau)), help="p_max threshold")
    env_roots = [r for r in env("FRAME_ROOTS", "").split(os.pathsep) if r]
    p.add_argument("--frame-root", dest="frame_roots", action="append", default=None,
                   help="folder frames may be read from (repeatable)")
    p.set_defaults(env_frame_roots=env_roots)
    add_work_args(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> MachineOracleConfig:
    labeling = labeling_config_from_args(args)
    return MachineOracleConfig(labeling=labeling, inference=args.inference, model=args.model,
                               model_version=args.model_version, tau=args.tau,
                               frame_roots=list(args.frame_roots or args.env_frame_roots))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    try:
        storage = FrameStorage(cfg.frame_roots)
        with InferenceClient(cfg.inference, segmentation_model=cfg.model,
                             timeout_s=cfg.inference_timeout_s) as inference, \
                LabelingSession(cfg.labeling, kind="machine") as session:
            oracle = MachineOracle(cfg, inference, storage)
            summary = work(session, oracle, max_tasks=args.max_tasks, follow=args.follow, idle_s=args.idle_s)
    except SegxalError as e:
        print(f"machine oracle: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
