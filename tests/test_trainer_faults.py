"""Bad input and faults, through the real trainer server: no annotations, corrupt or mismatched
files, paths outside the storage roots, an unwritable repository, a current version without
training state, a trainer stopped mid-training (resumes) and one killed with SIGKILL mid-publish
(the repository keeps only complete versions; the restart cleans up and finishes the job)."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from segxal import imageio
from segxal.errors import FailedPrecondition, InvalidInput, NotFound, PermissionDenied
from segxal.storage import local_uri
from services.common.model_repository import ModelRepository
from services.trainer.api import AnnotationRef, JobPhase, JobRequest, JobState, PublishPolicy, TrainingOptions
from services.trainer.client import TrainerClient
from tests.trainer_support import pool_frames, region_annotations, running_trainer, trainer_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_faults")
    cfg = trainer_config(tiny_dataset, root)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        first = client.wait(client.start_job(JobRequest(cycle_id="c0", publish=True)).job_id, timeout_s=120)
        assert first.report.published_version == 1, first.error
        yield dict(root=root, data=tiny_dataset, cfg=cfg, client=client, repo=ModelRepository(cfg.repository))


def _one(env, **ref) -> JobRequest:
    frame = pool_frames(env["data"])[0]
    return JobRequest(cycle_id="bad", publish=True,
                      annotations=[AnnotationRef(frame_uri=ref.pop("frame_uri", local_uri(frame.image)), **ref)])


def _unchanged(env) -> None:
    assert env["repo"].list_versions("segmentation") == [1]
    assert env["client"].list_versions()[1] == 1


def test_a_cycle_without_annotations_is_refused(env):
    with pytest.raises(FailedPrecondition, match="cycle c1: no annotations to fine-tune on"):
        env["client"].start_job(JobRequest(cycle_id="c1", publish=True))
    _unchanged(env)


def test_a_corrupt_annotation_file_is_refused_naming_it(env):
    path = env["root"] / "annotations" / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))  # a PNG signature, then garbage
    with pytest.raises(InvalidInput, match=r"annotation 0 \(a-7\).*corrupt\.png.*not a readable image"):
        env["client"].start_job(_one(env, mask_uri=local_uri(path), annotation_id="a-7"))
    _unchanged(env)


@pytest.mark.parametrize("mask, message", [
    (np.zeros((32, 64), np.uint8), "mask is 32 x 64, the frame is 64 x 128"),
    (np.full((64, 128), 40, np.uint8), r"class ids \[40\] are outside the 19 classes"),
    (np.zeros((64, 128, 3), np.uint8), "single-channel"),
])
def test_a_mask_that_does_not_fit_its_frame_is_refused(env, mask, message):
    with pytest.raises(InvalidInput, match=message):
        env["client"].start_job(_one(env, mask_png=imageio.encode_png(mask)))
    _unchanged(env)


def test_files_outside_the_storage_roots_or_missing_are_refused(env):
    outside = env["root"] / "elsewhere.png"
    imageio.write_png(outside, np.zeros((64, 128), np.uint8))
    with pytest.raises(PermissionDenied, match="outside the storage roots"):
        env["client"].start_job(_one(env, mask_uri=local_uri(outside)))
    with pytest.raises(PermissionDenied, match="outside the storage roots"):
        env["client"].start_job(_one(env, frame_uri=str(outside), mask_png=imageio.encode_png(np.zeros((64, 128), np.uint8))))
    with pytest.raises(NotFound, match="missing.png: no such file"):
        env["client"].start_job(_one(env, mask_uri=str(env["root"] / "annotations" / "missing.png")))
    with pytest.raises(InvalidInput, match="exactly one of mask_uri or mask_png"):
        env["client"].start_job(_one(env))
    _unchanged(env)


@contextlib.contextmanager
def _unwritable(folder: Path):
    """Make a folder unwritable even for root (chattr +i); skip where that is impossible."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        made, undo = True, None
    try:
        probe = folder / ".probe"
        try:
            probe.mkdir()
            probe.rmdir()
            pytest.skip(f"cannot make {folder} unwritable on this machine")
        except OSError:
            pass
        assert made
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            folder.chmod(0o755)


def test_an_unwritable_repository_is_refused_and_the_version_stays(env):
    client = env["client"]
    ready = client.wait(client.start_job(JobRequest(
        cycle_id="c1", annotations=region_annotations(env["data"], env["root"] / "annotations", 1, count=2),
        options=TrainingOptions(epochs=1))).job_id, timeout_s=120)
    assert ready.state == JobState.SUCCEEDED, ready.error
    with _unwritable(Path(env["cfg"].repository) / "segmentation"):
        with pytest.raises(FailedPrecondition, match="segmentation is not writable"):
            client.start_job(JobRequest(cycle_id="c1", publish=True, annotations=region_annotations(
                env["data"], env["root"] / "annotations", 1, count=2)))
        with pytest.raises(FailedPrecondition, match="not writable"):
            client.publish(ready.job_id, PublishPolicy(force=True))
        _unchanged(env)
    version, _ = client.publish(ready.job_id, PublishPolicy(force=True))  # writable again
    assert version.version == 2


