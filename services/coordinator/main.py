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
import sys

from segxal.selection import SelectionSpec
from services.common.channel import add_channel_args, channel_config_from_args
from services.common.flags import EnvFlags, paths_from
from services.common.runner import serve_until_signal
from services.common.server import add_server_args, server_config_from_args
from services.coordinator.config import CoordinatorConfig
from services.coordinator.ranking import RankingConfig
from services.coordinator.server import CoordinatorServer

ENV_PREFIX = "SEGXAL_COORDINATOR_"


def build_parser() -> argparse.ArgumentParser:
    d, r = CoordinatorConfig(), RankingConfig()
    p = argparse.ArgumentParser(prog="python -m services.coordinator.main", description=__doc__.splitlines()[0])
    f = EnvFlags(p, ENV_PREFIX)
    f.add("--db", d.db, help="sqlite:///path or postgresql://user@host:port/db")
    f.add("--storage", d.storage, help="folder for extracted frames, annotation masks and predictions")
    add_channel_args(p, "eem", ENV_PREFIX, "the EEM scoring service")
    f.add("--eem-target", d.eem_target, help="EEM scoring service host:port (empty: only random cycles can rank)")
    f.add("--model-name", d.model_name, help="the model whose versions pin cycles when none is named")
    f.add("--default-lease-s", d.default_lease_s, type=float, help="lease of a task when the labeler asks for none")
    f.add("--max-lease-s", d.max_lease_s, type=float, help="longest lease a labeler may hold")
    f.add("--dice-threshold", d.default_dice_threshold, type=float,
          help="a cycle whose mean DICE reaches it stops the querying (default of each pool)")
    f.add("--db-pool-size", d.db_pool_size, type=int, help="database connections per replica")
    f.paths("--ingest-root", "ingest_roots", env="INGEST_ROOTS",
            help="ingest paths must lie under one of these folders (repeatable; default: anywhere)")
    f.add("--default-selection", d.default_selection.text(),
          help="how an EEM cycle picks when StartCycle names no selection: name=value of score, diversity, "
               "balance, log_cap, min_distance, min_score, shortlist ('score=1': by score alone)")
    f.add("--scoring-concurrency", r.concurrency, type=int, help="EEM scoring calls in flight at once while ranking")
    f.add("--scoring-chunk", r.chunk_size, type=int, help="frames per EEM scoring call")
    f.add("--scoring-deadline-s", r.deadline_s, type=float, help="deadline of each EEM scoring call")
    f.add("--scoring-attempts", r.max_attempts, type=int, help="tries per frame, the first included")
    f.add("--scoring-backoff-s", r.backoff_initial_s, type=float, help="first wait between tries (doubling)")
    add_server_args(p, ENV_PREFIX, d.server)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> CoordinatorConfig:
    return CoordinatorConfig(
        db=args.db, storage=args.storage, eem_target=args.eem_target, eem_channel=channel_config_from_args(args, "eem"),
        model_name=args.model_name, default_lease_s=args.default_lease_s, max_lease_s=args.max_lease_s,
        default_dice_threshold=args.dice_threshold, db_pool_size=args.db_pool_size,
        server=server_config_from_args(args, CoordinatorConfig().server),
        ingest_roots=tuple(paths_from(args, "ingest_roots")),
        default_selection=SelectionSpec.parse(args.default_selection),
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
