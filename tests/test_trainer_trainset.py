"""A job's training set: frames and masks read through the storage roots, merged per frame with the
rule that a person's earlier pixel is never overwritten by a policy pixel; answers known by
construction."""
import json

import numpy as np
import pytest

from segxal import imageio
from segxal.errors import FailedPrecondition, InvalidInput, PermissionDenied
from segxal.labels import IGNORE, NAME_TO_LABEL_ID, NAME_TO_TRAIN_ID
from segxal.storage import FrameStorage, local_uri
from services.trainer.api import LABEL_IDS, AnnotationRef, JobSpec, PublishPolicy
from services.trainer.trainset import build_training_set, seed_annotations

H, W = 64, 128


@pytest.fixture()
def frame(tmp_path):
    path = tmp_path / "frame.png"
    imageio.write_png(path, np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    return path


def _png(arr) -> bytes:
    return imageio.encode_png(np.asarray(arr, np.uint8))


def _full(value) -> np.ndarray:
    return np.full((H, W), value, np.uint8)


def _left(value, rest=IGNORE) -> np.ndarray:
    m = _full(rest)
    m[:, : W // 2] = value
    return m


def test_a_policy_pixel_never_overwrites_an_earlier_human_pixel(tmp_path, frame):
    human_left = _left(1, rest=0)
    refs = [
        AnnotationRef(local_uri(frame), mask_png=_png(_full(1))),  # whole frame: all human
        # region-level: a person fixed the left half (2), the policy filled the right half (3)
        AnnotationRef(str(frame), mask_png=_png(_left(2, rest=3)), region_level=True, human_mask_png=_png(human_left)),
    ]
    ds = build_training_set(FrameStorage([str(tmp_path)]), refs, (H, W))
    assert len(ds) == 1  # two URIs of one file: one frame
    labels = ds.frames[0].labels
    assert (labels[:, : W // 2] == 2).all() and (labels[:, W // 2:] == 1).all()

    # the other order: the policy's pixels fill where nobody decided yet, people overwrite them
    ds = build_training_set(FrameStorage([str(tmp_path)]), refs[::-1], (H, W))
    assert (ds.frames[0].labels == 1).all()


def test_region_level_without_a_human_mask_counts_every_annotated_pixel_as_human(tmp_path, frame):
    refs = [AnnotationRef(str(frame), mask_png=_png(_left(4)), region_level=True),
            AnnotationRef(str(frame), mask_png=_png(_full(5)), region_level=True)]
    ds = build_training_set(FrameStorage([str(tmp_path)]), refs, (H, W))
    assert (ds.frames[0].labels == 5).all()
    assert ds.frames[0].human.all()
    img, lab, depth = ds[0]
    assert img.shape == (3, H, W) and img.dtype == np.float32
    assert lab.dtype == np.int64 and depth.shape == (H, W)


def test_label_ids_and_resizing_to_the_training_size(tmp_path):
    big = tmp_path / "big.png"
    imageio.write_png(big, np.zeros((2 * H, 2 * W, 3), np.uint8))
    mask = np.zeros((2 * H, 2 * W), np.uint8)  # labelId 0: unlabeled -> not annotated
    mask[: H, :] = NAME_TO_LABEL_ID["road"]
    ds = build_training_set(FrameStorage([str(tmp_path)]),
                            [AnnotationRef(str(big), mask_png=_png(mask), label_space=LABEL_IDS)], (H, W))
    labels = ds.frames[0].labels
    assert labels.shape == (H, W) and ds.frames[0].rgb.shape == (H, W, 3)
    assert (labels[: H // 2] == NAME_TO_TRAIN_ID["road"]).all() and (labels[H // 2:] == IGNORE).all()


def test_bad_annotations_are_named_in_the_error(tmp_path, frame):
    storage = FrameStorage([str(tmp_path)])
    with pytest.raises(FailedPrecondition, match="no annotations"):
        build_training_set(storage, [], (H, W))
    good = AnnotationRef(str(frame), mask_png=_png(_full(1)))
    with pytest.raises(InvalidInput, match=r"annotation 1 \(x9\) of frame .*frame.png: mask \(inline\): mask is 32 x 64"):
        build_training_set(storage, [good, AnnotationRef(str(frame), mask_png=_png(np.zeros((32, 64))),
                                                         annotation_id="x9")], (H, W))
    with pytest.raises(InvalidInput, match="seed frame .*frame.png: mask"):
        build_training_set(storage, [AnnotationRef(str(frame), mask_png=b"not a png"), good], (H, W), seed_count=1)
    with pytest.raises(InvalidInput, match="human mask only makes sense for a region-level"):
        build_training_set(storage, [AnnotationRef(str(frame), mask_png=_png(_full(1)), human_mask_png=_png(_full(1)))],
                           (H, W))
    with pytest.raises(InvalidInput, match="human mask must be a single-channel image of the frame's size"):
        build_training_set(storage, [AnnotationRef(str(frame), mask_png=_png(_full(1)), region_level=True,
                                                   human_mask_png=_png(np.zeros((H, 2))))], (H, W))
    (tmp_path / "other").mkdir()
    with pytest.raises(PermissionDenied, match="outside the storage roots"):
        build_training_set(FrameStorage([str(tmp_path / "other")]), [good], (H, W))


def test_seed_set_is_the_ground_truth_of_a_split(tiny_dataset):
    seeds = seed_annotations(str(tiny_dataset), "train", limit=3)
    assert len(seeds) == 3 and all(s.label_space == LABEL_IDS and not s.region_level for s in seeds)
    assert seeds[0].mask_uri.endswith("_gtFine_labelIds.png") and seeds[0].annotation_id.startswith("seed:")
    ds = build_training_set(FrameStorage([str(tiny_dataset)]), seeds, (H, W), seed_count=3)
    assert len(ds) == 3 and all((f.labels != IGNORE).any() and f.human.any() for f in ds.frames)


def test_a_job_spec_with_inline_masks_survives_its_json(frame):
    spec = JobSpec(job_id="j", model_name="m", cycle_id="c", seed_frame_count=0, annotation_count=1, epochs=2,
                   batch_size=4, learning_rate=1e-3, seed=3, publish=True, policy=PublishPolicy(miou_tolerance=0.5),
                   created_unix_s=1.0,
                   annotations=[AnnotationRef(str(frame), mask_png=_png(_full(1)), region_level=True,
                                              human_mask_png=_png(_left(1, 0)))])
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_masks_are_checked_against_the_models_classes(tmp_path, frame):
    """A four-class model: ids 0..3 train, id 4 (a valid Cityscapes id) is refused with the range;
    a 25-class taxonomy (beyond Cityscapes' 19) trains its id 21."""
    storage = FrameStorage([str(tmp_path)])
    four = ("flat", "vehicle", "human", "sky")
    ds = build_training_set(storage, [AnnotationRef(str(frame), mask_png=_png(_left(3)))], (H, W), classes=four)
    assert set(np.unique(ds.frames[0].labels)) == {3, IGNORE}
    with pytest.raises(InvalidInput, match=r"0\.\.3"):
        build_training_set(storage, [AnnotationRef(str(frame), mask_png=_png(_left(4)))], (H, W), classes=four)
    many = tuple(f"class{i}" for i in range(25))
    ds = build_training_set(storage, [AnnotationRef(str(frame), mask_png=_png(_left(21)))], (H, W), classes=many)
    assert set(np.unique(ds.frames[0].labels)) == {21, IGNORE}
