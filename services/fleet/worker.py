"""Fleet ranking worker: one index of the Kubernetes Indexed Job that ranks a large set of drive
logs (app/fleet_job.py builds the Job).

    python -m services.fleet.worker --index $JOB_COMPLETION_INDEX --count N --logs /data/drive-logs \
        --pool fleet --coordinator dns:///coordinator.segxal.svc.cluster.local:50061 \
        --eem dns:///eem.segxal.svc.cluster.local:50053 --results /data/fleet/results

Each index takes its shard of the logs: `shard_of(name, count)`, the SHA-1 of the log's file name
modulo the number of indices, so the split depends on nothing but the names (not on listing order,
not on which pod lists them). For its logs, a worker
  1. ingests them into the coordinator's pool (IngestFrames: idempotent, frames content-addressed
     on shared storage, near-duplicates dropped, a damaged log keeps the frames before the damage),
  2. lists the pool's frames that came from its logs,
  3. scores them through the EEM tier (services.eem.client, through the coordinator's EemScorer and
     its bounded-concurrency, retrying fan-out services.coordinator.ranking.score_candidates),
  4. writes its scores to `<results>/shard-IIIII-of-NNNNN.json` on shared storage, keyed by
     (frame id, model version) and replaced atomically (written beside, then renamed) every
     `flush_every` frames.
A rerun of an index (the Job retries a failed pod) reads its shard file and scores only the frames
without a score of the serving model version, so it never duplicates a score. `merge_shards` turns
the shard files into the fleet's ranking, and `select_fleet` picks from it in one global step with the
same composed selection a cycle uses (segxal.selection).

The coordinator API has no RPC to record scores computed elsewhere (its store has the idempotent
upsert, `CoordinatorStore.record_scores`, used only by RankCycle), so the scores stay in the shard
files; the frames themselves are in the coordinator's pool.

Exit codes (the Job's podFailurePolicy reads them): 0 every frame of the shard has a score;
1 some frames are still unscored or a service was unreachable (retry the index); 2 bad arguments
or input that no retry can fix (fail the index at once).
"""
from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from segxal import imageio
from segxal.eem.options import EEMOptions, add_eem_arguments, eem_options_from_args
from segxal.errors import FailedPrecondition, InvalidInput, NotFound, SegxalError
from segxal.selection import Pick, PoolFeatures, SelectionSpec, select
from services.common.channel import ChannelConfig
from services.coordinator.client import CoordinatorClient, drive_log_source
from services.coordinator.domain import Candidate, FailedFrame, FrameScore
from services.coordinator.eem_scorer import EemScorer
from services.coordinator.ranking import RankingConfig, score_candidates
from services.eem.api import ScoreOptions

log = logging.getLogger("services.fleet.worker")

ENV_PREFIX = "SEGXAL_FLEET_"
EXIT_OK, EXIT_RETRY, EXIT_FAIL_INDEX = 0, 1, 2
_SHARD_FILE = "shard-{index:05d}-of-{count:05d}.json"
_MCAP_SOURCE = "mcap:"  # segxal.ingest names a drive-log frame's source "mcap:<resolved path>#<topic>"


def shard_of(log_name: str, count: int) -> int:
    """The index (0..count-1) that ranks the log named `log_name` (a file name, not a path: the same
    log mounted at another path keeps its shard)."""
    if count < 1:
        raise InvalidInput(f"the shard count must be >= 1, got {count}")
    return int.from_bytes(hashlib.sha1(log_name.encode()).digest()[:8], "big") % count


def list_logs(patterns: Sequence[str]) -> list[Path]:
    """The .mcap files named by `patterns`: files, folders (their .mcap files, recursively) or
    glob patterns; sorted, each once.

    Raises:
        NotFound: a pattern names nothing.
    """
    found: set[Path] = set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = [p for p in path.rglob("*.mcap") if p.is_file()]
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if p.endswith(".mcap")]
        if not matches:
            raise NotFound(f"no drive log (.mcap) at {pattern!r}")
        found.update(p.resolve() for p in matches)
    return sorted(found)


def shard_logs(logs: Iterable[Path], index: int, count: int) -> list[Path]:
    """The logs of one index."""
    if not 0 <= index < count:
        raise InvalidInput(f"index must be in 0..{count - 1}, got {index}")
    return [p for p in logs if shard_of(p.name, count) == index]


