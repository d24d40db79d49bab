"""`segxal export labels` through the real coordinator (SQLite, in this process): annotations
submitted through the coordinator's API come out as a Cityscapes-layout dataset that the
project's loader and cityscapesscripts' evaluator (its functions, and its stock command line)
read back with the submitted labels, and as COCO semantic masks that pycocotools decodes to the
same labels; the manifest says who labeled what; a non-empty folder is refused unless --force,
and --force replaces only what the previous export wrote."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from pycocotools.coco import COCO

from app.cli import main as segxal_main
from segxal import imageio
from segxal.data.cityscapes import SegDataset, list_frames, load_train_ids
from segxal.labels import IGNORE, NAME_TO_TRAIN_ID, TRAIN_ID_TO_LABEL_ID
from segxal.ingest import CameraMessage, write_camera_log
from services.coordinator.client import CoordinatorClient, drive_log_source, image_folder_source
from tests.cityscapes_support import run_pixel_level_evaluator
from tests.coordinator_support import coordinator_config, running_coordinator, write_frames

H, W = 32, 64


def _labels(rng: np.random.Generator, partial: bool) -> np.ndarray:
    """Blocks of random trainIds; a partial annotation leaves a band unlabeled (255)."""
    out = np.kron(rng.integers(0, 19, (H // 8, W // 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
    if partial:
        out[:, W // 2:] = IGNORE
    return out


@pytest.fixture(scope="module")
def exported_pool(tmp_path_factory):
    """A pool of 4 PNG frames and 2 JPEG drive-log frames, every task annotated by one of two
    clients through the coordinator: (coordinator target, pool name, {frame uri: submitted labels},
    {frame uri: client id}, the frame annotated with a prediction)."""
    tmp = tmp_path_factory.mktemp("export")
    write_frames(tmp / "frames", 4, H, W)
    rng = np.random.default_rng(3)
    log = tmp / "drive.mcap"
    write_camera_log(log, [CameraMessage("/cam/front/compressed", 10**18 + k * 10**9,
                                         imageio.encode_jpeg(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)), "jpeg")
                           for k in range(2)], "ros2")
    with running_coordinator(coordinator_config(f"sqlite://{tmp / 'c.db'}", tmp / "storage")) as (server, setup):
        pool = setup.create_pool("Drive 2026-11")
        setup.ingest(pool.pool_id, [image_folder_source(str(tmp / "frames")), drive_log_source(str(log))])
        setup.register_model_version("segmentation", uri="repo/segmentation/3", version=3)
        cycle = setup.start_cycle(pool.pool_id, 6, selection="random", random_seed=1, model_name="segmentation",
                                  model_version=3)
        assert len(setup.rank_cycle(cycle.cycle_id).tasks) == 6
        submitted, who, with_dice = {}, {}, None
        for client_id, n in (("machine@car-7:11", 3), ("label-studio@ls:12", 3)):
            with CoordinatorClient(server.target, client_id=client_id) as c:
                for i, task in enumerate(c.lease(pool.pool_id, max_tasks=n)):
                    labels = _labels(rng, partial=i % 2 == 1)
                    prediction = None
                    if with_dice is None:
                        prediction = np.where(labels == IGNORE, 0, labels).astype(np.uint8)
                        prediction[:8, :8] = (prediction[:8, :8] + 1) % 19  # one block wrong: DICE < 1
                        with_dice = task.frame_uri
                    c.submit(task, labels, prediction=prediction, encoding="rle" if i == 0 else "png")
                    submitted[task.frame_uri], who[task.frame_uri] = labels, client_id
        yield server.target, pool.name, submitted, who, with_dice, tmp


def _export(target: str, pool: str, fmt: str, out, *extra) -> dict:
    assert segxal_main(["export", "labels", "--coordinator", target, "--pool", pool, "--format", fmt,
                        "--out", str(out), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


def test_cityscapes_export_loads_back_with_the_submitted_labels(exported_pool, tmp_path, capsys):
    target, pool, submitted, who, with_dice, _ = exported_pool
    out = tmp_path / "cityscapes"
    manifest = _export(target, pool, "cityscapes", out)
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["frames"] == 6
    assert manifest["counts"] == {"frames": 6, "annotations": 6}
    by_uri = {f["frame_uri"]: f for f in manifest["frames"]}
    assert set(by_uri) == set(submitted)
    # The project's own loader finds every frame with its labels.
    frames = list_frames(out, "train", require_labels=True)
    assert len(frames) == 6 and {f.city for f in frames} == {"Drive202611"}
    by_image = {str(f.image.relative_to(out)): f for f in frames}
    for uri, entry in by_uri.items():
        frame = by_image[entry["image"]]
        np.testing.assert_array_equal(load_train_ids(frame), submitted[uri])
        np.testing.assert_array_equal(imageio.read_label(out / entry["train_ids"]), submitted[uri])
        label_ids = imageio.read_label(out / entry["label_ids"])
        assert (label_ids[submitted[uri] == IGNORE] == 0).all()  # "unlabeled"
        np.testing.assert_array_equal(imageio.read_rgb(frame.image), imageio.read_rgb(uri))  # same pixels
        (ann,) = entry["annotations"]
        assert ann["labeled_by"] == who[uri] and ann["oracle"] == ("machine" if who[uri].startswith("machine")
                                                                   else "human")
        assert ann["scope"] == "whole_frame" and (ann["model_name"], ann["model_version"]) == ("segmentation", 3)
        assert ann["pixels"] == int((submitted[uri] != IGNORE).sum())
        assert (ann["dice"] is not None) == (uri == with_dice)
    assert 0 < by_uri[with_dice]["annotations"][0]["dice"] < 1
    assert len({f.sequence for f in frames}) == 2  # the image folder and the drive-log topic
    dataset = SegDataset(frames)
    assert dataset[0][0].shape[-2:] == (H, W)

    # cityscapesscripts' evaluator reads the ground truth: a prediction of "road" everywhere gets,
    # for road, the IoU counted from the submitted masks.
    args = cs_eval.args
    args.evalInstLevelScore, args.quiet, args.JSONOutput = False, True, False
    cm = cs_eval.generateMatrix(args)
    road = NAME_TO_TRAIN_ID["road"]
    pred = tmp_path / "pred_road.png"
    imageio.write_png(pred, np.full((H, W), TRAIN_ID_TO_LABEL_ID[road], np.uint8))
    for f in frames:
        cs_eval.evaluatePair(str(pred), str(f.label), cm, {}, {}, args)
    gts = np.stack(list(submitted.values()))
    labeled = gts != IGNORE
    expected = (gts == road).sum() / labeled.sum()  # tp / (tp + fp + fn), the prediction covers everything
    assert cs_eval.getIouScoreForLabel(int(TRAIN_ID_TO_LABEL_ID[road]), cm, args) == pytest.approx(expected)
    cm = cs_eval.generateMatrix(args)
    for f in frames:
        cs_eval.evaluatePair(str(f.label), str(f.label), cm, {}, {}, args)
    present = {int(TRAIN_ID_TO_LABEL_ID[t]) for t in np.unique(gts[labeled])}
    assert all(cs_eval.getIouScoreForLabel(i, cm, args) == 1.0 for i in present)


def test_coco_export_decodes_to_the_submitted_labels(exported_pool, tmp_path):
    target, pool, submitted, _, _, _ = exported_pool
    out = tmp_path / "coco"
    manifest = _export(target, pool, "coco", out)
    coco = COCO(str(out / "annotations.json"))
    by_image = {f["coco_image_id"]: f for f in manifest["frames"]}
    assert sorted(coco.getImgIds()) == sorted(by_image)
    label_of_category = {c["id"]: c["trainId"] for c in coco.loadCats(coco.getCatIds())}
    for image_id, entry in by_image.items():
        rebuilt = np.full((H, W), IGNORE, np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            mask = coco.annToMask(ann).astype(bool)
            assert not (rebuilt[mask] != IGNORE).any() and ann["area"] == mask.sum()
            rebuilt[mask] = label_of_category[ann["category_id"]]
        np.testing.assert_array_equal(rebuilt, submitted[entry["frame_uri"]])
        assert (out / entry["image"]).read_bytes() == imageio.read_bytes(entry["frame_uri"])  # unchanged bytes
    assert {p.suffix for p in (out / "images").iterdir()} == {".png", ".jpg"}


def test_export_refuses_a_non_empty_folder_unless_forced(exported_pool, tmp_path, capsys):
    target, pool, *_ = exported_pool
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["export", "labels", "--coordinator", target, "--pool", pool, "--format", "cityscapes", "--out", str(out)]
    assert segxal_main(argv) == 2
    assert "folder is not empty (notes.txt); choose an empty folder, or pass --force" in capsys.readouterr().err
    assert segxal_main([*argv, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and len(list_frames(out, "train", require_labels=True)) == 6
    assert segxal_main([*argv[:-4], "--format", "coco", "--out", str(out), "--force"]) == 0
    assert not (out / "leftImg8bit").exists()  # the earlier export's files were replaced, not mixed in
    assert segxal_main([*argv[:5], "no-such-pool", *argv[6:-1], str(tmp_path / "x")]) == 2
    assert "no-such-pool" in capsys.readouterr().err


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_force_replaces_only_the_files_the_previous_export_wrote(exported_pool, tmp_path, tiny_dataset):
    """--out at a Cityscapes-layout folder of someone's own data: a val split, a file of theirs in
    leftImg8bit/. An export there, then another with --force (other split, other format): the
    previous export's files go, theirs stay byte for byte."""
    target, pool, *_ = exported_pool
    out = tmp_path / "cityscapes"
    shutil.copytree(tiny_dataset, out)
    (out / "leftImg8bit" / "README.txt").write_text("our own notes")
    theirs = _tree(out)
    argv = ["export", "labels", "--coordinator", target, "--pool", pool, "--out", str(out), "--force"]
    first = _export(target, pool, "cityscapes", out, "--split", "export1", "--force")
    assert len(list_frames(out, "export1", require_labels=True)) == 6
    assert len(first["files"]) == 6 * 4 + 1  # image, labelIds, trainIds, instanceIds per frame; the manifest
    assert segxal_main([*argv, "--format", "coco"]) == 0
    after = _tree(out)
    assert {k: after[k] for k in theirs} == theirs  # every file of theirs, unchanged
    second = json.loads((out / "manifest.json").read_text())
    assert set(after) == set(theirs) | set(second["files"])  # and nothing of the first export is left
    assert not (out / "leftImg8bit" / "export1").exists() and not (out / "gtFine" / "export1").exists()
    assert not list(out.glob(".segxal-export-*"))


