"""Publishing gates, through the real trainer server and a real inference server: a regression
beyond the tolerance, a current version that changed under a job, a diverged run and a failed
parity check are all refused, and the served version stays what it was."""
import pytest

from segxal.errors import FailedPrecondition
from segxal.export import ExportConfig
from services.common.model_repository import ModelRepository
from services.inference.client import InferenceClient
from services.trainer.api import JobRequest, JobState, PublishPolicy, TrainingOptions
from services.trainer.client import TrainerClient
from tests.inference_support import running_server
from tests.trainer_support import SIZE, frame_images, region_annotations, running_trainer, trainer_config, wait_for_version


@pytest.fixture(scope="module")
def env(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_gates")
    cfg = trainer_config(tiny_dataset, root)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        first = client.wait(client.start_job(JobRequest(cycle_id="c0", publish=True)).job_id, timeout_s=120)
        assert first.report.published_version == 1, first.error
        with running_server(ModelRepository(cfg.repository), poll_interval_s=0.2) as inference, \
                InferenceClient(inference.target, timeout_s=10) as infer:
            yield dict(root=root, data=tiny_dataset, cfg=cfg, client=client, infer=infer)


def _cycle(env, cycle: int, **kw) -> JobRequest:
    return JobRequest(cycle_id=f"c{cycle}", annotations=region_annotations(
        env["data"], env["root"] / "annotations", cycle, count=2), **kw)


def _served(env) -> str:
    return env["infer"].infer_segmentation(frame_images(env["data"], 1))["model_version"]


def test_regression_beyond_the_tolerance_is_refused_unless_forced(env):
    client = env["client"]
    # a tolerance of -1 asks for a gain of a whole mIoU point of 1.0: no candidate can meet it
    job = client.wait(client.start_job(_cycle(env, 1, publish=True, policy=PublishPolicy(miou_tolerance=-1.0))).job_id,
                      timeout_s=120)
    assert job.state == JobState.SUCCEEDED and job.report.published_version == 0
    assert "beyond the tolerance -1.0000" in job.report.publish_refused
    assert "version 1 stays current" in job.report.publish_refused
    assert client.list_versions()[1] == 1 and _served(env) == "1"

    with pytest.raises(FailedPrecondition, match="tolerance"):
        client.publish(job.job_id, PublishPolicy(miou_tolerance=-1.0))
    assert client.list_versions()[1] == 1
    version, job = client.publish(job.job_id, PublishPolicy(force=True, miou_tolerance=-1.0))
    assert version.version == 2 and job.report.published_version == 2 and job.report.publish_refused == ""
    wait_for_version(env["infer"], frame_images(env["data"], 1), 2)


def test_a_job_whose_base_was_rolled_back_meanwhile_is_refused_unless_forced(env):
    client = env["client"]
    job = client.wait(client.start_job(_cycle(env, 2)).job_id, timeout_s=120)
    assert job.state == JobState.SUCCEEDED and job.base_version == 2
    assert client.rollback(1).version == 3
    with pytest.raises(FailedPrecondition, match="current version is 3, not version 2"):
        client.publish(job.job_id, PublishPolicy(miou_tolerance=1.0))
    assert client.list_versions()[1] == 3
    version, _ = client.publish(job.job_id, PublishPolicy(force=True))
    assert version.version == 4 and version.base_version == 2
    wait_for_version(env["infer"], frame_images(env["data"], 1), 4)


def test_a_diverged_run_fails_and_publishes_nothing(env):
    client = env["client"]
    job = client.wait(client.start_job(_cycle(env, 3, publish=True, policy=PublishPolicy(force=True),
                                              options=TrainingOptions(learning_rate=1e30))).job_id, timeout_s=120)
    assert job.state == JobState.FAILED and job.error_code == "FAILED_PRECONDITION"
    assert "training diverged: loss nan" in job.error
    with pytest.raises(FailedPrecondition, match="failed"):
        client.publish(job.job_id, PublishPolicy(force=True))
    assert client.list_versions()[1] == 4 and _served(env) == "4"


def test_a_failed_parity_check_is_never_published_even_forced(env):
    # The same repository and state under a trainer whose parity thresholds no export can meet
    # (label agreement above 1): the export is checked, fails, and force does not help.
    strict = trainer_config(env["data"], env["root"], export=ExportConfig(trace_hw=SIZE, min_label_agreement=1.0001))
    with running_trainer(strict) as trainer, TrainerClient(trainer.target) as client:
        job = client.wait(client.start_job(_cycle(env, 4, publish=True, policy=PublishPolicy(force=True))).job_id,
                          timeout_s=120)
        assert job.state == JobState.SUCCEEDED and not job.report.parity_passed
        assert "label agreement" in job.report.parity_summary and job.report.published_version == 0
        assert "parity" in job.report.publish_refused
        with pytest.raises(FailedPrecondition, match="parity check"):
            client.publish(job.job_id, PublishPolicy(force=True))
        assert client.list_versions()[1] == 4
    assert _served(env) == "4"