def _log_of_source(source: str) -> str | None:
    if not source.startswith(_MCAP_SOURCE):
        return None
    return source[len(_MCAP_SOURCE):].rsplit("#", 1)[0]


# ---------------------------------------------------------------- shard result files

@dataclass(frozen=True)
class ScoredEntry:
    frame_id: str
    uri: str
    source: str  # "mcap:<log>#<topic>"
    model_key: str  # "<segmentation model>:<version>" that produced the score
    depth_key: str
    score: float
    # the frame's embedding and predicted class shares as the EEM service gave them: base64 of
    # float16 ('' = none), for the fleet's global selection (float16: the distances between unit
    # vectors keep ~3 digits, and a million 256-d embeddings stay ~700 MB of shard files)
    embedding: str = ""
    class_hist: str = ""


def _pack(v) -> str:
    return "" if v is None or len(v) == 0 else base64.b64encode(np.asarray(v, np.float16).tobytes()).decode()


def _unpack(text: str) -> np.ndarray | None:
    return np.frombuffer(base64.b64decode(text), np.float16).astype(np.float32) if text else None


@dataclass
class ShardResults:
    """One index's scores, keyed by (frame id, model version); the failures of its last run."""
    index: int
    count: int
    logs: list[str] = field(default_factory=list)
    entries: dict[tuple[str, str], ScoredEntry] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # frame id -> last error (this run)
    ingest_errors: dict[str, str] = field(default_factory=dict)  # log -> error

    @staticmethod
    def path(results_dir: str | Path, index: int, count: int) -> Path:
        return Path(results_dir) / _SHARD_FILE.format(index=index, count=count)

    @classmethod
    def load(cls, results_dir: str | Path, index: int, count: int) -> "ShardResults":
        """The shard's file, or an empty result when there is none yet.

        Raises:
            InvalidInput: the file is not a shard result of this index and count.
        """
        path = cls.path(results_dir, index, count)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(index, count)
        except (OSError, ValueError) as e:
            raise InvalidInput(f"{path}: not a readable shard result ({e})") from None
        if data.get("index") != index or data.get("count") != count:
            raise InvalidInput(f"{path}: holds index {data.get('index')} of {data.get('count')}, "
                               f"expected {index} of {count}")
        entries = [ScoredEntry(**e) for e in data.get("entries", [])]
        return cls(index, count, list(data.get("logs", [])), {(e.frame_id, e.model_key): e for e in entries},
                   dict(data.get("failed", {})), dict(data.get("ingest_errors", {})))

    def save(self, results_dir: str | Path) -> Path:
        """Write the file atomically (beside, fsync, rename): readers never see half a file."""
        path = self.path(results_dir, self.index, self.count)
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = sorted(self.entries.values(), key=lambda e: (e.frame_id, e.model_key))
        text = json.dumps({"index": self.index, "count": self.count, "logs": self.logs,
                           "entries": [asdict(e) for e in entries], "failed": self.failed,
                           "ingest_errors": self.ingest_errors}, indent=1)
        imageio.atomic_write_bytes(path, text.encode())
        return path

    def model_keys_of(self, frame_id: str) -> set[str]:
        return {key for (fid, key) in self.entries if fid == frame_id}

    def add(self, entry: ScoredEntry) -> None:
        self.entries[(entry.frame_id, entry.model_key)] = entry
        self.failed.pop(entry.frame_id, None)


@dataclass(frozen=True)
class RankedFrame:
    score: float
    frame_id: str
    uri: str
    source: str
    embedding: str = ""  # as in ScoredEntry
    class_hist: str = ""


@dataclass
class FleetRanking:
    model_key: str
    frames: list[RankedFrame]  # best first; ties broken by frame id, as the coordinator's ranking
    missing_indices: list[int]  # indices without a shard file yet
    unscored: dict[str, str]  # frame id -> error, for frames no shard could score
    ingest_errors: dict[str, str]
    other_versions: dict[str, int]  # entries scored by another model version (not ranked)


