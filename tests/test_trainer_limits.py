"""The trainer's limits, through the real trainer server: out-of-range epochs, batch sizes and
learning rates are refused at StartJob naming the limit; a queued or running job can be cancelled
(CancelJob, `segxal trainer cancel`) and is never resumed; a job saved beyond the limits does not
block a restarted trainer; and an export with non-finite weights or outputs is never published,
first versions and forced publishes included."""
import math

import pytest

from app.cli import main as segxal_main
from segxal.errors import FailedPrecondition, InvalidInput
from services.common.model_repository import ModelRepository
from services.trainer.api import JobRequest, JobState, PublishPolicy, TrainingOptions
from services.trainer.client import TrainerClient
from tests.trainer_support import SEED_FRAMES, region_annotations, running_trainer, trainer_config

LONG = 200  # epochs of a job that must still be running when it is cancelled (~0.1 s an epoch)


@pytest.fixture(scope="module")
def env(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_limits")
    cfg = trainer_config(tiny_dataset, root, epochs=1)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        yield dict(root=root, data=tiny_dataset, cfg=cfg, client=client, trainer=trainer)


def _watch_until_epoch(client: TrainerClient, job_id: str, epoch: int) -> None:
    for progress in client.watch(job_id, timeout_s=120):
        if progress.epoch >= epoch:
            return
    raise AssertionError(f"job {job_id} ended before epoch {epoch}: {client.get_job(job_id)}")


@pytest.mark.parametrize("options, message", [
    (TrainingOptions(epochs=2**31 - 1), r"epochs must be 1\.\.1000 .*--max-epochs.*got 2147483647"),
    (TrainingOptions(batch_size=2**31 - 1), r"batch_size must be 1\.\.64 .*--max-batch-size.*got 2147483647"),
    (TrainingOptions(epochs=-1), r"epochs must be 1\.\.1000"),
    (TrainingOptions(learning_rate=math.inf), r"learning_rate must be finite and > 0 .*got inf"),
    (TrainingOptions(learning_rate=math.nan), r"learning_rate must be finite and > 0 .*got nan"),
    (TrainingOptions(learning_rate=-1e-3), r"learning_rate must be finite and > 0"),
])
def test_out_of_range_hyper_parameters_are_refused_naming_the_limit(env, options, message):
    client = env["client"]
    before = len(client.list_jobs())
    with pytest.raises(InvalidInput, match=message):
        client.start_job(JobRequest(cycle_id="c0", options=options))
    assert len(client.list_jobs()) == before  # nothing was queued


def test_a_non_finite_miou_tolerance_is_refused(env):
    with pytest.raises(InvalidInput, match="miou_tolerance must be finite"):
        env["client"].start_job(JobRequest(cycle_id="c0", publish=True, policy=PublishPolicy(miou_tolerance=math.nan)))


def test_queued_and_running_jobs_are_cancelled_and_later_jobs_run(env):
    client = env["client"]
    running = client.start_job(JobRequest(cycle_id="long", options=TrainingOptions(epochs=LONG)))
    queued = client.start_job(JobRequest(cycle_id="queued", options=TrainingOptions(epochs=LONG)))
    after = client.start_job(JobRequest(cycle_id="after", options=TrainingOptions(epochs=1)))
    _watch_until_epoch(client, running.job_id, 1)

    cancelled = client.cancel_job(queued.job_id)
    assert cancelled.state == JobState.CANCELLED and cancelled.started_unix_s == 0  # it never ran
    stopping = client.cancel_job(running.job_id)
    assert stopping.cancel_requested and stopping.state in (JobState.RUNNING, JobState.CANCELLED)
    stopped = client.wait(running.job_id, timeout_s=60)
    assert stopped.state == JobState.CANCELLED and len(stopped.report.epoch_losses) < LONG

    done = client.wait(after.job_id, timeout_s=120)  # the worker is free again
    assert done.state == JobState.SUCCEEDED, done.error
    assert client.cancel_job(queued.job_id).state == JobState.CANCELLED  # again: the same answer
    with pytest.raises(FailedPrecondition, match="succeeded; only a queued or running job can be cancelled"):
        client.cancel_job(after.job_id)


def test_a_cancelled_job_is_not_resumed_after_a_restart(env, tmp_path):
    cfg = trainer_config(env["data"], tmp_path, epochs=1)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        job = client.start_job(JobRequest(cycle_id="long", options=TrainingOptions(epochs=LONG)))
        _watch_until_epoch(client, job.job_id, 1)
        client.cancel_job(job.job_id)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        assert client.get_job(job.job_id).state == JobState.CANCELLED
        nxt = client.wait(client.start_job(JobRequest(cycle_id="next")).job_id, timeout_s=120)
        assert nxt.state == JobState.SUCCEEDED, nxt.error


def test_a_saved_job_beyond_the_limits_fails_at_restart_instead_of_blocking(env, tmp_path):
    # saved by a trainer that allowed it (as any job was before the limits), resumed by one that does not
    lax = trainer_config(env["data"], tmp_path, epochs=1, max_epochs=10**6)
    with running_trainer(lax) as trainer, TrainerClient(trainer.target) as client:
        job = client.start_job(JobRequest(cycle_id="huge", options=TrainingOptions(epochs=10**6)))
        _watch_until_epoch(client, job.job_id, 1)
    strict = trainer_config(env["data"], tmp_path, epochs=1)
    with running_trainer(strict) as trainer, TrainerClient(trainer.target) as client:
        failed = client.get_job(job.job_id)
        assert failed.state == JobState.FAILED and failed.error_code == "INVALID_ARGUMENT"
        assert "epochs 1000000 is out of 1..1000 (--max-epochs)" in failed.error
        nxt = client.wait(client.start_job(JobRequest(cycle_id="next")).job_id, timeout_s=120)
        assert nxt.state == JobState.SUCCEEDED, nxt.error


def test_segxal_trainer_cancel_cancels_a_job(env, capsys):
    client = env["client"]
    blocker = client.start_job(JobRequest(cycle_id="long", options=TrainingOptions(epochs=LONG)))
    queued = client.start_job(JobRequest(cycle_id="queued"))
    assert segxal_main(["trainer", "cancel", queued.job_id, "--trainer", env["trainer"].target]) == 0
    assert f"job {queued.job_id}: cancelled" in capsys.readouterr().out
    assert client.get_job(queued.job_id).state == JobState.CANCELLED
    assert segxal_main(["trainer", "cancel", blocker.job_id, "--trainer", env["trainer"].target]) == 0
    assert client.wait(blocker.job_id, timeout_s=60).state == JobState.CANCELLED
    assert segxal_main(["trainer", "cancel", "no-such-job", "--trainer", env["trainer"].target]) == 2
    assert "no job 'no-such-job'" in capsys.readouterr().err


def test_an_export_with_non_finite_values_is_never_published_even_first_or_forced(env, tmp_path):
    # One epoch over the seed set in one batch: the loss is taken before the only step, so it is
    # finite, and the step (learning rate 1e30, finite) leaves weights whose outputs overflow.
    cfg = trainer_config(env["data"], tmp_path, epochs=1)
    repo = ModelRepository(cfg.repository)
    with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
        job = client.wait(client.start_job(JobRequest(
            cycle_id="c0", publish=True, policy=PublishPolicy(force=True),
            options=TrainingOptions(epochs=1, batch_size=SEED_FRAMES, learning_rate=1e30))).job_id, timeout_s=120)
        assert job.state == JobState.SUCCEEDED and job.report.published_version == 0
        assert "non-finite" in job.report.publish_refused and "never published" in job.report.publish_refused
        with pytest.raises(FailedPrecondition, match="non-finite"):
            client.publish(job.job_id, PublishPolicy(force=True))
        assert client.list_versions() == ([], 0)
        assert repo.list_versions("segmentation") == [] if (repo.root / "segmentation").exists() else True

        # a sound job on the same trainer still publishes version 1
        good = client.wait(client.start_job(JobRequest(cycle_id="c1", publish=True, annotations=region_annotations(
            env["data"], tmp_path / "annotations", 1, count=2))).job_id, timeout_s=120)
        assert good.report.published_version == 1, (good.error, good.report.publish_refused)