def test_force_refuses_to_replace_a_file_no_export_wrote_and_changes_nothing(exported_pool, tmp_path, capsys):
    target, pool, *_ = exported_pool
    out = tmp_path / "ds"
    _export(target, pool, "coco", out)
    # A file of someone else's where the Cityscapes export will write its first frame.
    mine = out / "leftImg8bit" / "train" / "Drive202611" / "Drive202611_000000_000000_leftImg8bit.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"their own frame")
    before = _tree(out)
    argv = ["export", "labels", "--coordinator", target, "--pool", pool, "--format", "cityscapes", "--out", str(out),
            "--force"]
    assert segxal_main(argv) == 2
    err = capsys.readouterr().err
    assert ("the export would replace leftImg8bit/train/Drive202611/Drive202611_000000_000000_leftImg8bit.png, "
            "which the previous export did not write") in err and "Nothing was changed" in err
    assert _tree(out) == before and not list(out.glob(".segxal-export-*"))


def test_cityscapes_export_runs_through_cityscapesscripts_evaluator_command(exported_pool, tmp_path):
    """The stock evaluator, run as its command line on the export's val split: it loads every
    labelIds and instanceIds file and scores a road-everywhere prediction with the road IoU the
    submitted masks give (tests/cityscapes_support.py says how the command is run)."""
    target, pool, submitted, *_ = exported_pool
    out = tmp_path / "cs"
    manifest = _export(target, pool, "cityscapes", out, "--split", "val")
    results = tmp_path / "results"
    results.mkdir()
    road = NAME_TO_TRAIN_ID["road"]
    for f in manifest["frames"]:
        stem = Path(f["label_ids"]).name.replace("_gtFine_labelIds.png", "")
        imageio.write_png(results / f"{stem}_pred.png", np.full((H, W), TRAIN_ID_TO_LABEL_ID[road], np.uint8))
    scores = run_pixel_level_evaluator(out, results, tmp_path)
    gts = np.stack(list(submitted.values()))
    labeled = gts != IGNORE
    assert scores["classScores"]["road"] == pytest.approx((gts == road).sum() / labeled.sum())
    assert scores["classScores"]["car"] == 0.0


def test_merge_of_two_annotations_of_one_frame():
    from segxal.data.label_export import merge_annotations
    first = np.full((2, 3), 5, np.uint8)
    later = np.array([[1, IGNORE, IGNORE], [IGNORE, 2, IGNORE]], np.uint8)
    np.testing.assert_array_equal(merge_annotations([first, later]), [[1, 5, 5], [5, 2, 5]])