def merge_shards(results_dir: str | Path, count: int, model_key: str | None = None) -> FleetRanking:
    """The fleet's ranking from the shard files of a run with `count` indices.

    Args:
        model_key: the model version to rank by; None: the version most entries were scored with.
    Raises:
        NotFound: no shard file at all.
    """
    shards, missing = [], []
    for index in range(count):
        if ShardResults.path(results_dir, index, count).is_file():
            shards.append(ShardResults.load(results_dir, index, count))
        else:
            missing.append(index)
    if not shards:
        raise NotFound(f"no shard results of a {count}-index run in {results_dir}")
    per_key: dict[str, int] = {}
    for shard in shards:
        for (_, key) in shard.entries:
            per_key[key] = per_key.get(key, 0) + 1
    chosen = model_key or (max(sorted(per_key), key=per_key.get) if per_key else "")
    frames = [RankedFrame(e.score, e.frame_id, e.uri, e.source, e.embedding, e.class_hist)
              for shard in shards for (fid, key), e in shard.entries.items() if key == chosen]
    frames.sort(key=lambda r: (r.score, r.frame_id), reverse=True)
    return FleetRanking(
        model_key=chosen, frames=frames, missing_indices=missing,
        unscored={fid: err for shard in shards for fid, err in shard.failed.items()},
        ingest_errors={lg: err for shard in shards for lg, err in shard.ingest_errors.items()},
        other_versions={k: n for k, n in per_key.items() if k != chosen})


def select_fleet(ranking: FleetRanking, k: int, spec: SelectionSpec,
                 labelled_embeddings: np.ndarray | None = None) -> list[Pick]:
    """The fleet's one global selection step over every shard's scores and embeddings: the same
    segxal.selection.select the coordinator runs for a cycle; a frame's drive log is its MCAP file.

    Args:
        ranking: merge_shards' result.
        k: frames to pick.
        spec: the composed selection.
        labelled_embeddings: [M, D] of frames labelled already (diversity keeps away from them).

    Raises:
        InvalidInput: the selection needs embeddings or class shares some frame has not (scored by a
            model without an `embedding` output, or by a worker before embeddings were recorded).
    """
    frames = ranking.frames
    needs = [("embedding", spec.needs_embeddings), ("class_hist", spec.needs_class_histograms)]
    for name, needed in needs:
        lacking = sum(1 for f in frames if needed and not getattr(f, name))
        if lacking:
            raise InvalidInput(f"selection '{spec.text()}' needs each frame's {name}, but {lacking} of "
                               f"{len(frames)} frames have none (model {ranking.model_key}): score them again "
                               f"with a model exported with an `embedding` output")
    pool = PoolFeatures(
        ids=[f.frame_id for f in frames], scores=np.array([f.score for f in frames], np.float64),
        embeddings=np.stack([_unpack(f.embedding) for f in frames]) if spec.needs_embeddings and frames else None,
        class_hist=np.stack([_unpack(f.class_hist) for f in frames]) if spec.needs_class_histograms and frames else None,
        log_ids=[_log_of_source(f.source) or f.source for f in frames])
    return select(pool, k, spec, labelled_embeddings=labelled_embeddings)


# ---------------------------------------------------------------- the worker

@dataclass
class WorkerConfig:
    index: int
    count: int
    logs: list[str]  # .mcap files, folders of them, or glob patterns (every index lists the same)
    pool: str  # the coordinator pool the frames go into; created by the first index that needs it
    coordinator_target: str  # services.common.channel targets: host:port, h1:p1,h2:p2, dns:///...
    eem_target: str
    results: str  # folder of the shard files, on storage every index and the merger see
    topics: tuple[str, ...] = ()  # empty: every image topic
    near_duplicate_threshold: float | None = None  # None: the coordinator's default
    coordinator_channel: ChannelConfig = field(default_factory=ChannelConfig)
    eem_channel: ChannelConfig = field(default_factory=ChannelConfig)
    eem: EEMOptions = field(default_factory=EEMOptions)
    # 4 calls of 8 frames in flight: enough to keep 2 EEM replicas (each 4 frames at once) busy
    ranking: RankingConfig = field(default_factory=RankingConfig)
    client_id: str = "fleet-worker"  # ignored by a coordinator that authenticates callers
    flush_every: int = 64  # frames scored between two writes of the shard file


@dataclass
class ShardReport:
    index: int
    logs: int
    frames: int
    scored: int  # by this run
    reused: int  # already scored with the serving model version by an earlier run
    failed: int
    ingest_errors: int
    results_path: str
    seconds: float

    @property
    def complete(self) -> bool:
        return self.failed == 0