def test_a_current_version_without_training_state_is_refused(env):
    client, repo = env["client"], env["repo"]
    foreign = repo.publish("segmentation", repo.version_dir("segmentation", 1) / "model.onnx")  # not by the trainer
    with pytest.raises(FailedPrecondition, match=f"version {foreign} has no training state"):
        client.start_job(JobRequest(cycle_id="c2", annotations=region_annotations(
            env["data"], env["root"] / "annotations", 2, count=1)))
    assert client.rollback(1).has_training_state  # the way out the message names


def test_a_trainer_stopped_mid_training_resumes_its_job(env, tmp_path):
    cfg = trainer_config(env["data"], tmp_path)
    anns = region_annotations(env["data"], tmp_path / "annotations", 1, count=2)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        job = client.start_job(JobRequest(cycle_id="c0", annotations=anns, options=TrainingOptions(epochs=60)))
        for progress in client.watch(job.job_id, timeout_s=120):
            if progress.epoch >= 2:
                break
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        events = list(client.watch(job.job_id, timeout_s=120))
        done = client.get_job(job.job_id)
    assert done.state == JobState.SUCCEEDED, done.error
    resumed = [e.epoch for e in events if e.phase == JobPhase.TRAINING and e.epoch > 0]
    assert resumed and min(resumed) > 2  # no epoch before the stop ran again
    assert len(done.report.epoch_losses) == 60 and all(np.isfinite(done.report.epoch_losses))


class _TrainerProcess:
    """python -m services.trainer.main as a child process (stdout: the port; stderr: the log)."""

    def __init__(self, cfg, env_vars: dict):
        args = [sys.executable, "-m", "services.trainer.main", "--repo", cfg.repository, "--state", cfg.state_dir,
                "--data", cfg.data, "--seed-data", cfg.seed_data, "--seed-frames", str(cfg.seed_frames),
                "--size", f"{cfg.size[0]}x{cfg.size[1]}", "--width", str(cfg.unet.width),
                "--unet-depth", str(cfg.unet.depth), "--epochs", str(cfg.epochs), "--torch-threads", "1",
                "--host", "127.0.0.1", "--port", "0"]
        for root in cfg.storage_roots:
            args += ["--storage-root", root]
        self.proc = subprocess.Popen(args, cwd=REPO_ROOT, env={**os.environ, **env_vars}, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()
        line = self.proc.stdout.readline()
        assert "listening on port" in line, "".join(self.log)
        self.target = f"127.0.0.1:{int(line.rsplit(' ', 1)[1])}"

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.log):
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.log)
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def test_a_trainer_killed_mid_publish_leaves_only_complete_versions(env, tmp_path):
    cfg = trainer_config(env["data"], tmp_path)
    repo = ModelRepository(cfg.repository)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        assert client.wait(client.start_job(JobRequest(cycle_id="c0", publish=True)).job_id,
                           timeout_s=120).report.published_version == 1
    v1_bytes = (repo.version_dir("segmentation", 1) / "model.onnx").read_bytes()

    child = _TrainerProcess(cfg, {"SEGXAL_TRAINER_DEBUG_PUBLISH_PAUSE_S": "60"})
    try:
        with TrainerClient(child.target) as client:
            job = client.start_job(JobRequest(cycle_id="c1", publish=True, policy=PublishPolicy(force=True),
                                              annotations=region_annotations(env["data"], tmp_path / "annotations", 1)))
        child.wait_for_log("publish paused", timeout_s=45)  # the new version is complete in the temp folder
    finally:
        child.kill()

    model_dir = Path(cfg.repository) / "segmentation"
    temps = [p for p in model_dir.iterdir() if p.name.startswith(".publish-")]
    assert len(temps) == 1 and (temps[0] / "model.onnx").is_file()  # left behind by the kill...
    assert repo.list_versions("segmentation") == [1]  # ...and invisible to readers
    assert (repo.version_dir("segmentation", 1) / "model.onnx").read_bytes() == v1_bytes
    onnx.checker.check_model(str(repo.version_dir("segmentation", 1) / "model.onnx"))

    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        assert not [p for p in model_dir.iterdir() if p.name.startswith(".publish-")]  # cleaned at start
        done = client.wait(job.job_id, timeout_s=120)  # the job resumes and publishes
        assert done.state == JobState.SUCCEEDED and done.report.published_version == 2, done.error
        assert client.list_versions()[1] == 2
    assert repo.list_versions("segmentation") == [1, 2]
    onnx.checker.check_model(str(repo.version_dir("segmentation", 2) / "model.onnx"))
    shutil.rmtree(tmp_path / "state", ignore_errors=True)
