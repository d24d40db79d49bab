"""Versions published by the real trainer reach a real Triton Inference Server without a failed
request: in poll mode Triton finds the new version on its own; in explicit mode it serves it after
RepositoryModelLoad (the project's InferenceClient.load_model). Clients keep sending requests all
along, and each answer is checked against the version it names (the project's server, pinned to
that version, on the same repository).

The repository is switched to the Python-backend flavour once (Triton here has no native ONNX
Runtime backend); the trainer writes its usual native config with each version, and the
repository keeps its flavour (services.common.model_repository)."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from segxal.errors import SegxalError
from services.common.model_repository import ModelRepository, flavour_of
from services.inference.client import InferenceClient
from services.trainer.api import JobRequest, JobState, PublishPolicy
from services.trainer.client import TrainerClient
from tests.inference_support import running_server
from tests.trainer_support import frame_images, region_annotations, running_trainer, trainer_config, \
    wait_for_version
from tests.triton_support import python_flavour, running_triton, triton_install  # noqa: F401

ANY_MIOU = PublishPolicy(miou_tolerance=1.0)


class _Load:
    """Threads sending segmentation requests to `target` until stopped; every answer and every
    failure is kept."""

    def __init__(self, target: str, images: np.ndarray, threads: int = 3):
        self.images = images
        self.answers: list[dict] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._client = InferenceClient(target, timeout_s=30)
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        while not self._stop.is_set():
            try:
                self.answers.append(self._client.infer_segmentation(self.images))
            except SegxalError as e:
                self.failures.append(e)

    def __enter__(self) -> "_Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._client.close()

    def versions(self) -> set[str]:
        return {a["model_version"] for a in list(self.answers)}


def _publish_next(client: TrainerClient, data, root, cycle: int) -> int:
    job = client.wait(client.start_job(JobRequest(
        cycle_id=f"c{cycle}", annotations=region_annotations(data, root / "annotations", cycle), publish=True,
        policy=ANY_MIOU)).job_id, timeout_s=300)
    assert job.state == JobState.SUCCEEDED, job.error
    return job.report.published_version


def _check_answers(load: _Load, reference: dict[str, dict]) -> None:
    """Every answer equals the project's server's answer for the version it names."""
    assert not load.failures, load.failures[:3]
    for answer in load.answers:
        expected = reference[answer["model_version"]]
        for k in ("labels", "ebu", "cam", "pmax"):
            np.testing.assert_array_equal(answer[k], expected[k], err_msg=f"v{answer['model_version']} {k}")


@pytest.fixture(scope="module")
def trained(triton_install, tiny_dataset, tmp_path_factory):  # noqa: F811 - the fixture imported above
    root = tmp_path_factory.mktemp("triton_reload")
    cfg = trainer_config(tiny_dataset, root)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        first = client.wait(client.start_job(JobRequest(cycle_id="c0", publish=True)).job_id, timeout_s=300)
        assert first.report.published_version == 1, first.error
        repo = python_flavour(ModelRepository(cfg.repository))
        yield dict(root=root, data=tiny_dataset, repo=repo, client=client, install=triton_install)


def _reference(repo: ModelRepository, images: np.ndarray, versions: list[int], tmp: Path) -> dict[str, dict]:
    """The project's server's answers, version by version, from a copy of the repository whose
    version_policy serves every version."""
    shutil.copytree(repo.root, tmp)
    copy = ModelRepository(tmp)
    config = copy.read_config("segmentation")
    config.version_policy.all.SetInParent()
    copy.write_config("segmentation", config)
    with running_server(copy) as server, InferenceClient(server.target) as c:
        return {str(v): c.infer_segmentation(images, version=str(v)) for v in versions}


def test_poll_mode_serves_the_trainers_next_version_without_a_failed_request(trained):
    repo, images = trained["repo"], frame_images(trained["data"])
    with running_triton(trained["install"], repo, trained["root"] / "triton-poll", control_mode="poll",
                        poll_interval_s=1) as triton, InferenceClient(triton.target, timeout_s=30) as probe:
        assert wait_for_version(probe, images, 1)["labels"].shape == (2, 64, 128)
        with _Load(triton.target, images) as load:
            version = _publish_next(trained["client"], trained["data"], trained["root"], cycle=1)
            assert version == 2
            assert flavour_of(repo.read_config("segmentation")) == "python"  # the trainer kept it
            wait_for_version(probe, images, 2, timeout_s=60)
            while len(load.answers) < 10 or "2" not in load.versions():  # some answers after the swap
                threading.Event().wait(0.05)
    assert load.versions() <= {"1", "2"} and "2" in load.versions()
    _check_answers(load, _reference(repo, images, [1, 2], trained["root"] / "ref-poll"))


def test_explicit_mode_serves_the_next_version_after_repository_model_load(trained):
    repo, images = trained["repo"], frame_images(trained["data"])
    current = max(repo.list_versions("segmentation"))
    with running_triton(trained["install"], repo, trained["root"] / "triton-explicit", control_mode="explicit",
                        load_models=["segmentation"]) as triton, \
            InferenceClient(triton.target, timeout_s=30) as control:
        assert wait_for_version(control, images, current)
        with _Load(triton.target, images) as load:
            version = _publish_next(trained["client"], trained["data"], trained["root"], cycle=2)
            assert version == current + 1
            # explicit mode: the new version is on disk, Triton still serves the old one
            assert control.infer_segmentation(images)["model_version"] == str(current)
            control.load_model("segmentation")  # RepositoryModelLoad, under load
            assert control.infer_segmentation(images)["model_version"] == str(version)
            before = len(load.answers)
            while len(load.answers) < before + 5:
                threading.Event().wait(0.05)
    assert load.versions() == {str(current), str(version)}
    _check_answers(load, _reference(repo, images, [current, version], trained["root"] / "ref-explicit"))
