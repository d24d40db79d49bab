"""The fleet ranking Job without a cluster: the Job built with the kubernetes client's models is
the object deploy/base/fleet-job.yaml describes, and what `segxal fleet run --dry-run` prints; it
validates against the Kubernetes schemas; the shard function, the shard result files and the
watcher behave (the watcher over V1Job objects as BatchV1Api returns them)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k

from app import cli
from segxal.errors import InvalidInput, NotReady
from app.fleet_job import FleetJobConfig, build_job, job_progress, job_to_dict, watch_job
from services.fleet.worker import ScoredEntry, ShardResults, merge_shards, shard_logs, shard_of

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "base" / "fleet-job.yaml"


def test_built_job_is_the_manifest():
    built = job_to_dict(build_job(FleetJobConfig()))
    assert built == yaml.safe_load(MANIFEST.read_text())


def test_dry_run_prints_the_built_job(capsys):
    assert cli.main(["fleet", "run", "--dry-run", "--count", "8", "--parallelism", "2",
                     "--logs", "/data/drive-logs/2026-11", "/data/drive-logs/2026-12"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    cfg = FleetJobConfig(count=8, parallelism=2, logs=["/data/drive-logs/2026-11", "/data/drive-logs/2026-12"])
    assert printed == job_to_dict(build_job(cfg))
    kubernetes_validate.validate(printed, "1.31.0", strict=True)
    spec = printed["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 2)
    container = spec["template"]["spec"]["containers"][0]
    assert container["args"][0] == "--index=$(JOB_COMPLETION_INDEX)"
    assert container["args"][-3:] == ["--logs", "/data/drive-logs/2026-11", "/data/drive-logs/2026-12"]
    (env,) = container["env"]  # defined in the container, so $(JOB_COMPLETION_INDEX) expands in args
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_job_config_rejects_nonsense():
    with pytest.raises(InvalidInput):
        build_job(FleetJobConfig(count=0))
    with pytest.raises(InvalidInput):
        build_job(FleetJobConfig(logs=[]))


# ---------------------------------------------------------------- shards

def test_shard_of_is_sha1_of_the_name_mod_n_and_partitions_every_log_once(tmp_path):
    names = [f"drive_{i:03d}.mcap" for i in range(40)]
    for name in names:
        assert shard_of(name, 4) == int(hashlib.sha1(name.encode()).hexdigest()[:16], 16) % 4
    logs = [tmp_path / "a" / n for n in names]
    shards = [shard_logs(logs, i, 4) for i in range(4)]
    assert sorted(p for s in shards for p in s) == sorted(logs)  # every log in exactly one shard
    assert all(shards)  # 40 names over 4 shards: none empty
    moved = [tmp_path / "elsewhere" / n for n in reversed(names)]  # another mount, another order
    assert [sorted(p.name for p in shard_logs(moved, i, 4)) for i in range(4)] == \
        [sorted(p.name for p in s) for s in shards]
    with pytest.raises(InvalidInput):
        shard_logs(logs, 4, 4)


def _entry(frame: str, key: str, score: float) -> ScoredEntry:
    return ScoredEntry(frame, f"/data/storage/frames/{frame}.jpg", f"mcap:/logs/x.mcap#/cam", key, "depth:1", score)


def test_shard_results_are_keyed_by_frame_and_model_version(tmp_path):
    r = ShardResults(1, 3)
    r.add(_entry("f1", "segmentation:1", 0.5))
    r.add(_entry("f1", "segmentation:1", 0.5))  # a rerun records the same key: no duplicate
    r.add(_entry("f1", "segmentation:2", 0.7))
    r.failed["f2"] = "UNAVAILABLE"
    r.save(tmp_path)
    again = ShardResults.load(tmp_path, 1, 3)
    assert set(again.entries) == {("f1", "segmentation:1"), ("f1", "segmentation:2")}
    assert again.failed == {"f2": "UNAVAILABLE"} and again.model_keys_of("f1") == {"segmentation:1", "segmentation:2"}
    ShardResults.path(tmp_path, 1, 3).rename(ShardResults.path(tmp_path, 1, 4))
    with pytest.raises(InvalidInput, match="holds index 1 of 3, expected 1 of 4"):
        ShardResults.load(tmp_path, 1, 4)  # a file of another run is never mixed in


def test_merge_ranks_by_the_most_used_model_version_and_reports_gaps(tmp_path):
    a, b = ShardResults(0, 3), ShardResults(2, 3)
    a.add(_entry("f1", "segmentation:2", 0.2))
    a.add(_entry("f2", "segmentation:2", 0.9))
    b.add(_entry("f3", "segmentation:2", 0.9))
    b.add(_entry("f4", "segmentation:1", 1.0))  # another version: not ranked against the others
    a.save(tmp_path)
    b.save(tmp_path)
    ranking = merge_shards(tmp_path, 3)
    assert ranking.model_key == "segmentation:2"
    assert [r.frame_id for r in ranking.frames] == ["f3", "f2", "f1"]  # ties: higher frame id first
    assert ranking.missing_indices == [1] and ranking.other_versions == {"segmentation:1": 1}


def test_fleet_selection_is_one_global_step_over_every_shards_embeddings(tmp_path, capsys):
    """Two shards, each holding near-duplicates of one scene with the best scores of its own log:
    the global composed selection takes one frame per scene (diversity) and at most one per log
    (the cap), while the plain ranking takes the near-duplicates; embeddings survive the shard file."""
    import base64

    import numpy as np

    from app import cli
    from segxal.selection import SelectionSpec
    from services.fleet.worker import select_fleet

    def emb(v):
        v = np.asarray(v, np.float32)
        return base64.b64encode((v / np.linalg.norm(v)).astype(np.float16).tobytes()).decode()

    shards = [ShardResults(0, 2), ShardResults(1, 2)]
    scene = {"a": [1, 0, 0, 0], "b": [0, 1, 0, 0], "c": [0, 0, 1, 0], "d": [0, 0, 0, 1]}
    rows = [("a1", 0, "a", 0.99, "a"), ("a2", 0, "a", 0.98, "a"), ("a3", 0, "a", 0.97, "a"), ("c1", 0, "c", 0.10, "c"),
            ("b1", 1, "b", 0.96, "b"), ("b2", 1, "b", 0.95, "b"), ("d1", 1, "d", 0.20, "d")]
    for fid, shard, sc, score, log in rows:
        v = np.array(scene[sc], np.float32) + 0.01 * (int(fid[1]) - 1)
        shards[shard].add(ScoredEntry(fid, f"/s/{fid}.jpg", f"mcap:/logs/{log}.mcap#/cam", "segmentation:1",
                                      "depth:1", score, emb(v), emb([0.5, 0.5])))
    for s in shards:
        s.save(tmp_path)
    ranking = merge_shards(tmp_path, 2)
    assert [r.frame_id for r in ranking.frames[:4]] == ["a1", "a2", "a3", "b1"]
    picks = select_fleet(ranking, 4, SelectionSpec.parse("score=1,diversity=1"))
    assert [p.id for p in picks] == ["a1", "b1", "d1", "c1"]  # one per scene, best score first
    assert picks[1].distance == pytest.approx(np.sqrt(2), abs=0.02)  # orthogonal scenes, float16 storage
    capped = select_fleet(ranking, 3, SelectionSpec.parse("score=1,log_cap=1"))
    assert [p.log_id for p in capped] == ["/logs/a.mcap", "/logs/b.mcap", "/logs/d.mcap"]
    assert cli.main(["fleet", "ranking", "--results", str(tmp_path), "--count", "2", "--top", "2",
                     "--selection", "score=1,diversity=1"]) == 0
    out = capsys.readouterr().out
    assert "2 of 7 frames picked from 2 drive logs" in out and " a1 " in out and " b1 " in out
    shards[1].add(ScoredEntry("e1", "/s/e1.jpg", "mcap:/logs/e.mcap#/cam", "segmentation:1", "depth:1", 0.5))
    shards[1].save(tmp_path)
    with pytest.raises(InvalidInput, match="needs each frame's embedding, but 1 of 8"):
        select_fleet(merge_shards(tmp_path, 2), 2, SelectionSpec.parse("diversity=1"))


# ---------------------------------------------------------------- watching

def _job(active=0, succeeded=0, failed=0, completed="", failed_indexes=None, condition=None):
    conditions = [k.V1JobCondition(type=condition[0], status="True", reason=condition[1])] if condition else None
    return k.V1Job(status=k.V1JobStatus(active=active, succeeded=succeeded, failed=failed,
                                        completed_indexes=completed, failed_indexes=failed_indexes,
                                        conditions=conditions))


class _BatchApi:
    """Answers read_namespaced_job_status with the next V1Job of a script (what BatchV1Api returns)."""

    def __init__(self, jobs):
        self.jobs = list(jobs)
        self.calls = 0

    def read_namespaced_job_status(self, name, namespace):
        self.calls += 1
        return self.jobs[min(self.calls, len(self.jobs)) - 1]


def test_watch_reports_each_change_until_the_job_completes():
    api = _BatchApi([_job(active=2), _job(active=2), _job(active=1, succeeded=1, completed="0"),
                     _job(succeeded=2, failed=1, completed="0-1", condition=("Complete", None))])
    seen = []
    final = watch_job(api, "segxal-fleet-rank", "segxal", on_progress=seen.append, sleep=lambda s: None)
    assert final.outcome == "complete" and final.completed_indexes == "0-1" and final.failed == 1
    assert [p.succeeded for p in seen] == [0, 1, 2]  # the repeated status is not reported twice
    assert "2/2 indexes done" in final.line(2)


def test_watch_ends_on_failed_indexes_and_times_out_when_stuck():
    failed = job_progress(_job(succeeded=3, failed=4, completed="0-2", failed_indexes="3",
                               condition=("Failed", "FailedIndexes")))
    assert failed.finished and failed.outcome == "failed" and failed.reason == "FailedIndexes"
    assert "failed [3]" in failed.line(4)
    with pytest.raises(NotReady, match="still running"):
        watch_job(_BatchApi([_job(active=1)]), "j", "ns", timeout_s=0.0, sleep=lambda s: None)
