"""Tasks, leases, annotations, DICE stopping, budget, cycles and model versions, through the real
coordinator server and its client, on SQLite and on PostgreSQL (the same tests, one fixture)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as coco_mask
import pytest

from tests.coordinator_support import (BACKENDS, coordinator_config, database_url, labels_for, lapse_lease,
                                       pool_with_tasks, running_coordinator, write_frames)
from segxal import imageio
from segxal.annotation import LABEL_IDS, ClassRle, EncodedMask, Rle
from segxal.errors import FailedPrecondition, InvalidInput, NotFound
from segxal.labels import CLASS_NAMES, IGNORE, label_ids_to_train_ids
from segxalpb.common.v1 import types_pb2
from segxalpb.coordinator.v1 import coordinator_pb2 as pb
from services.coordinator.client import CoordinatorClient, image_folder_source
from services.coordinator.store.db import Database
from services.coordinator.store.migrations import LATEST_VERSION, migrate, schema_version


@pytest.fixture(params=BACKENDS)
def coord(request, tmp_path):
    with database_url(request.param, tmp_path) as url:
        cfg = coordinator_config(url, tmp_path / "storage", default_lease_s=30)
        with running_coordinator(cfg) as (server, client):
            with CoordinatorClient(server.target, client_id="other-labeler") as other:
                yield SimpleNamespace(server=server, client=client, other=other, tmp=tmp_path, url=url,
                                      backend=request.param)


def _pool(coord, n=3, **kw):
    return pool_with_tasks(coord.client, coord.tmp / "frames", n, **kw)


# ---------------------------------------------------------------- leases

def test_leased_task_is_invisible_until_its_lease_expires_then_requeued(coord):
    pool, _ = _pool(coord, n=2)
    first = coord.client.lease(pool.pool_id, max_tasks=1, lease_seconds=0.6)
    assert len(first) == 1 and first[0].lease_token and first[0].lease_count == 1
    others = coord.other.lease(pool.pool_id, max_tasks=5, lease_seconds=30)
    assert [t.task_id for t in others] != [first[0].task_id] and len(others) == 1  # only the other task
    assert coord.other.lease(pool.pool_id, max_tasks=5) == []  # nothing waits while both are leased
    time.sleep(0.8)
    again = coord.other.lease(pool.pool_id, max_tasks=5, lease_seconds=30)
    assert [t.task_id for t in again] == [first[0].task_id]  # the expired lease was requeued
    assert again[0].lease_count == 2 and again[0].lease_owner == "other-labeler"
    assert again[0].lease_token != first[0].lease_token


def test_release_requeues_at_once_and_refuses_a_later_submit(coord):
    pool, _ = _pool(coord, n=1)
    (task,) = coord.client.lease(pool.pool_id, lease_seconds=60)
    coord.client.release(task)
    (same,) = coord.other.lease(pool.pool_id, lease_seconds=60)
    assert same.task_id == task.task_id
    with pytest.raises(FailedPrecondition, match="taken over by client 'other-labeler'"):
        coord.client.submit(task, labels_for(task))
    with pytest.raises(FailedPrecondition):
        coord.client.release(task)  # not the holder any more
    coord.other.release(same)
    with pytest.raises(FailedPrecondition, match="not leased"):
        coord.other.submit(same, labels_for(same))


def test_heartbeat_extends_the_lease(coord):
    pool, _ = _pool(coord, n=1)
    (task,) = coord.client.lease(pool.pool_id, lease_seconds=0.6)
    expires = coord.client.heartbeat(task, lease_seconds=5)
    assert expires >= task.lease_expires_unix_s + 4
    time.sleep(0.8)  # past the first expiry: the heartbeat keeps it hidden
    assert coord.other.lease(pool.pool_id) == []
    assert coord.client.submit(task, labels_for(task)).annotation.task_id == task.task_id
    with pytest.raises(FailedPrecondition, match="already annotated"):
        coord.client.heartbeat(task)


# ---------------------------------------------------------------- submit

def test_submit_is_idempotent_whatever_the_encoding(coord):
    pool, cycle = _pool(coord, n=1)
    (task,) = coord.client.lease(pool.pool_id)
    train_ids = np.full((task.height, task.width), IGNORE, np.uint8)
    train_ids[:, : task.width // 2] = 0   # road
    train_ids[:8, task.width // 2:] = 11  # person
    first = coord.client.submit(task, train_ids)
    assert not first.replayed and first.budget.spent_frames == 1
    assert first.annotation.pixels_count == int((train_ids != IGNORE).sum())
    # the same annotation as per-class RLE, in labelIds (road = 7, person = 24): the same content
    label_ids = np.where(train_ids == 0, 7, np.where(train_ids == 11, 24, 0)).astype(np.uint8)
    again = coord.client.submit(task, label_ids, label_space=LABEL_IDS, encoding="rle")
    assert again.replayed and again.annotation.annotation_id == first.annotation.annotation_id
    assert again.budget.spent_frames == 1 and again.budget.spent_pixels == first.annotation.pixels_count
    assert len(list(coord.client.annotations(pool.pool_id))) == 1
    # a client-chosen key works the same way, also for another task
    (task2,) = _lease_new_task(coord, pool)
    a = coord.client.submit(task2, labels_for(task2, 2), idempotency_key="job-7")
    b = coord.client.submit(task2, labels_for(task2, 2), idempotency_key="job-7")
    assert b.replayed and a.annotation.annotation_id == b.annotation.annotation_id


def _lease_new_task(coord, pool):
    cycle = coord.client.start_cycle(pool.pool_id, 1, selection="random", random_seed=5)
    write_frames(coord.tmp / "more", 1, seed=99)
    coord.client.ingest(pool.pool_id, [image_folder_source(str(coord.tmp / "more"))])
    coord.client.rank_cycle(cycle.cycle_id)
    return coord.client.lease(pool.pool_id, cycle_id=cycle.cycle_id)


def test_idempotency_key_reused_for_different_content_is_invalid(coord):
    pool, _ = _pool(coord, n=1)
    (task,) = coord.client.lease(pool.pool_id)
    coord.client.submit(task, labels_for(task, 1), idempotency_key="k")
    with pytest.raises(InvalidInput, match="idempotency key 'k' was used for a different annotation"):
        coord.client.submit(task, labels_for(task, 2), idempotency_key="k")
    with pytest.raises(FailedPrecondition, match="already annotated"):
        coord.client.submit(task, labels_for(task, 2))


def test_submit_after_the_lease_was_taken_over_is_refused(coord):
    pool, _ = _pool(coord, n=1)
    (stale,) = coord.client.lease(pool.pool_id, lease_seconds=30)
    assert coord.other.lease(pool.pool_id) == []  # a lease in force is nobody else's
    lapse_lease(coord.url, stale.task_id)
    (fresh,) = coord.other.lease(pool.pool_id, lease_seconds=30)
    assert fresh.task_id == stale.task_id
    with pytest.raises(FailedPrecondition, match="taken over by client 'other-labeler'.*nothing was stored"):
        coord.client.submit(stale, labels_for(stale, 1))
    assert list(coord.client.annotations(pool.pool_id)) == []
    ok = coord.other.submit(fresh, labels_for(fresh, 2))
    # the stale client retrying after the new holder finished is still refused (different content)
    with pytest.raises(FailedPrecondition, match="already annotated"):
        coord.client.submit(stale, labels_for(stale, 1))
    (stored,) = coord.client.annotations(pool.pool_id)
    assert stored.annotation_id == ok.annotation.annotation_id and stored.client_id == "other-labeler"


def test_late_submit_is_accepted_when_nobody_took_the_task_over(coord):
    pool, _ = _pool(coord, n=1)
    (task,) = coord.client.lease(pool.pool_id, lease_seconds=30)
    lapse_lease(coord.url, task.task_id)
    assert coord.client.submit(task, labels_for(task)).annotation.task_id == task.task_id
    assert coord.other.lease(pool.pool_id) == []  # done, not requeued


def test_stored_mask_is_train_ids_whatever_the_encoding(coord):
    pool, _ = _pool(coord, n=3)
    tasks = coord.client.lease(pool.pool_id, max_tasks=3)
    h, w = tasks[0].height, tasks[0].width
    rng = np.random.default_rng(3)
    label_ids = rng.choice(np.array([0, 7, 8, 11, 24, 26], np.uint8), size=(h, w))  # 0: unlabeled
    expected = label_ids_to_train_ids(label_ids)  # cityscapesscripts' mapping
    # labelIds as PNG
    r1 = coord.client.submit(tasks[0], label_ids, label_space=LABEL_IDS)
    np.testing.assert_array_equal(imageio.read_label(r1.annotation.mask_uri), expected)
    # labelIds as one COCO RLE per class, encoded by pycocotools itself
    classes = []
    for v in np.unique(label_ids):
        enc = coco_mask.encode(np.asfortranarray((label_ids == v).astype(np.uint8)))
        classes.append(ClassRle(int(v), Rle(h, w, enc["counts"].decode())))
    r2 = coord.client.submit(tasks[1], EncodedMask(LABEL_IDS, rle=tuple(classes)))
    np.testing.assert_array_equal(imageio.read_label(r2.annotation.mask_uri), expected)
    # trainIds RLE with uncompressed counts; pixels outside every class are "not annotated"
    partial = np.full((h, w), IGNORE, np.uint8)
    partial[2:5, 3:9] = 13  # car
    unc = _uncompressed_counts(partial == 13)
    reference = coco_mask.decode(coco_mask.frPyObjects({"size": [h, w], "counts": unc}, h, w))
    np.testing.assert_array_equal(reference, partial == 13)  # the counts are what pycocotools reads
    req = pb.SubmitAnnotationRequest(task_id=tasks[2].task_id, lease_token=tasks[2].lease_token, client_id="test")
    req.mask.label_space = pb.LABEL_SPACE_TRAIN_IDS
    req.mask.rle.classes.add(label_id=13, rle=types_pb2.CocoRle(height=h, width=w, uncompressed_counts=unc))
    r3 = coord.client.submit_request(req)
    np.testing.assert_array_equal(imageio.read_label(r3.annotation.mask_uri), partial)
    assert r3.annotation.pixels_count == 18


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F").astype(np.int8)
    runs, current, n = [], 0, 0
    for v in flat:
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    runs.append(n)
    return runs


# ---------------------------------------------------------------- bad input

def test_bad_inputs_map_to_status_codes(coord):
    c = coord.client
    pool, cycle = _pool(coord, n=2)
    (task,) = c.lease(pool.pool_id)
    h, w = task.height, task.width
    with pytest.raises(NotFound, match="no pool"):
        c.lease("pool_nope")
    with pytest.raises(NotFound):
        c.ingest("pool_nope", [image_folder_source(str(coord.tmp))])
    with pytest.raises(NotFound):
        c.get_pool("pool_nope")
    with pytest.raises(NotFound):
        c.budget("pool_nope")
    with pytest.raises(NotFound):
        c.start_cycle("pool_nope", 3, selection="random")
    with pytest.raises(NotFound, match="no cycle"):
        c.rank_cycle("cycle_nope")
    with pytest.raises(NotFound, match="no cycle"):
        c.cycle_report("cycle_nope")
    ghost = pb.Task(task_id="task_nope", lease_token="x", height=h, width=w)
    with pytest.raises(NotFound, match="no task"):
        c.submit(ghost, labels_for(task))
    with pytest.raises(NotFound):
        c.heartbeat(ghost)
    with pytest.raises(NotFound):
        c.release(ghost)
    # masks
    with pytest.raises(InvalidInput, match=f"the frame is {h} x {w}"):
        c.submit(task, np.zeros((h + 1, w), np.uint8))
    with pytest.raises(InvalidInput, match=r"class ids \[19, 200\] are outside the 19 classes .*allowed 0\.\.18"):
        c.submit(task, np.where(np.arange(w) % 2, 19, 200).astype(np.uint8)[None].repeat(h, 0))
    with pytest.raises(InvalidInput, match=r"unknown Cityscapes label ids \[34\]"):
        c.submit(task, np.full((h, w), 34, np.uint8), label_space=LABEL_IDS)
    with pytest.raises(InvalidInput, match="marks no pixel"):
        c.submit(task, np.full((h, w), IGNORE, np.uint8))
    with pytest.raises(InvalidInput, match="not a valid COCO RLE"):
        c.submit(task, EncodedMask("train_ids", rle=(ClassRle(0, Rle(h, w, "zzzz~~~")),)))
    with pytest.raises(InvalidInput, match="overlaps an earlier class"):
        full = coco_mask.encode(np.asfortranarray(np.ones((h, w), np.uint8)))["counts"].decode()
        c.submit(task, EncodedMask("train_ids", rle=(ClassRle(0, Rle(h, w, full)), ClassRle(1, Rle(h, w, full)))))
    with pytest.raises(InvalidInput, match="not a readable image"):
        c.submit(task, EncodedMask("train_ids", png=b"\x89PNG\r\n\x1a\n not really"))
    with pytest.raises(InvalidInput, match="has no regions"):
        c.submit(task, labels_for(task), region_ids=[3])
    with pytest.raises(InvalidInput, match="lease_token is required"):
        c.submit(pb.Task(task_id=task.task_id, height=h, width=w), labels_for(task))
    # leases and cycles
    with pytest.raises(InvalidInput, match="max_tasks"):
        c.lease(pool.pool_id, max_tasks=10_000)
    with pytest.raises(InvalidInput, match="lease_seconds"):
        c.lease(pool.pool_id, lease_seconds=-1)
    with pytest.raises(InvalidInput, match="batch_size"):
        c.start_cycle(pool.pool_id, 0, selection="random")
    with pytest.raises(InvalidInput, match="dice_threshold"):
        c.start_cycle(pool.pool_id, 2, selection="random", dice_threshold=1.5)
    with pytest.raises(FailedPrecondition, match="already exists"):
        c.create_pool(pool.name)
    # the task is still leased to us and takes a good annotation after all that
    assert c.submit(task, labels_for(task)).annotation.task_id == task.task_id


def test_a_pool_of_four_classes_refuses_a_class_id_beyond_them_naming_the_allowed_range(coord):
    c = coord.client
    names = ("flat", "vehicle", "human", "sky")  # a label map's classes, not Cityscapes'
    pool, _ = _pool(coord, n=2, class_names=names)
    assert tuple(pool.class_names) == names == tuple(c.get_pool(pool.pool_id).class_names)
    first, second = c.lease(pool.pool_id, max_tasks=2, lease_seconds=60)
    beyond = labels_for(first, 2)
    beyond[:, :5] = 4  # one past the last class
    beyond[:, -5:] = 18  # a Cityscapes trainId (bicycle) means nothing here
    with pytest.raises(InvalidInput, match=r"annotation mask of pool \S+: class ids \[4, 18\] are outside the 4 "
                                           r"classes \(0 flat, 1 vehicle, 2 human, 3 sky\); allowed 0\.\.3, or 255"):
        c.submit(first, beyond)
    with pytest.raises(InvalidInput, match=r"class ids \[4\] are outside the 4 classes"):  # per-class RLE too
        c.submit(first, labels_for(first, 4), encoding="rle")
    with pytest.raises(InvalidInput, match=r"prediction: class ids \[7\] are outside the 4 classes"):
        c.submit(first, labels_for(first, 1), prediction=labels_for(first, 7))
    with pytest.raises(InvalidInput, match="labelIds only go with the Cityscapes classes"):
        c.submit(first, labels_for(first, 7), label_space=LABEL_IDS)
    # the classes it has are taken, DICE counted over them
    reply = c.submit(first, labels_for(first, 3), prediction=labels_for(first, 3))
    np.testing.assert_array_equal(imageio.read_label(reply.annotation.mask_uri), labels_for(first, 3))
    assert reply.annotation.has_dice and reply.annotation.dice == 1.0
    # a pool made without class names keeps Cityscapes' 19, where 18 is a class
    city, _ = _pool(coord, n=1, name="cityscapes-pool")
    assert tuple(city.class_names) == tuple(CLASS_NAMES)
    (task,) = c.lease(city.pool_id, lease_seconds=60)
    assert c.submit(task, labels_for(task, 18)).annotation.pixels_count == task.height * task.width
    with pytest.raises(InvalidInput, match="class names must be unique, \\['car'\\] repeat"):
        c.create_pool("twice", class_names=("car", "car"))
    with pytest.raises(InvalidInput, match="needs 2 to 255 classes"):
        c.create_pool("lonely", class_names=("car",))
    with pytest.raises(InvalidInput, match="needs 2 to 255 classes"):
        c.create_pool("crowded", class_names=[f"c{i}" for i in range(256)])


# ---------------------------------------------------------------- DICE and budget

def test_dice_retires_agreeing_frames_and_stops_the_loop(coord):
    c = coord.client
    pool, cycle = _pool(coord, n=3)
    tasks = c.lease(pool.pool_id, max_tasks=3)
    prediction = labels_for(tasks[0], 0)
    prediction[: tasks[0].height // 2] = 10  # sky above road
    for t in tasks[:2]:
        r = c.submit(t, prediction, prediction=prediction)  # the model was right
        assert r.annotation.has_dice and r.annotation.dice == 1.0 and r.annotation.frame_retired
    report = c.cycle_report(cycle.cycle_id)
    assert report.stop_reason == pb.STOP_REASON_NONE and not report.cycle_complete
    assert report.tasks_done == 2 and report.tasks_leased == 1
    # the last frame: annotation differs in a quarter of the frame
    annotation = prediction.copy()
    annotation[:, : tasks[2].width // 4] = 13
    r = c.submit(tasks[2], annotation, prediction=prediction)
    assert 0 < r.annotation.dice < 0.95 and not r.annotation.frame_retired
    report = c.cycle_report(cycle.cycle_id)
    assert report.cycle_complete and report.cycle.state == pb.CYCLE_STATE_COMPLETE
    assert report.annotations_with_dice == 3 and report.frames_retired == 2
    assert report.mean_dice == pytest.approx((2.0 + r.annotation.dice) / 3)
    # every frame is labeled whole-frame: nothing left to ask
    assert c.get_pool(pool.pool_id).queryable_frame_count == 0
    assert report.stop_reason == pb.STOP_REASON_POOL_EXHAUSTED
    write_frames(coord.tmp / "more", 2, seed=5)
    c.ingest(pool.pool_id, [image_folder_source(str(coord.tmp / "more"))])
    report = c.cycle_report(cycle.cycle_id)
    assert report.stop_reason == pb.STOP_REASON_NONE and "train and go on" in report.stop_detail
    # a cycle whose every annotation agrees reaches the threshold
    cycle2 = c.start_cycle(pool.pool_id, 2, selection="random", dice_threshold=0.9)
    c.rank_cycle(cycle2.cycle_id)
    for t in c.lease(pool.pool_id, max_tasks=2):
        c.submit(t, prediction, prediction=prediction)
    report2 = c.cycle_report(pool_id=pool.pool_id)  # latest cycle of the pool
    assert report2.cycle.cycle_id == cycle2.cycle_id
    assert report2.stop_reason == pb.STOP_REASON_DICE_THRESHOLD_REACHED and report2.mean_dice == 1.0
    assert c.cycle_report(cycle.cycle_id).cycle.state == pb.CYCLE_STATE_CLOSED


def test_frames_budget_caps_leases_and_stops_the_loop(coord):
    c = coord.client
    pool, cycle = _pool(coord, n=5, max_frames=3)
    tasks = c.lease(pool.pool_id, max_tasks=5)
    assert len(tasks) == 3  # leased tasks reserve the budget: 16 labelers cannot overshoot it
    assert c.lease(pool.pool_id, max_tasks=5) == []
    c.release(tasks[2])
    (again,) = c.lease(pool.pool_id, max_tasks=5)
    for t in [tasks[0], tasks[1], again]:
        c.submit(t, labels_for(t))
    budget = c.budget(pool.pool_id)
    assert budget.exhausted and budget.spent_frames == 3 and "frames budget spent: 3 of 3" in budget.exhausted_reason
    reply = c.lease_tasks(pool.pool_id, max_tasks=5)
    assert reply.budget_exhausted and not reply.tasks
    report = c.cycle_report(cycle.cycle_id)
    assert report.stop_reason == pb.STOP_REASON_BUDGET_SPENT and report.tasks_open == 2
    with pytest.raises(FailedPrecondition, match="no budget left"):
        c.start_cycle(pool.pool_id, 2, selection="random", cancel_unfinished=True)


def test_pixel_and_region_budgets_count_what_was_annotated(coord):
    c = coord.client
    pool, cycle = _pool(coord, n=3, max_pixels=3000)
    t1, t2 = c.lease(pool.pool_id, max_tasks=2)
    half = labels_for(t1, 0)
    half[: t1.height // 2] = IGNORE  # 32 x 64 frame: 1024 annotated pixels
    assert c.submit(t1, half).budget.spent_pixels == 1024
    r = c.submit(t2, labels_for(t2, 1))
    assert r.budget.spent_pixels == 1024 + 2048 and r.budget.exhausted
    assert r.budget.spent_regions == 0  # random tasks have no regions
    assert c.lease_tasks(pool.pool_id).budget_exhausted


# ---------------------------------------------------------------- cycles and model versions

def test_new_cycle_waits_for_unfinished_tasks_unless_cancelled(coord):
    c = coord.client
    pool, cycle = _pool(coord, n=2)
    (leased,) = c.lease(pool.pool_id)
    with pytest.raises(FailedPrecondition, match="still has 2 open or leased tasks"):
        c.start_cycle(pool.pool_id, 2, selection="random")
    cycle2 = c.start_cycle(pool.pool_id, 2, selection="random", cancel_unfinished=True)
    assert cycle2.number == 2
    with pytest.raises(FailedPrecondition, match="cancelled"):
        c.submit(leased, labels_for(leased))
    report = c.cycle_report(cycle.cycle_id)
    assert report.tasks_cancelled == 2 and report.cycle.state == pb.CYCLE_STATE_CLOSED
    with pytest.raises(FailedPrecondition, match="closed"):
        c.rank_cycle(cycle.cycle_id)
    ranked = c.rank_cycle(cycle2.cycle_id)  # the cancelled frames are back in the query pool
    assert len(ranked.tasks) == 2


def test_random_selection_is_reproducible_and_re_ranking_refills_open_tasks(coord):
    c = coord.client
    write_frames(coord.tmp / "frames", 10)
    pool = c.create_pool("p")
    c.ingest(pool.pool_id, [image_folder_source(str(coord.tmp / "frames"))])
    cycle = c.start_cycle(pool.pool_id, 4, selection="random", random_seed=42)
    first = [t.frame_id for t in c.rank_cycle(cycle.cycle_id).tasks]
    assert len(first) == 4 and [t.rank for t in c.rank_cycle(cycle.cycle_id).tasks] == [1, 2, 3, 4]
    assert [t.frame_id for t in c.rank_cycle(cycle.cycle_id).tasks] == first
    (leased,) = c.lease(pool.pool_id)
    c.submit(leased, labels_for(leased))
    again = c.rank_cycle(cycle.cycle_id).tasks
    assert len(again) == 3 and leased.frame_id not in {t.frame_id for t in again}
    assert c.cycle_report(cycle.cycle_id).tasks_total == 4  # the batch size holds


def test_model_versions_and_eem_cycles_need_a_model_and_a_scorer(coord):
    c = coord.client
    pool, _ = _pool(coord, n=1)
    with pytest.raises(FailedPrecondition, match="needs a registered version"):
        c.start_cycle(pool.pool_id, 1, selection="eem", cancel_unfinished=True)
    with pytest.raises(NotFound):
        c.current_model_version("segmentation")
    v1 = c.register_model_version("segmentation", "/repo/segmentation/1")
    v2 = c.register_model_version("segmentation", "/repo/segmentation/2")
    assert (v1.version, v2.version) == (1, 2)
    assert c.register_model_version("segmentation", "/repo/segmentation/1", version=1).version == 1  # no-op
    with pytest.raises(FailedPrecondition, match="already registered"):
        c.register_model_version("segmentation", "/elsewhere", version=1)
    c.register_model_version("depth", "/repo/depth/1")
    assert c.current_model_version("segmentation").uri == "/repo/segmentation/2"
    assert [m.version for m in c.list_model_versions("segmentation")] == [1, 2]
    assert len(c.list_model_versions()) == 3
    with pytest.raises(NotFound):
        c.start_cycle(pool.pool_id, 1, model_version=7, cancel_unfinished=True)
    cycle = c.start_cycle(pool.pool_id, 1, cancel_unfinished=True)
    assert (cycle.model.model_name, cycle.model.version) == ("segmentation", 2)
    with pytest.raises(FailedPrecondition, match="needs the EEM service"):
        c.rank_cycle(cycle.cycle_id)


def test_pages_of_frames_and_annotations(coord):
    c = coord.client
    pool, _ = _pool(coord, n=5)
    frames = list(c.frames(pool.pool_id, page_size=2))
    assert len(frames) == 5 and len({f.frame_id for f in frames}) == 5
    assert all(f.width == 64 and f.height == 32 for f in frames)  # learnt when they became tasks
    for t in c.lease(pool.pool_id, max_tasks=5):
        c.submit(t, labels_for(t))
    assert len(list(c.annotations(pool.pool_id, page_size=2))) == 5


# ---------------------------------------------------------------- schema

@pytest.mark.parametrize("backend", BACKENDS)
def test_schema_migrations_apply_once_and_refuse_a_newer_database(backend, tmp_path):
    with database_url(backend, tmp_path) as url:
        for _ in range(2):  # a second replica starting finds nothing to do
            db = Database(url)
            assert migrate(db) == LATEST_VERSION and schema_version(db) == LATEST_VERSION
            db.close()
        db = Database(url)
        db.run(lambda tx: tx.execute("INSERT INTO schema_migrations (version, description, applied_at) "
                                     "VALUES (?, 'from the future', 0)", (LATEST_VERSION + 1,)))
        with pytest.raises(FailedPrecondition, match="newer than this coordinator"):
            migrate(db)
        db.close()
