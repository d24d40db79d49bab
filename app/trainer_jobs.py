"""`segxal trainer`: a trainer's jobs from the command line.

    segxal trainer jobs --trainer host:port                # every job, oldest first
    segxal trainer cancel JOB_ID --trainer host:port       # a queued job never runs; a running
                                                           # one stops at its next epoch

A cancelled job ends CANCELLED and is never resumed, also not by a restarted trainer. `cancel`
prints the job's state and, for a running job, waits (--wait-s, default 60) until it has stopped.
"""
from __future__ import annotations

import argparse
import json

from segxal.errors import NotReady
from services.common.channel import add_channel_args, channel_config_from_args
from services.trainer.api import Job, JobState
from services.trainer.client import TrainerClient

ENV_PREFIX = "SEGXAL_"


def _line(job: Job) -> str:
    epochs = f"{len(job.report.epoch_losses)}/{job.spec.epochs} epochs"
    extra = f" ({job.error})" if job.error else (" (cancel requested)" if job.cancel_requested and
                                                 not job.state.finished else "")
    return f"job {job.job_id}: {job.state.value}, {job.phase.value}, {epochs}, cycle {job.spec.cycle_id!r}{extra}"


def list_jobs(args: argparse.Namespace) -> int:
    with TrainerClient(args.trainer, channel_config_from_args(args, "trainer"), timeout_s=30) as trainer:
        for job in trainer.list_jobs():
            print(json.dumps({"job_id": job.job_id, "state": job.state.value, "phase": job.phase.value,
                              "cycle_id": job.spec.cycle_id, "epochs": job.spec.epochs,
                              "epochs_done": len(job.report.epoch_losses), "error": job.error}))
    return 0


def cancel_job(args: argparse.Namespace) -> int:
    """Cancel one job; exit 0 once it is cancelled (or still stopping after --wait-s: exit 1)."""
    with TrainerClient(args.trainer, channel_config_from_args(args, "trainer"), timeout_s=30) as trainer:
        job = trainer.cancel_job(args.job_id)
        if not job.state.finished and args.wait_s > 0:
            try:
                job = trainer.wait(job.job_id, timeout_s=args.wait_s)
            except NotReady:  # the wait's deadline: report the job as it is now
                job = trainer.get_job(job.job_id)
        print(_line(job))
    return 0 if job.state == JobState.CANCELLED else 1


def register_cli(sub) -> None:
    trainer = sub.add_parser("trainer", help="a trainer's jobs: list, cancel").add_subparsers(
        dest="trainer_cmd", required=True)
    for name, func, help_text in (("jobs", list_jobs, "list the trainer's jobs (one JSON line each)"),
                                  ("cancel", cancel_job, "cancel a queued or running job")):
        p = trainer.add_parser(name, help=help_text, description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == "cancel":
            p.add_argument("job_id", help="the job to cancel (from `segxal trainer jobs`)")
            p.add_argument("--wait-s", type=float, default=60.0,
                           help="wait this long for a running job to stop (0: do not wait)")
        p.add_argument("--trainer", required=True, help="trainer host:port")
        add_channel_args(p, "trainer", ENV_PREFIX, "the trainer")
        p.set_defaults(func=func)
