"""The trainer through its real gRPC server, with a real inference server polling the same model
repository: a job runs and publishes the next version, the inference server serves it without a
restart, rollback serves the older weights again, progress streams, the same seed repeats a run."""
import math

import numpy as np
import pytest

from services.common.model_repository import ModelRepository
from services.inference.client import InferenceClient
from services.trainer.api import JobPhase, JobRequest, JobState, PublishPolicy, TrainingOptions
from services.trainer.client import TrainerClient
from tests.inference_support import running_server
from tests.trainer_support import (frame_images, region_annotations, running_trainer, trainer_config,
                                   wait_for_version)

# the service test checks the mechanics; the gates have their own file
ANY_MIOU = PublishPolicy(miou_tolerance=1.0)


@pytest.fixture(scope="module")
def env(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_service")
    cfg = trainer_config(tiny_dataset, root)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        first = client.wait(client.start_job(JobRequest(cycle_id="c0", publish=True)).job_id, timeout_s=120)
        repo = ModelRepository(cfg.repository)
        with running_server(repo, poll_interval_s=0.2) as inference, \
                InferenceClient(inference.target, timeout_s=10) as infer:
            # only the newest version serves (version_policy latest 1): keep version 1's answers now
            v1 = wait_for_version(infer, frame_images(tiny_dataset), 1) if first.report.published_version else None
            yield dict(root=root, data=tiny_dataset, cfg=cfg, client=client, infer=infer, first=first, repo=repo,
                       v1=v1)


def test_first_job_trains_the_seed_set_and_publishes_version_1(env):
    job = env["first"]
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.report.published_version == 1 and job.base_version == 0
    assert job.spec.seed_frame_count == 8 and job.spec.annotation_count == 0 and job.train_frame_count == 8
    assert job.report.parity_passed and "label agreement" in job.report.parity_summary
    assert 0.0 <= job.report.candidate.miou <= 1.0 and job.report.candidate.frames == 8
    assert env["repo"].list_versions("segmentation") == [1]
    assert env["v1"]["labels"].shape == (2, 64, 128)


def test_cycle_job_publishes_next_version_served_without_restart(env):
    client, infer, images = env["client"], env["infer"], frame_images(env["data"])
    v1 = env["v1"]
    request = JobRequest(cycle_id="c1", annotations=region_annotations(env["data"], env["root"] / "annotations", 1),
                         publish=True, policy=ANY_MIOU)
    job = client.start_job(request)
    assert job.state == JobState.QUEUED and job.spec.annotation_count == 4 and job.train_frame_count == 12
    events = list(client.watch(job.job_id, timeout_s=120))

    phases = [e.phase for e in events]
    for phase in (JobPhase.TRAINING, JobPhase.EVALUATING, JobPhase.EXPORTING, JobPhase.PUBLISHING, JobPhase.DONE):
        assert phase in phases
    epochs = [e for e in events if e.phase == JobPhase.TRAINING and e.epoch > 0]
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert all(math.isfinite(e.loss) and e.eta_s >= 0 for e in epochs) and epochs[-1].eta_s == 0
    assert events[-1].state == JobState.SUCCEEDED

    job = client.get_job(job.job_id)
    assert job.base_version == 1 and job.report.published_version == 2
    assert job.report.base is not None and job.report.epoch_losses == [e.loss for e in epochs]
    v2 = wait_for_version(infer, images, 2)  # the same server process: hot reload
    assert not np.array_equal(v1["cam"], v2["cam"])  # other weights


def test_versions_list_their_metrics_and_rollback_serves_older_weights_again(env):
    client, infer, images = env["client"], env["infer"], frame_images(env["data"])
    versions, current = client.list_versions()
    assert [v.version for v in versions] == [1, 2] and current == 2
    assert versions[1].current and not versions[0].current
    assert versions[1].cycle_id == "c1" and versions[1].base_version == 1 and versions[1].has_training_state
    assert versions[0].metrics.split == "val" and 0.0 <= versions[1].metrics.miou <= 1.0
    v1 = env["v1"]

    rolled = client.rollback(1)
    assert rolled.version == 3 and rolled.rolled_back_from == 1 and rolled.current
    assert rolled.metrics == versions[0].metrics and rolled.has_training_state
    v3 = wait_for_version(infer, images, 3)
    for name in ("labels", "ebu", "cam", "pmax"):
        np.testing.assert_array_equal(v3[name], v1[name])

    # the next job fine-tunes from the rolled-back weights
    job = client.wait(client.start_job(JobRequest(
        cycle_id="c2", annotations=region_annotations(env["data"], env["root"] / "annotations", 2),
        publish=True, policy=ANY_MIOU)).job_id, timeout_s=120)
    assert job.base_version == 3 and job.report.published_version == 4
    wait_for_version(infer, images, 4)
    assert client.publish(job.job_id)[0].version == 4  # publishing again answers the same version


def test_the_same_seed_repeats_a_run(env):
    client = env["client"]
    anns = region_annotations(env["data"], env["root"] / "annotations", 3, count=2)
    runs = [client.start_job(JobRequest(cycle_id="repeat", annotations=anns,
                                        options=TrainingOptions(epochs=2, seed=11))) for _ in range(2)]
    done = [client.wait(r.job_id, timeout_s=120) for r in runs]
    assert all(j.state == JobState.SUCCEEDED and j.report.published_version == 0 for j in done)
    assert done[0].base_version == done[1].base_version == 4
    assert done[0].report.epoch_losses == done[1].report.epoch_losses
    assert done[0].report.candidate == done[1].report.candidate
    assert [j.job_id for j in client.list_jobs()][-2:] == [r.job_id for r in runs]
