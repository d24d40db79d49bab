"""A local rehearsal of the Kubernetes deployment with the same code: one inference server, 2 EEM
replicas, 2 coordinator replicas on PostgreSQL (a schema of its own), every client spreading its
calls over a static list of replica addresses ("h1:p1,h2:p2", services.common.channel, the
rehearsal's stand-in for a headless Service). Drive logs (MCAP, written with segxal.ingest) are
sharded over 4 `python -m services.fleet.worker` processes, as the Indexed Job runs them; the
merged ranking must equal one worker's, requests must reach both replicas of each tier, and
rerunning an index (whole, or after a crash part-way) must not duplicate a score."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segxal.ingest import write_drive_log
from services.common.server import ServerConfig
from services.coordinator.client import CoordinatorClient
from services.coordinator.server import CoordinatorServer
from services.eem.client import EemClient
from services.eem.pipeline import PipelineConfig
from services.eem.server import EemServer, EemServiceConfig
from services.fleet.worker import ShardResults, WorkerConfig, merge_shards, run_shard, shard_logs, list_logs
from tests.coordinator_support import coordinator_config, database_url
from tests.inference_support import H, W, export_models, make_repository, running_server

REPO_ROOT = Path(__file__).resolve().parents[1]
LOGS, FRAMES_PER_LOG, WORKERS = 8, 3, 4

pytestmark = pytest.mark.postgres


def _frame(rng: np.random.Generator) -> np.ndarray:
    """Blocks of colour: structure for the EEM, and far apart from any other frame (no near-duplicates)."""
    small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))  # [H, W, 3]


def _write_logs(folder: Path) -> list[Path]:
    rng = np.random.default_rng(11)
    paths = []
    for i in range(LOGS):
        path = folder / f"drive_{i:02d}.mcap"
        write_drive_log(path, [(1_000_000_000 * t, _frame(rng)) for t in range(FRAMES_PER_LOG)])
        paths.append(path)
    return paths


class _Counted:
    """Counts the calls a replica's core receives (which replica served what)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


@pytest.fixture()
def stack(tmp_path):
    repo = make_repository(tmp_path / "repo", export_models(tmp_path / "export", seeds=(0,)))
    storage = tmp_path / "storage"  # the shared volume: the coordinators write frames, EEM reads them
    storage.mkdir()
    with database_url("postgres", tmp_path) as db_url, running_server(repo) as inference:
        eems = [EemServer(EemServiceConfig(
            seg_target=inference.target, depth_target=inference.target, storage_roots=[str(storage)],
            server=ServerConfig(address="127.0.0.1:0", grace_s=1.0), pipeline=PipelineConfig(max_concurrency=2),
            health_poll_s=0.2))
            for _ in range(2)]
        for e in eems:
            e.start()
        eem_target = ",".join(e.target for e in eems)
        coords = [CoordinatorServer(coordinator_config(db_url, storage, eem_target=eem_target)) for _ in range(2)]
        for c in coords:
            c.core.ingest = _Counted(c.core.ingest)
            c.core.list_frames = _Counted(c.core.list_frames)
            c.start()
        try:
            for e in eems:
                with EemClient(e.target) as client:
                    client.wait_until_serving(60)
            yield {"eems": eems, "coords": coords, "eem_target": eem_target,
                   "coord_target": ",".join(c.target for c in coords), "tmp": tmp_path}
        finally:
            for c in coords:
                c.stop(1.0)
            for e in eems:
                e.stop(1.0)


def _worker(stack, index: int, count: int, logs: Path, results: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.fleet.worker", "--index", str(index), "--count", str(count),
         "--logs", str(logs), "--pool", "fleet", "--coordinator", stack["coord_target"],
         "--eem", stack["eem_target"], "--results", str(results), "--chunk", "2", "--concurrency", "2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _report(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_four_sharded_workers_rank_like_one_and_reach_every_replica(stack):
    tmp = stack["tmp"]
    logs = _write_logs(tmp / "drive-logs")
    sharded, single = tmp / "results-4", tmp / "results-1"

    # the Indexed Job: 4 indices at once, each on its shard
    reports = [_report(p) for p in [_worker(stack, i, WORKERS, tmp / "drive-logs", sharded) for i in range(WORKERS)]]
    assert [r["logs"] for r in reports] == [len(shard_logs(list_logs([str(tmp / "drive-logs")]), i, WORKERS))
                                            for i in range(WORKERS)]
    assert sum(r["frames"] for r in reports) == sum(r["scored"] for r in reports) == LOGS * FRAMES_PER_LOG
    assert all(r["failed"] == r["ingest_errors"] == 0 for r in reports)

    # one worker over every log, the same code in this process
    cfg = WorkerConfig(index=0, count=1, logs=[str(p) for p in logs], pool="fleet",
                       coordinator_target=stack["coord_target"], eem_target=stack["eem_target"], results=str(single))
    alone = run_shard(cfg)
    assert alone.frames == LOGS * FRAMES_PER_LOG and alone.scored == alone.frames  # its own results folder

    four, one = merge_shards(sharded, WORKERS), merge_shards(single, 1)
    assert four.model_key == one.model_key == "segmentation:1" and not four.missing_indices
    assert [r.frame_id for r in four.frames] == [r.frame_id for r in one.frames]
    np.testing.assert_allclose([r.score for r in four.frames], [r.score for r in one.frames], atol=1e-6)
    assert len({r.score for r in one.frames}) == len(one.frames)  # distinct scores: the order is meaningful

    # both replicas of each tier served
    for e in stack["eems"]:
        with EemClient(e.target) as client:
            assert client.stats().frames_scored > 0
    for c in stack["coords"]:
        assert c.core.ingest.calls > 0 or c.core.list_frames.calls > 0
    assert sum(c.core.ingest.calls for c in stack["coords"]) == WORKERS + 1
    with CoordinatorClient(stack["coord_target"]) as coord:
        assert coord.get_pool(name="fleet").frame_count == LOGS * FRAMES_PER_LOG  # ingested once

    # rerunning an index that succeeded scores nothing and changes nothing
    before = ShardResults.load(sharded, 2, WORKERS).entries
    again = _report(_worker(stack, 2, WORKERS, tmp / "drive-logs", sharded))
    assert again["scored"] == 0 and again["reused"] == again["frames"] == len(before)
    assert ShardResults.load(sharded, 2, WORKERS).entries == before

    # an index that crashed part-way (its file holds some scores) scores only the rest on rerun
    crashed = ShardResults.load(sharded, 1, WORKERS)
    kept = dict(list(crashed.entries.items())[: len(crashed.entries) // 2])
    ShardResults(1, WORKERS, crashed.logs, kept).save(sharded)
    rerun = run_shard(WorkerConfig(index=1, count=WORKERS, logs=[str(tmp / "drive-logs")], pool="fleet",
                                   coordinator_target=stack["coord_target"], eem_target=stack["eem_target"],
                                   results=str(sharded)))
    assert rerun.scored == len(crashed.entries) - len(kept) and rerun.reused == len(kept)
    assert set(ShardResults.load(sharded, 1, WORKERS).entries) == set(crashed.entries)  # no duplicate keys
    assert [r.frame_id for r in merge_shards(sharded, WORKERS).frames] == [r.frame_id for r in one.frames]
