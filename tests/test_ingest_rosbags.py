"""Drive logs as ROS tools write them, written here by the `rosbags` library (what `rosbag record`
and `ros2 bag record` produce, without a ROS installation): ROS 1 .bag files, ROS 2 bags in SQLite
(.db3) and MCAP storage, as bag directories with metadata.yaml (split into several storage files
too) and as a lone .db3. Each is read back by segxal.ingest with the pixels, bytes, topics and
header stamps that went in, and through `segxal ingest log` and the real coordinator."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin

from app.cli import main as segxal_main
from segxal import imageio
from segxal.errors import InvalidInput
from segxal.ingest import IngestCounters, extract_drive_log
from tests.coordinator_support import coordinator_config, running_coordinator
from tests.ingest_support import JPEG_TOPIC, RAW_TOPIC, write_ros1_bag, write_ros2_bag, write_split_bag

T0 = 1_700_000_000_000_000_000  # ns
DT = 100_000_000  # 10 Hz


def _scene(seed: int, h: int = 32, w: int = 64) -> np.ndarray:
    """Random 8 x 8 blocks of colour: uint8 RGB [H, W, 3]."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))


def _drive(n: int, first: int = 0) -> list[tuple[int, np.ndarray, bytes]]:
    """n frames of two cameras: (header stamp, raw scene, jpeg bytes)."""
    return [(T0 + (first + k) * DT, _scene(first + k), imageio.encode_jpeg(_scene(1000 + first + k)))
            for k in range(n)]


def _check(frames, got, log: Path) -> None:
    """Raw frames come back pixel-exact, JPEGs byte for byte, each on its topic with its header stamp."""
    by_topic: dict[str, list] = {}
    for rec in got:
        by_topic.setdefault(rec.source, []).append(rec)
    assert sorted(by_topic) == sorted(f"mcap:{log.resolve()}#{t}" for t in (RAW_TOPIC, JPEG_TOPIC))
    raws, jpegs = by_topic[f"mcap:{log.resolve()}#{RAW_TOPIC}"], by_topic[f"mcap:{log.resolve()}#{JPEG_TOPIC}"]
    assert [r.timestamp_ns for r in raws] == [r.timestamp_ns for r in jpegs] == [s for s, _, _ in frames]
    for rec, (_, rgb, jpg) in zip(raws, frames):
        np.testing.assert_array_equal(imageio.decode_image(imageio.read_bytes(rec.uri)), rgb)
    for rec, (_, _, jpg) in zip(jpegs, frames):
        assert imageio.read_bytes(rec.uri) == jpg


def _extract(log: Path, tmp_path: Path, **kw) -> list:
    return list(extract_drive_log(log, tmp_path / "storage", near_duplicate_threshold=0, **kw))


# ---------------------------------------------------------------- every format

@pytest.mark.parametrize("compression", [None, Ros1Writer.CompressionFormat.LZ4, Ros1Writer.CompressionFormat.BZ2])
def test_ros1_bags_ingest_with_their_pixels_bytes_topics_and_stamps(tmp_path, compression):
    frames = _drive(5)
    log = tmp_path / "drive.bag"
    write_ros1_bag(log, frames, compression)
    _check(frames, _extract(log, tmp_path), log)


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_ros2_bag_directories_ingest_in_sqlite_and_mcap_storage(tmp_path, storage):
    frames = _drive(5)
    log = tmp_path / "drive_2026_11_03"
    write_ros2_bag(log, frames, storage)
    _check(frames, _extract(log, tmp_path), log)


def test_a_lone_ros2_db3_file_ingests(tmp_path):
    frames = _drive(4)
    write_ros2_bag(tmp_path / "bag", frames, StoragePlugin.SQLITE3)
    (db3,) = (tmp_path / "bag").glob("*.db3")
    _check(frames, _extract(db3, tmp_path), db3)


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
def test_a_split_bag_directory_reads_every_storage_file_in_order(tmp_path, storage):
    parts = [_drive(3, 0), _drive(3, 3), _drive(2, 6)]
    log = tmp_path / "drive"
    write_split_bag(log, parts, storage)
    counters = IngestCounters()
    got = _extract(log, tmp_path, counters=counters)
    _check([f for p in parts for f in p], got, log)
    assert counters.frames_read == 16