def _pool_id(coord: CoordinatorClient, name: str) -> str:
    """The pool's id, creating the pool when no index has yet (indices race: one create wins)."""
    try:
        return coord.get_pool(name=name).pool_id
    except NotFound:
        pass
    try:
        return coord.create_pool(name).pool_id
    except FailedPrecondition:  # another index created it between the two calls
        return coord.get_pool(name=name).pool_id


def _shard_frames(coord: CoordinatorClient, pool_id: str, logs: Sequence[Path]) -> dict[str, tuple[Candidate, str]]:
    """{frame id: (candidate, source)} of the pool's frames that came from `logs`."""
    wanted = {str(p) for p in logs}
    return {f.frame_id: (Candidate(frame_id=f.frame_id, uri=f.uri, width=f.width, height=f.height), f.source)
            for f in coord.frames(pool_id) if _log_of_source(f.source) in wanted}


def run_shard(cfg: WorkerConfig) -> ShardReport:
    """Ingest, score and record one index's shard of the logs (see the module docstring).

    Raises:
        InvalidInput / NotFound: bad index or count, a log pattern that names nothing, or an
            unreadable shard file (no retry fixes these).
        NotReady: the coordinator could not be reached.
    """
    started = time.monotonic()
    logs = shard_logs(list_logs(cfg.logs), cfg.index, cfg.count)
    results = ShardResults.load(cfg.results, cfg.index, cfg.count)
    results.logs = [str(p) for p in logs]
    with CoordinatorClient(cfg.coordinator_target, cfg.coordinator_channel, client_id=cfg.client_id) as coord:
        pool_id = _pool_id(coord, cfg.pool)
        if logs:
            reply = coord.ingest(pool_id, [drive_log_source(str(p), cfg.topics, cfg.near_duplicate_threshold)
                                           for p in logs])
            results.ingest_errors = {r.source: r.error for r in reply.results if r.error}
            for source, error in results.ingest_errors.items():
                log.warning("index %d: %s was ingested only in part: %s", cfg.index, source, error)
        frames = _shard_frames(coord, pool_id, logs) if logs else {}
    candidates = [cand for cand, _ in frames.values()]
    scored = 0
    with EemScorer(cfg.eem_target, cfg.eem_channel) as scorer:
        options = ScoreOptions(eem=cfg.eem)  # the score only: no labels, regions or maps

        def score(todo: list[Candidate]) -> str | None:
            """Score `todo`, recording as results come; returns the model version that served."""
            nonlocal scored
            serving = None
            for cand, res in score_candidates(todo, scorer, options, cfg.ranking):
                if isinstance(res, FailedFrame):
                    results.failed[cand.frame_id] = res.error
                    continue
                assert isinstance(res, FrameScore)
                serving = res.segmentation_version
                results.add(ScoredEntry(cand.frame_id, cand.uri, frames[cand.frame_id][1],
                                        res.segmentation_version, res.depth_version, float(res.score),
                                        _pack(res.embedding), _pack(res.class_hist)))
                scored += 1
                if scored % cfg.flush_every == 0:
                    results.save(cfg.results)
            return serving

        results.failed = {}
        serving = score([c for c in candidates if not results.model_keys_of(c.frame_id)])
        if serving is not None:  # frames an earlier run scored with another version: score again
            score([c for c in candidates if results.model_keys_of(c.frame_id)
                   and serving not in results.model_keys_of(c.frame_id)])
    path = results.save(cfg.results)
    return ShardReport(index=cfg.index, logs=len(logs), frames=len(frames), scored=scored,
                       reused=len(frames) - scored - len(results.failed), failed=len(results.failed),
                       ingest_errors=len(results.ingest_errors), results_path=str(path),
                       seconds=time.monotonic() - started)


# ---------------------------------------------------------------- entry point

