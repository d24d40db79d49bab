"""The trainer fetches a pool's accepted annotations from the real coordinator (its
ListAnnotations, through services.coordinator.client) and trains on them."""
import numpy as np
import pytest

from segxal.data.cityscapes import list_frames, load_train_ids
from segxal.errors import FailedPrecondition
from segxal.labels import IGNORE
from services.coordinator.client import cityscapes_source
from services.trainer.api import JobRequest, JobState
from services.trainer.client import TrainerClient
from tests.coordinator_support import coordinator_config, database_url, running_coordinator
from tests.trainer_support import running_trainer, trainer_config


def _ground_truth(data, uri: str) -> np.ndarray:
    frame = next(f for f in list_frames(data, "train") if str(f.image) in uri)
    return load_train_ids(frame)


def test_a_job_trains_on_every_annotation_the_pool_accepted(tiny_dataset, tmp_path):
    coord_storage = tmp_path / "coordinator"
    coord_storage.mkdir()
    with database_url("sqlite", tmp_path) as db, \
            running_coordinator(coordinator_config(db, coord_storage)) as (coordinator, coord):
        pool = coord.create_pool("drive")
        coord.ingest(pool.pool_id, [cityscapes_source(str(tiny_dataset), "train")])
        cycle = coord.start_cycle(pool.pool_id, 3, selection="random", random_seed=1)
        coord.rank_cycle(cycle.cycle_id)
        for i, task in enumerate(coord.lease(pool.pool_id, max_tasks=3)):
            labels = _ground_truth(tiny_dataset, task.frame_uri)
            if i == 0:
                labels = np.where(np.arange(labels.shape[1]) < labels.shape[1] // 2, labels, IGNORE).astype(np.uint8)
            coord.submit(task, labels)
        accepted = list(coord.annotations(pool.pool_id))
        assert len(accepted) == 3

        cfg = trainer_config(tiny_dataset, tmp_path, coordinator=coordinator.target,
                             storage_roots=[str(tiny_dataset), str(coord_storage)])
        with running_trainer(cfg) as trainer, TrainerClient(trainer.target) as client:
            job = client.wait(client.start_job(JobRequest(cycle_id=cycle.cycle_id, pool_id=pool.pool_id,
                                                          publish=True)).job_id, timeout_s=120)
            assert job.state == JobState.SUCCEEDED, job.error
            assert job.spec.annotation_count == 3 and job.spec.seed_frame_count == 8
            assert job.report.published_version == 1
            assert client.list_versions()[0][0].cycle_id == cycle.cycle_id


def test_pool_id_needs_a_coordinator(tiny_dataset, tmp_path):
    with running_trainer(trainer_config(tiny_dataset, tmp_path)) as trainer, TrainerClient(trainer.target) as client:
        with pytest.raises(FailedPrecondition, match="no coordinator"):
            client.start_job(JobRequest(pool_id="p1"))
