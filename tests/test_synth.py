"""Synthetic driving-scene generator: layout, determinism, geometry, labels, weather, CLI."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from app import cli
from segxal import imageio
from segxal.data import cityscapes, synth
from segxal.errors import InvalidInput
from segxal.labels import KNOWN_LABEL_IDS, NAME_TO_LABEL_ID

ID = NAME_TO_LABEL_ID


def _small(**kw) -> synth.SynthConfig:
    base = dict(height=64, width=128, train_sequences=3, val_sequences=1, test_sequences=1,
                frames_per_sequence=3, seed=7)
    base.update(kw)
    return synth.SynthConfig(**base)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synth.generate(_small(), tmp_path_factory.mktemp("synth") / "ds")


def _frames(root: Path, split: str = "train") -> list[cityscapes.Frame]:
    return cityscapes.list_frames(root, split, require_labels=True)


def test_layout_round_trips_through_the_cityscapes_loader(dataset):
    cities = {}
    for split, n_seq in (("train", 3), ("val", 1), ("test", 1)):
        frames = _frames(dataset, split)
        assert len(frames) == n_seq * 3
        assert len({f.sequence for f in frames}) == n_seq
        cities[split] = {f.city for f in frames}
        for f in frames:
            assert f.disparity is not None and f.camera is not None
            assert f.image.name == f"{f.frame_id}_leftImg8bit.png"
            city, seq, frame = f.frame_id.split("_")
            assert city == f.city and len(seq) == 6 and len(frame) == 6
    assert not cities["train"] & cities["val"] and not cities["train"] & cities["test"]
    assert not cities["val"] & cities["test"]

    ds = cityscapes.SegDataset(_frames(dataset, "val"), with_depth=True)
    img, lab, depth = ds[0]
    assert img.shape == (3, 64, 128) and lab.shape == (64, 128) and depth.shape == (64, 128)
    assert (lab == 255).mean() < 0.05  # only the street furniture ('static', void) is ignored
    assert (depth >= 0).all() and depth.max() > 0

    train_ids = imageio.read_label(dataset / "gtFine/val" / ds.frames[0].city /
                                   f"{ds.frames[0].frame_id}_gtFine_labelTrainIds.png")
    np.testing.assert_array_equal(train_ids, lab)

    record = json.loads((dataset / synth.SIDECAR).read_text())
    assert record["config"]["seed"] == 7
    assert sum(record["label_pixel_counts"]["train"].values()) == 9 * 64 * 128


def test_instance_ids_give_each_object_of_an_instance_class_its_own_id(dataset):
    from cityscapesscripts.helpers.labels import id2label
    objects = 0
    for f in _frames(dataset) + _frames(dataset, "val"):
        label = imageio.read_label(f.label)
        inst = imageio.decode_image(imageio.read_bytes(str(f.label).replace("labelIds", "instanceIds")), mode=None)
        assert inst.dtype == np.uint16 and inst.shape == label.shape
        stuff = inst < 1000
        np.testing.assert_array_equal(inst[stuff], label[stuff])  # no instance: the labelId itself
        np.testing.assert_array_equal(inst[~stuff] // 1000, label[~stuff])
        assert all(id2label[int(i) // 1000].hasInstances for i in np.unique(inst[~stuff]))
        # Every pixel of a class with instances belongs to an object.
        has = np.isin(label, [i for i, lab in id2label.items() if lab.hasInstances and i >= 0])
        assert not (has & stuff).any()
        for cls in np.unique(label[has]):
            ks = np.unique(inst[label == cls]).astype(np.int64) - int(cls) * 1000
            assert ks.tolist() == list(range(len(ks)))  # numbered from 0 within the class, per frame
        objects += len(np.unique(inst[~stuff]))
    assert objects >= 10


def test_the_val_split_runs_through_cityscapesscripts_evaluator_command(dataset, tmp_path):
    """Predicting the ground truth itself: IoU 1 for every class present and, through the instance
    ids, instance-weighted iIoU 1 for every instance class present."""
    from tests.cityscapes_support import run_pixel_level_evaluator
    results = tmp_path / "results"
    results.mkdir()
    present = set()
    for f in _frames(dataset, "val"):
        stem = f.label.name.replace("_gtFine_labelIds.png", "")
        (results / f"{stem}_pred.png").write_bytes(f.label.read_bytes())
        present |= set(np.unique(imageio.read_label(f.label)).tolist())
    scores = run_pixel_level_evaluator(dataset, results, tmp_path)
    from cityscapesscripts.helpers.labels import id2label
    evaluated = [id2label[i] for i in present if not id2label[i].ignoreInEval]
    assert evaluated and all(scores["classScores"][lab.name] == 1.0 for lab in evaluated)
    instance_classes = [lab for lab in evaluated if lab.hasInstances]
    assert instance_classes and all(scores["classInstScores"][lab.name] == 1.0 for lab in instance_classes)


def test_every_label_id_is_a_known_cityscapes_id(dataset):
    seen = set()
    for split in synth.SPLITS:
        for f in _frames(dataset, split):
            ids = imageio.read_label(f.label)
            seen |= set(np.unique(ids).tolist())
    assert seen <= KNOWN_LABEL_IDS
    assert {ID["road"], ID["sky"], ID["building"], ID["car"]} <= seen


def test_same_seed_gives_identical_files_and_more_sequences_keep_the_earlier_ones(tmp_path):
    cfg = _small(train_sequences=2, val_sequences=0, test_sequences=1, frames_per_sequence=2)
    a = _files(synth.generate(cfg, tmp_path / "a"))
    b = _files(synth.generate(cfg, tmp_path / "b"))
    assert a == b

    more = _files(synth.generate(_small(train_sequences=3, val_sequences=1, test_sequences=1,
                                        frames_per_sequence=2), tmp_path / "c"))
    images = [k for k in a if k.endswith(".png") or k.endswith(".json") and k.startswith("camera")]
    assert images and all(more[k] == a[k] for k in images)

    other = _files(synth.generate(_small(train_sequences=2, val_sequences=0, test_sequences=1,
                                         frames_per_sequence=2, seed=8), tmp_path / "d"))
    assert other.keys() == a.keys()
    assert any(other[k] != a[k] for k in images)


def _horizon_row(cam: dict) -> float:
    """Image row of the horizon of a pinhole camera pitched down by `pitch`."""
    return cam["intrinsic"]["v0"] - cam["intrinsic"]["fy"] * math.tan(cam["extrinsic"]["pitch"])


def test_depth_from_the_camera_json_matches_the_ground_plane(dataset):
    checked = 0
    for f in _frames(dataset):
        cam = cityscapes.load_camera(f)
        depth = cityscapes.disparity_to_depth(cityscapes.load_inverse_depth(f), cam)
        ids = imageio.read_label(f.label)
        fy, v0 = cam["intrinsic"]["fy"], cam["intrinsic"]["v0"]
        pitch, height = cam["extrinsic"]["pitch"], cam["extrinsic"]["z"]
        rows = np.arange(ids.shape[0], dtype=np.float64)[:, None]
        # a pixel's ray meets the flat ground at camera depth h / ((v - v0) / fy cos p + sin p)
        expected = height / ((rows - v0) / fy * math.cos(pitch) + math.sin(pitch))
        road = (ids == ID["road"]) & (rows > _horizon_row(cam) + 2) & (depth > 0) & (depth < 40)
        rel = np.abs(depth[road] - np.broadcast_to(expected, ids.shape)[road]) / depth[road]
        assert rel.max() < 0.01
        checked += road.sum()
    assert checked > 1000


def test_road_disparity_grows_toward_the_bottom_and_sky_has_none(dataset):
    for f in _frames(dataset):
        ids = imageio.read_label(f.label)
        disp = imageio.read_disparity(f.disparity)
        cam = cityscapes.load_camera(f)
        sky = ids == ID["sky"]
        assert (disp[sky] == 0).all() and (disp[~sky] > 0).all()
        sky_rows = np.nonzero(sky.any(axis=1))[0]
        assert sky_rows.size and sky_rows.max() < _horizon_row(cam) + 1  # sky lies above the horizon
        road = ids == ID["road"]
        rows = [r for r in range(ids.shape[0]) if road[r].sum() >= 5]
        means = [disp[r][road[r]].mean() for r in rows]
        assert len(rows) > 10 and np.all(np.diff(means) > 0)


def test_farther_objects_are_smaller_and_have_lower_disparity():
    """Pinhole: height_px = fy H / Z and disparity = B fx / Z, so height_px / disparity gives back
    the metric height H; across persons, bigger means nearer means larger disparity."""
    cfg = _small(height=128, width=256, train_sequences=20, frames_per_sequence=1,
                 weather_weights={"clear": 1.0}, time_weights={"day": 1.0})
    heights, disps, metric = [], [], []
    for i in range(cfg.train_sequences):
        for _, _, ids, disp, cam, _ in synth.render_sequence(cfg, "train", i):
            fx, fy, base = cam["intrinsic"]["fx"], cam["intrinsic"]["fy"], cam["extrinsic"]["baseline"]
            n, comp, stats, _ = cv2.connectedComponentsWithStats((ids == ID["person"]).astype(np.uint8), 8)
            for j in range(1, n):
                x, y, w, h, area = stats[j]
                if area < 25 or y + h >= ids.shape[0] or x == 0 or x + w >= ids.shape[1]:
                    continue
                d = float(np.median(disp[comp == j]))
                heights.append(h)
                disps.append(d)
                metric.append(h / fy * base * fx / d)
    assert len(heights) >= 20
    assert spearmanr(heights, disps).statistic > 0.6  # heights vary (children) and some are occluded
    metric = np.array(metric)
    assert 1.5 < np.median(metric) < 2.1  # persons are 1.5-1.95 m tall (+1 px of rounding)
    assert ((metric > 0.9) & (metric < 2.3)).mean() > 0.75


def test_label_edges_are_image_edges():
    cfg = _small(height=128, width=256, train_sequences=2, frames_per_sequence=1, difficulty=0.0,
                 weather_weights={"clear": 1.0}, time_weights={"day": 1.0})
    for i in range(2):
        for _, rgb, ids, _, _, _ in synth.render_sequence(cfg, "train", i):
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
            grad = np.abs(np.diff(grey, axis=1))  # [H, W - 1] between horizontal neighbours
            edge = ids[:, 1:] != ids[:, :-1]
            assert grad[edge].mean() > 3 * grad[~edge].mean()


def test_weather_and_light_change_the_image_not_the_labels():
    clear = _small(train_sequences=2, frames_per_sequence=1, weather_weights={"clear": 1.0},
                   time_weights={"day": 1.0})
    variants = {
        "fog": _small(train_sequences=2, frames_per_sequence=1, weather_weights={"fog": 1.0},
                      time_weights={"day": 1.0}),
        "night": _small(train_sequences=2, frames_per_sequence=1, weather_weights={"clear": 1.0},
                        time_weights={"night": 1.0}),
        "rain": _small(train_sequences=2, frames_per_sequence=1, weather_weights={"rain": 1.0},
                       time_weights={"day": 1.0}),
    }
    for i in range(2):
        _, base_rgb, base_ids, base_disp, _, _ = next(synth.render_sequence(clear, "train", i))
        for name, cfg in variants.items():
            _, rgb, ids, disp, cam, _ = next(synth.render_sequence(cfg, "train", i))
            np.testing.assert_array_equal(ids, base_ids)
            np.testing.assert_array_equal(disp, base_disp)
            assert cam["synth"]["weather"] == ("clear" if name == "night" else name)
            if name == "night":
                assert rgb.mean() < 0.6 * base_rgb.mean()
            if name == "fog":  # distant things fade into the fog colour: less contrast far away
                far = (disp > 0) & (disp < np.percentile(disp[disp > 0], 30))
                assert rgb[far].std() < 0.7 * base_rgb[far].std()
                assert cam["synth"]["fog_visibility_m"] > 0


def test_consecutive_frames_of_a_drive_log_are_similar_but_not_identical():
    cfg = _small(height=128, width=256, train_sequences=3, frames_per_sequence=2)
    logs = [list(synth.render_sequence(cfg, "train", i)) for i in range(3)]
    for frames in logs:
        (_, rgb0, ids0, _, cam0, _), (_, rgb1, ids1, _, cam1, _) = frames
        assert cam1["synth"]["ego_position_m"]["z"] >= cam0["synth"]["ego_position_m"]["z"]
        assert (rgb0 != rgb1).any()
        within = (ids0 == ids1).mean()
        across = [(ids0 == other[0][2]).mean() for other in logs if other is not frames]
        assert within > 0.6 and within > max(across)


def _zoom(ids: np.ndarray, cam: dict, s: float) -> np.ndarray:
    """Label image scaled by s about the vanishing point (255 where nothing maps)."""
    u0, vh = cam["intrinsic"]["u0"], _horizon_row(cam)
    m = np.array([[s, 0, u0 * (1 - s)], [0, s, vh * (1 - s)]], np.float32)
    return cv2.warpAffine(ids, m, ids.shape[::-1], flags=cv2.INTER_NEAREST, borderValue=255)


def test_the_ego_camera_drives_forward_so_the_scene_expands():
    """Driving forward, the next frame looks like the previous one zoomed in about the vanishing
    point (everything comes nearer and grows), not zoomed out."""
    cfg = _small(height=128, width=256, train_sequences=8, frames_per_sequence=2)
    moved = 0
    for i in range(cfg.train_sequences):
        (_, _, ids0, _, cam0, _), (_, _, ids1, _, cam1, _) = synth.render_sequence(cfg, "train", i)
        if cam1["synth"]["ego_position_m"]["z"] - cam0["synth"]["ego_position_m"]["z"] < 1.0:
            continue  # a stopped car
        moved += 1
        agree = {}
        for s in (1 / 1.12, 1.12):
            zoomed = _zoom(ids0, cam0, s)
            valid = zoomed != 255
            agree[s] = (zoomed[valid] == ids1[valid]).mean()
        assert agree[1.12] > agree[1 / 1.12]
    assert moved >= 4


def test_rare_classes_are_rarer_than_common_ones():
    cfg = _small(height=64, width=128, train_sequences=60, frames_per_sequence=1, seed=3)
    counts = np.zeros(256, np.int64)
    for i in range(cfg.train_sequences):
        for _, _, ids, _, _, _ in synth.render_sequence(cfg, "train", i):
            counts += np.bincount(ids.ravel(), minlength=256)
    share = counts / counts.sum()
    for rare in ("rider", "motorcycle", "bicycle", "bus", "truck", "traffic light"):
        assert share[ID[rare]] < share[ID["car"]] / 8, rare
    for rare in ("rider", "motorcycle", "bicycle", "traffic light"):
        assert share[ID[rare]] < share[ID["person"]] / 2, rare
    for common in ("road", "building", "vegetation", "car", "sidewalk", "sky", "pole", "person"):
        assert share[ID[common]] > 0.004, common


def test_refuses_a_non_empty_out_dir_and_leaves_it_alone(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="--overwrite"):
        synth.generate(_small(), out)
    with pytest.raises(InvalidInput, match="not a synthetic dataset"):
        synth.generate(_small(), out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folder left


def test_overwrite_replaces_a_previous_dataset(tmp_path):
    out = tmp_path / "ds"
    synth.generate(_small(train_sequences=1, val_sequences=0, test_sequences=0, frames_per_sequence=1), out)
    (tmp_path / "empty").mkdir()
    synth.generate(_small(train_sequences=1, val_sequences=0, test_sequences=0, frames_per_sequence=1),
                   tmp_path / "empty")  # an empty folder is fine
    synth.generate(_small(train_sequences=0, val_sequences=1, test_sequences=0, frames_per_sequence=1),
                   out, overwrite=True)
    assert not (out / "leftImg8bit" / "train").exists() and (out / "leftImg8bit" / "val").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "empty"]


def test_parallel_workers_write_the_same_bytes(tmp_path):
    cfg = _small(train_sequences=2, val_sequences=1, test_sequences=0, frames_per_sequence=1)
    assert _files(synth.generate(cfg, tmp_path / "one")) == _files(synth.generate(cfg, tmp_path / "two", workers=2))


def test_sigterm_during_generation_leaves_nothing_behind(tmp_path):
    out = tmp_path / "ds"
    # the synth command alone (app.cli would also import torch for the other commands: slow)
    command = ("import argparse, sys; from segxal.data import synth; p = argparse.ArgumentParser(); "
               "synth.register_cli(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    proc = subprocess.Popen(
        [sys.executable, "-c", command, "data", "synth", "--out", str(out), "--height", "64", "--width", "128",
         "--train-sequences", "400", "--val-sequences", "0", "--test-sequences", "0"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".ds.synth-*/leftImg8bit")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert os.listdir(tmp_path) == []


def test_a_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    real = synth._write_sequence
    calls = []

    def fail_on_second(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(synth.dataset, "_write_sequence", fail_on_second)  # where generate() looks it up
    with pytest.raises(KeyboardInterrupt):
        synth.generate(_small(), tmp_path / "ds")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change", [dict(height=8), dict(frames_per_sequence=0), dict(difficulty=3.0),
                                    dict(weather_weights={"snow": 1.0}), dict(train_sequences=0,
                                    val_sequences=0, test_sequences=0), dict(jpeg_quality=101)])
def test_invalid_configs_are_refused_before_writing(tmp_path, change):
    with pytest.raises(InvalidInput):
        synth.generate(_small(**change), tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_the_dataset_and_refuses_to_clobber(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["data", "synth", "--out", str(out), "--height", "64", "--width", "128", "--train-sequences", "1",
            "--val-sequences", "1", "--test-sequences", "0", "--frames-per-sequence", "2", "--seed", "5",
            "--weather", "clear=1,fog=0.5", "--time-of-day", "day"]
    assert cli.main(argv) == 0
    assert len(cityscapes.list_frames(out, "train")) == 2 and len(cityscapes.list_frames(out, "val")) == 2
    record = json.loads((out / synth.SIDECAR).read_text())
    assert record["config"]["weather_weights"] == {"clear": 1.0, "fog": 0.5}
    assert cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite"]) == 0
    assert cli.main(argv[:-2] + ["--time-of-day", "noon", "--overwrite"]) == 2


def test_full_resolution_frame(tmp_path):
    cfg = synth.SynthConfig(height=1024, width=2048, train_sequences=1, val_sequences=0, test_sequences=0,
                            frames_per_sequence=1)
    out = synth.generate(cfg, tmp_path / "full")
    (frame,) = cityscapes.list_frames(out, "train", require_labels=True)
    assert imageio.read_rgb(frame.image).shape == (1024, 2048, 3)
    assert cityscapes.load_train_ids(frame, (1024, 2048)).shape == (1024, 2048)
    cam = cityscapes.load_camera(frame)
    assert cam["intrinsic"]["fx"] == pytest.approx(2262.52)