def _env(name: str, default=None):
    return os.environ.get(ENV_PREFIX + name, default)


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as e:
        raise InvalidInput(f"token file {path}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    r = RankingConfig()
    p = argparse.ArgumentParser(prog="python -m services.fleet.worker", description=__doc__.splitlines()[0])
    index = os.environ.get("JOB_COMPLETION_INDEX", _env("INDEX"))  # set by Kubernetes in Indexed Jobs
    p.add_argument("--index", type=int, default=int(index) if index is not None else None,
                   help="this worker's shard (default: JOB_COMPLETION_INDEX, set by Kubernetes)")
    p.add_argument("--count", type=int, default=int(_env("COUNT", "1")), help="number of indices (shards)")
    p.add_argument("--logs", nargs="+", default=[x for x in (_env("LOGS") or "").split(os.pathsep) if x],
                   help=".mcap files, folders of them, or glob patterns")
    p.add_argument("--pool", default=_env("POOL", "fleet"), help="coordinator pool the logs are ingested into")
    p.add_argument("--coordinator", default=_env("COORDINATOR"), help="coordinator target")
    p.add_argument("--eem", default=_env("EEM"), help="EEM scoring target")
    p.add_argument("--results", default=_env("RESULTS"), help="folder of the shard result files")
    p.add_argument("--topic", dest="topics", action="append", default=[], help="image topic (repeatable)")
    p.add_argument("--near-duplicate-threshold", type=float, default=None,
                   help="drop a frame this similar to the one kept before it (default: the coordinator's)")
    add_eem_arguments(p, env=_env)
    p.add_argument("--concurrency", type=int, default=int(_env("CONCURRENCY", r.concurrency)),
                   help="EEM scoring calls in flight at once")
    p.add_argument("--chunk", type=int, default=int(_env("CHUNK", r.chunk_size)), help="frames per EEM scoring call")
    p.add_argument("--deadline-s", type=float, default=float(_env("DEADLINE_S", r.deadline_s)),
                   help="deadline of each EEM scoring call")
    p.add_argument("--attempts", type=int, default=int(_env("ATTEMPTS", r.max_attempts)),
                   help="tries per frame, the first included")
    p.add_argument("--coordinator-token-file", default=_env("COORDINATOR_TOKEN_FILE"),
                   help="file holding this worker's bearer token for the coordinator")
    p.add_argument("--coordinator-tls-ca", default=_env("COORDINATOR_TLS_CA"),
                   help="CA of the coordinator's certificate (enables TLS to it)")
    p.add_argument("--eem-tls-ca", default=_env("EEM_TLS_CA"), help="CA of the EEM service's certificate")
    p.add_argument("--tls-cert", default=_env("TLS_CERT"), help="client certificate (mutual TLS)")
    p.add_argument("--tls-key", default=_env("TLS_KEY"), help="PEM private key of --tls-cert")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """Raises:
        InvalidInput: a required setting is missing or out of range.
    """
    missing = [flag for flag, value in (("--index (or JOB_COMPLETION_INDEX)", args.index), ("--logs", args.logs),
                                        ("--coordinator", args.coordinator), ("--eem", args.eem),
                                        ("--results", args.results)) if value in (None, [], "")]
    if missing:
        raise InvalidInput(f"missing {', '.join(missing)}")
    if not 0 <= args.index < args.count:
        raise InvalidInput(f"--index must be in 0..{args.count - 1}, got {args.index}")

    def channel(ca: str | None, token: str | None = None) -> ChannelConfig:
        client_cert = (args.tls_cert, args.tls_key) if ca else (None, None)
        return ChannelConfig(tls_ca=ca, tls_cert=client_cert[0], tls_key=client_cert[1], bearer_token=token)

    return WorkerConfig(
        index=args.index, count=args.count, logs=list(args.logs), pool=args.pool,
        coordinator_target=args.coordinator, eem_target=args.eem, results=args.results,
        topics=tuple(args.topics), near_duplicate_threshold=args.near_duplicate_threshold,
        coordinator_channel=channel(args.coordinator_tls_ca, _read_token(args.coordinator_token_file)),
        eem_channel=channel(args.eem_tls_ca),
        eem=eem_options_from_args(args),
        ranking=RankingConfig(concurrency=args.concurrency, chunk_size=args.chunk, deadline_s=args.deadline_s,
                              max_attempts=args.attempts))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run_shard(config_from_args(args))
    except (InvalidInput, NotFound) as e:
        print(f"fleet worker: {e}", file=sys.stderr)
        return EXIT_FAIL_INDEX
    except SegxalError as e:
        print(f"fleet worker: {e} (the index will be retried)", file=sys.stderr)
        return EXIT_RETRY
    print(json.dumps(asdict(report)), flush=True)  # one line the Job's log (and tests) can read
    return EXIT_OK if report.complete else EXIT_RETRY


if __name__ == "__main__":
    sys.exit(main())
