"""Entry point of the coordinator.

    python -m services.coordinator.main --db sqlite:///path/coordinator.db --storage DIR \
        [--eem-target host:port] [--port N]
    python -m services.coordinator.main --db postgresql://user@host:5432/db ...   (several replicas)

Every flag has an environment variable SEGXAL_COORDINATOR_<FLAG> (e.g. SEGXAL_COORDINATOR_DB;
SEGXAL_COORDINATOR_INGEST_ROOTS is a list separated by the OS path separator); flags win. The
config is built once here and passed down. Prints "coordinator listening on HOST:PORT" once
serving (port 0 picks a free one). SIGTERM / SIGINT drain in-flight calls, then exit.
"""
from __future__ import annotations

import argparse
import os
import sys

from services.common.channel import add_channel_args, channel_config_from_args
from services.common.runner import serve_until_signal
from services.common.server import add_server_args, server_config_from_args
from services.coordinator.config import CoordinatorConfig
from services.coordinator.ranking import RankingConfig
from services.coordinator.server import CoordinatorServer

ENV_PREFIX = "SEGXAL_COORDINATOR_"


def _env(name: str, default):
    return os.environ.get(ENV_PREFIX + name, default)


def build_parser() -> argparse.ArgumentParser:
    d, r = CoordinatorConfig(), RankingConfig()
    p = argparse.ArgumentParser(prog="python -m services.coordinator.main", description=__doc__.splitlines()[0])
    p.add_argument("--db", default=_env("DB", d.db), help="sqlite:///path or postgresql://user@host:port/db")
    p.add_argument("--storage", default=_env("STORAGE", d.storage),
                   help="folder for extracted frames, annotation masks and predictions")
    add_channel_args(p, "eem", ENV_PREFIX, "the EEM scoring service")
    p.add_argument("--eem-target", default=_env("EEM_TARGET", d.eem_target),
                   help="EEM scoring service host:port (empty: only random cycles can rank)")
    p.add_argument("--model-name", default=_env("MODEL_NAME", d.model_name))
    p.add_argument("--default-lease-s", type=float, default=float(_env("DEFAULT_LEASE_S", d.default_lease_s)))
    p.add_argument("--max-lease-s", type=float, default=float(_env("MAX_LEASE_S", d.max_lease_s)))
    p.add_argument("--dice-threshold", type=float, default=float(_env("DICE_THRESHOLD", d.default_dice_threshold)))
    p.add_argument("--db-pool-size", type=int, default=int(_env("DB_POOL_SIZE", d.db_pool_size)))
    env_roots = [x for x in str(_env("INGEST_ROOTS", "")).split(os.pathsep) if x]
    p.add_argument("--ingest-root", dest="ingest_roots", action="append", default=None,
                   help="ingest paths must lie under one of these folders (repeatable; default: anywhere)")
    p.set_defaults(env_roots=env_roots)
    p.add_argument("--scoring-concurrency", type=int, default=int(_env("SCORING_CONCURRENCY", r.concurrency)))
    p.add_argument("--scoring-chunk", type=int, default=int(_env("SCORING_CHUNK", r.chunk_size)))
    p.add_argument("--scoring-deadline-s", type=float, default=float(_env("SCORING_DEADLINE_S", r.deadline_s)))
    p.add_argument("--scoring-attempts", type=int, default=int(_env("SCORING_ATTEMPTS", r.max_attempts)))
    p.add_argument("--scoring-backoff-s", type=float, default=float(_env("SCORING_BACKOFF_S", r.backoff_initial_s)))
    add_server_args(p, ENV_PREFIX, d.server)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    return CoordinatorConfig(
        db=args.db, storage=args.storage, eem_target=args.eem_target, eem_channel=channel_config_from_args(args, "eem"),
        model_name=args.model_name, default_lease_s=args.default_lease_s, max_lease_s=args.max_lease_s,
        default_dice_threshold=args.dice_threshold, db_pool_size=args.db_pool_size,
        server=server_config_from_args(args, CoordinatorConfig().server),
        ingest_roots=tuple(args.ingest_roots or args.env_roots),
        ranking=RankingConfig(concurrency=args.scoring_concurrency, chunk_size=args.scoring_chunk,
                              deadline_s=args.scoring_deadline_s, max_attempts=args.scoring_attempts,
                              backoff_initial_s=args.scoring_backoff_s))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the banner is the line tests and scripts wait for
    return serve_until_signal("coordinator", "coordinator listening on {target}",
                              lambda: CoordinatorServer(config_from_args(args)), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
