"""Labeling clients through the real coordinator (SQLite), the real EEM service and the real inference
server on ephemeral ports: the lease library (heartbeats, release on error, lost leases), the machine
oracle and the simulated human, in process and through their command lines."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from clients.labeling import LabelingConfig, LabelingSession, region_masks, work
from clients.machine import MachineOracle, MachineOracleConfig
from clients.simulated_human import GroundTruth, SimulatedHuman, SimulatedHumanConfig, cityscapes_id
from segxal import imageio
from segxal.al.oracles import Cost, machine_oracle
from segxal.data.cityscapes import list_frames, load_train_ids
from segxal.errors import FailedPrecondition
from segxal.labels import IGNORE
from segxal.storage import FrameStorage
from services.coordinator.client import CoordinatorClient
from services.inference.client import InferenceClient
from tests.coordinator_support import REPO_ROOT
from tests.labeling_support import annotations_by_task, eem_pool, random_pool, serving_stack


@pytest.fixture(scope="module")
def stack(tiny_dataset, tmp_path_factory):
    with serving_stack(tmp_path_factory.mktemp("labeling-stack"), tiny_dataset) as s:
        yield s


def _labeling(stack, pool: str, **kw) -> LabelingConfig:
    return LabelingConfig(coordinator=stack.coordinator, pool=pool, **kw)


def _gt(stack, frame_uri: str, shape) -> np.ndarray:
    frames = {f.frame_id: f for f in list_frames(stack.dataset, "val")}
    return load_train_ids(frames[cityscapes_id(frame_uri)], shape)


# ---------------------------------------------------------------- the lease library

def test_heartbeats_keep_a_slow_labelers_lease_from_lapsing(stack):
    pool, (task,) = random_pool(stack, "slow", batch=1)
    cfg = _labeling(stack, "slow", lease_s=1.0, heartbeat_s=0.2)
    stolen = []
    with LabelingSession(cfg, kind="slow") as session, \
            CoordinatorClient(stack.coordinator, client_id="competitor") as competitor:
        (lease,) = session.lease(1)
        deadline = time.monotonic() + 2.5  # longer than two leases
        while time.monotonic() < deadline:
            stolen += competitor.lease(pool.pool_id, max_tasks=1, lease_seconds=30)
            time.sleep(0.1)
        assert stolen == []  # without the heartbeats the competitor gets the task after 1 s
        reply = lease.submit(np.zeros((task.height, task.width), np.uint8))
    assert reply.annotation.task_id == task.task_id and reply.annotation.client_id == session.client_id


def test_an_exception_inside_a_lease_releases_the_task_and_propagates(stack):
    pool, (task,) = random_pool(stack, "crash", batch=1)
    with LabelingSession(_labeling(stack, "crash", lease_s=60)) as session:
        with pytest.raises(RuntimeError, match="labeler crashed"):
            with session.lease(1)[0]:
                raise RuntimeError("labeler crashed")
        assert session.held() == []
    with CoordinatorClient(stack.coordinator, client_id="next") as other:
        (again,) = other.lease(pool.pool_id, lease_seconds=30)
    assert again.task_id == task.task_id and again.lease_count == 2  # released at once, not lapsed


def test_a_lease_taken_over_is_reported_lost_and_never_submitted(stack):
    pool, (task,) = random_pool(stack, "lost", batch=1)
    lost = []
    # The first heartbeat comes after the lease lapsed and the competitor took the task.
    cfg = _labeling(stack, "lost", lease_s=0.3, heartbeat_s=1.0)
    with LabelingSession(cfg, on_lost=lost.append) as session, \
            CoordinatorClient(stack.coordinator, client_id="competitor") as competitor:
        (lease,) = session.lease(1)
        time.sleep(0.5)
        (taken,) = competitor.lease(pool.pool_id, lease_seconds=30)
        assert taken.task_id == task.task_id
        deadline = time.monotonic() + 5
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost == [lease] and "competitor" in str(lease.lost)
        with pytest.raises(FailedPrecondition, match="lease lost"):
            lease.submit(np.zeros((task.height, task.width), np.uint8))
        reply = competitor.submit(taken, np.zeros((task.height, task.width), np.uint8))
        assert reply.annotation.client_id == "competitor"


# ---------------------------------------------------------------- machine oracle

def _expected_pseudo_labels(stack, frame_uri: str, tau: float) -> np.ndarray:
    with InferenceClient(stack.inference) as inference:
        seg = inference.infer_segmentation(imageio.read_rgb(frame_uri)[None])
    return machine_oracle(seg["labels"][0], seg["pmax"][0], tau).mask


def test_machine_oracle_command_line_submits_confident_predictions(stack):
    pool, tasks = random_pool(stack, "machine", batch=3)
    with InferenceClient(stack.inference) as inference:
        pmax = inference.infer_segmentation(imageio.read_rgb(tasks[0].frame_uri)[None])["pmax"][0]
    tau = float(np.median(pmax.astype(np.float32)))  # about half of the pixels are confident
    out = subprocess.run(
        [sys.executable, "-m", "clients.machine", "--coordinator", stack.coordinator, "--inference",
         stack.inference, "--pool", "machine", "--frame-root", str(stack.dataset), "--tau", str(tau)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["submitted"] == 3 and summary["released"] == 0
    assert summary["cost"] == {"frames": 3, "regions": 0, "pixels": 0}  # the machine spends no human pixels
    annotations = annotations_by_task(stack, pool.pool_id)
    for task in tasks:
        ann = annotations[task.task_id]
        expected = _expected_pseudo_labels(stack, task.frame_uri, tau)
        stored = imageio.read_label(ann.mask_uri)
        assert 0 < (expected != IGNORE).sum() < expected.size
        np.testing.assert_array_equal(stored, expected)  # labels where p_max >= tau, 255 elsewhere
        assert ann.pixels_count == (expected != IGNORE).sum()


def test_machine_oracle_releases_frames_without_a_confident_pixel(stack):
    pool, tasks = random_pool(stack, "unsure", batch=2)
    cfg = MachineOracleConfig(labeling=_labeling(stack, "unsure"), inference=stack.inference, tau=1.0)
    with InferenceClient(stack.inference) as inference, LabelingSession(cfg.labeling, kind="machine") as session:
        summary = work(session, MachineOracle(cfg, inference, FrameStorage([str(stack.dataset)])))
    assert summary.submitted == 0 and summary.released == 2
    assert all("no pixel with p_max >= 1.0" in e for e in summary.errors)
    with CoordinatorClient(stack.coordinator, client_id="next") as other:
        assert {t.task_id for t in other.lease(pool.pool_id, max_tasks=5)} == {t.task_id for t in tasks}


# ---------------------------------------------------------------- simulated human

def test_simulated_human_command_line_copies_ground_truth_inside_the_regions(stack):
    pool, tasks = eem_pool(stack, "human-cli", batch=3)
    assert all(t.regions for t in tasks)
    out = subprocess.run(
        [sys.executable, "-m", "clients.simulated_human", "--coordinator", stack.coordinator, "--pool",
         "human-cli", "--dataset", str(stack.dataset), "--delay-s", "0.05"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    annotations = annotations_by_task(stack, pool.pool_id)
    want_cost = Cost()
    for task in tasks:
        inside = np.any(region_masks(task), axis=0)  # [H, W]
        gt = _gt(stack, task.frame_uri, (task.height, task.width))
        expected = np.where(inside, gt, IGNORE)
        ann = annotations[task.task_id]
        np.testing.assert_array_equal(imageio.read_label(ann.mask_uri), expected)
        assert list(ann.region_ids) == [r.region_id for r in task.regions]
        assert ann.regions_count == len(task.regions)
        want_cost += Cost(frames=1, regions=len(task.regions), pixels=int(inside.sum()))
    assert summary["submitted"] == 3 and summary["cost"] == want_cost.to_dict()


def test_simulated_human_mislabels_the_set_fraction_of_pixels(stack):
    pool, tasks = eem_pool(stack, "sloppy", batch=2)
    cfg = SimulatedHumanConfig(labeling=_labeling(stack, "sloppy"), dataset=str(stack.dataset), scope="frame",
                               wrong_label_rate=0.2, seed=5)
    with LabelingSession(cfg.labeling) as session:
        summary = work(session, SimulatedHuman(cfg, GroundTruth(cfg.dataset)))
    assert summary.submitted == 2
    annotations = annotations_by_task(stack, pool.pool_id)
    for task in tasks:
        gt = _gt(stack, task.frame_uri, (task.height, task.width))
        stored = imageio.read_label(annotations[task.task_id].mask_uri)
        labeled = gt != IGNORE
        assert (stored[~labeled] == IGNORE).all()
        wrong = int((stored[labeled] != gt[labeled]).sum())
        assert wrong == round(0.2 * labeled.sum())  # exactly the fraction, never the true class
        assert (stored[labeled] != IGNORE).all()
        assert annotations[task.task_id].scope == 1  # ANNOTATION_SCOPE_WHOLE_FRAME


def test_simulated_human_that_skips_every_region_releases_the_tasks(stack):
    pool, tasks = eem_pool(stack, "skipper", batch=2)
    cfg = SimulatedHumanConfig(labeling=_labeling(stack, "skipper"), dataset=str(stack.dataset),
                               skip_region_rate=1.0)
    with LabelingSession(cfg.labeling) as session:
        summary = work(session, SimulatedHuman(cfg, GroundTruth(cfg.dataset)), max_tasks=2)
    assert summary.submitted == 0 and summary.released == 2 and summary.cost == Cost()
    assert all("skipped all" in e for e in summary.errors)
    assert annotations_by_task(stack, pool.pool_id) == {}


def test_simulated_human_without_ground_truth_releases_the_task_once_naming_the_frame(stack, tmp_path):
    """Regression: work() leased the task it had just released again, forever."""
    pool, (task,) = eem_pool(stack, "no-truth", batch=1)
    (tmp_path / "leftImg8bit" / "val" / "elsewhere").mkdir(parents=True)
    imageio.write_png(tmp_path / "leftImg8bit" / "val" / "elsewhere" / "elsewhere_000000_000000_leftImg8bit.png",
                      np.zeros((4, 4, 3), np.uint8))
    cfg = SimulatedHumanConfig(labeling=_labeling(stack, "no-truth"), dataset=str(tmp_path))
    with LabelingSession(cfg.labeling) as session:
        summary = work(session, SimulatedHuman(cfg, GroundTruth(cfg.dataset)))
    assert summary.released == 1 and summary.submitted == 0
    assert f"no frame {cityscapes_id(task.frame_uri)!r}" in summary.errors[0]


def test_work_stops_a_delayed_annotation_when_asked(stack):
    pool, _ = eem_pool(stack, "stopped", batch=1)
    cfg = SimulatedHumanConfig(labeling=_labeling(stack, "stopped"), dataset=str(stack.dataset), delay_s=30)
    stop = threading.Event()
    with LabelingSession(cfg.labeling) as session:
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        summary = work(session, SimulatedHuman(cfg, GroundTruth(cfg.dataset), stop=stop), stop=stop)
    assert time.monotonic() - started < 10
    assert summary.released == 1 and "stopped while annotating" in summary.errors[0]