def test_a_topic_filter_and_time_gap_apply_to_bags(tmp_path):
    frames = _drive(10)
    log = tmp_path / "drive.bag"
    write_ros1_bag(log, frames)
    got = _extract(log, tmp_path, topics=[JPEG_TOPIC], min_gap_s=0.25)
    assert [r.timestamp_ns for r in got] == [T0 + k * DT for k in (0, 3, 6, 9)]
    assert {r.source.rsplit("#", 1)[1] for r in got} == {JPEG_TOPIC}


def test_a_recording_cut_off_in_its_last_storage_file_keeps_every_image_before_the_cut(tmp_path):
    """`ros2 bag record` killed: the last MCAP file has no footer (and, under 1 MiB, one chunk)."""
    parts = [_drive(3, 0), _drive(6, 3)]
    log = tmp_path / "drive"
    write_split_bag(log, parts, StoragePlugin.MCAP)
    last = log / "drive_1.mcap"
    data = last.read_bytes()
    last.write_bytes(data[: int(len(data) * 0.6)])
    got = []
    with pytest.raises(InvalidInput, match=r"drive_1.mcap: truncated or corrupt MCAP \(chunk record claims \d+ bytes, only "
                                           r"\d+ are left: cut off at byte \d+\) after \d+ images "
                                           r"\(last message read: log time \d+ ns\); the images before the damage "
                                           r"were kept"):
        for rec in extract_drive_log(log, tmp_path / "storage", near_duplicate_threshold=0):
            got.append(rec)
    stamps = sorted({r.timestamp_ns for r in got})
    assert len(stamps) >= 3 + 2  # the whole first file and the intact start of the cut one
    assert stamps == [T0 + k * DT for k in range(len(stamps))]
    frames = {s: (rgb, jpg) for s, rgb, jpg in _drive(9)}
    for rec in got:
        rgb, jpg = frames[rec.timestamp_ns]
        if rec.source.endswith(RAW_TOPIC):
            np.testing.assert_array_equal(imageio.decode_image(imageio.read_bytes(rec.uri)), rgb)
        else:
            assert imageio.read_bytes(rec.uri) == jpg


def test_what_is_not_a_drive_log_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("not a log")
    with pytest.raises(InvalidInput, match=r"not a drive log \(starts b'not a log'\); read: MCAP files, ROS 1 "
                                           r"\.bag .*ROS 2 \.db3 .*bag directories"):
        _extract(tmp_path / "notes.txt", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"a folder without metadata.yaml or .mcap / .db3 storage files"):
        _extract(tmp_path / "empty", tmp_path)
    log = tmp_path / "bag"
    write_ros2_bag(log, _drive(2), StoragePlugin.SQLITE3)
    for db3 in log.glob("*.db3"):
        db3.unlink()
    with pytest.raises(InvalidInput, match=r"storage files listed in metadata.yaml are missing: bag.db3"):
        _extract(log, tmp_path)


# ---------------------------------------------------------------- through the coordinator

def test_segxal_ingest_log_takes_bags_as_ros_tools_name_them(tmp_path, capsys):
    bag1, bag2 = tmp_path / "old.bag", tmp_path / "rosbag2_2026_11_03-10_00_00"
    write_ros1_bag(bag1, _drive(3, 0))
    write_ros2_bag(bag2, _drive(3, 3), StoragePlugin.MCAP)
    with running_coordinator(coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage")) as (server, c):
        argv = ["ingest", "log", str(bag1), str(bag2), "--coordinator", server.target, "--pool", "drive",
                "--create-pool", "--near-duplicate-threshold", "0"]
        assert segxal_main(argv) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [(x["frames_added"], x["error"]) for x in lines[:2]] == [(6, ""), (6, "")]
        frames = list(c.frames(c.get_pool(name="drive").pool_id))
        assert sorted(f.timestamp_ns for f in frames) == sorted([T0 + k * DT for k in range(6)] * 2)
        # A log that cannot be read does not leave a new, empty pool behind.
        (tmp_path / "notes.bag").write_text("not a log")
        argv = ["ingest", "log", str(tmp_path / "notes.bag"), "--coordinator", server.target, "--pool", "new",
                "--create-pool"]
        assert segxal_main(argv) == 2
        assert "notes.bag: not a drive log" in capsys.readouterr().err
        assert [p.name for p in c.list_pools()] == ["drive"]
