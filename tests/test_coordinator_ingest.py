"""Ingest: image folders, Cityscapes-layout folders and MCAP drive logs. The drive-log writer is
checked against mcap's own reader and protobuf decoder; broken logs keep what came before the
damage; then every source kind through the real coordinator on SQLite and PostgreSQL."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from foxglove_schemas_protobuf.Log_pb2 import Log
from mcap.reader import make_reader
from mcap_protobuf.decoder import DecoderFactory
from mcap_protobuf.writer import Writer as ProtobufMcapWriter

from tests.coordinator_support import (BACKENDS, coordinator_config, database_url, running_coordinator,
                                 write_frames)
from segxal import imageio
from segxal.errors import InvalidInput, NotFound
from segxal.ingest import (IngestCounters, extract_drive_log, iter_drive_log_images, iter_image_folder,
                           write_drive_log)
from services.coordinator.client import cityscapes_source, drive_log_source, image_folder_source

T0 = 1_700_000_000_000_000_000  # ns
DT = 100_000_000  # 10 Hz


def _scene(seed: int, h: int = 32, w: int = 64) -> np.ndarray:
    """A blocky RGB frame in 20..235, so small brightness steps never clip."""
    rng = np.random.default_rng(seed)
    small = rng.integers(20, 236, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))  # [H, W, 3]


def _distinct_frames(n: int, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    return [(T0 + i * DT, _scene(seed * 1000 + i)) for i in range(n)]


# ---------------------------------------------------------------- the drive-log format

@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_drive_log_reads_back_with_mcaps_own_decoder(tmp_path, image_format):
    frames = _distinct_frames(5)
    path = tmp_path / "log.mcap"
    assert write_drive_log(path, frames, topic="/cam/front", image_format=image_format) == 5
    with open(path, "rb") as f:  # the reference: mcap's seeking reader + mcap_protobuf's decoder
        decoded = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    assert [m.channel.topic for m in decoded] == ["/cam/front"] * 5
    assert [m.schema.name for m in decoded] == ["foxglove.CompressedImage"] * 5
    assert [m.message.log_time for m in decoded] == [t for t, _ in frames]
    assert [m.decoded_message.timestamp.ToNanoseconds() for m in decoded] == [t for t, _ in frames]
    ours = list(iter_drive_log_images(path))
    assert [im.data for im in ours] == [m.decoded_message.data for m in decoded]
    assert [im.timestamp_ns for im in ours] == [t for t, _ in frames]
    assert {im.image_format for im in ours} == {image_format}
    if image_format == "png":  # lossless: the pixels come back exactly
        for im, (_, rgb) in zip(ours, frames):
            np.testing.assert_array_equal(imageio.decode_image(im.data), rgb)


def test_near_duplicates_are_compared_with_the_last_kept_frame(tmp_path):
    a, b = _scene(1), _scene(2)
    rng = np.random.default_rng(0)
    noisy = np.clip(a.astype(np.int16) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    drift = [np.clip(b.astype(np.int16) + k, 0, 255).astype(np.uint8) for k in (1, 2, 3, 4)]
    seq = [a, noisy, a, b, *drift]  # a kept; noisy and a again skipped; b kept; drift +2 and +4 kept
    path = tmp_path / "log.mcap"
    write_drive_log(path, [(T0 + i * DT, im) for i, im in enumerate(seq)], image_format="png")
    counters = IngestCounters()
    kept = list(extract_drive_log(path, tmp_path / "storage", counters=counters))
    assert [f.timestamp_ns for f in kept] == [T0, T0 + 3 * DT, T0 + 5 * DT, T0 + 7 * DT]
    assert counters.frames_read == 8 and counters.frames_skipped_near_duplicate == 4
    everything = list(extract_drive_log(path, tmp_path / "storage", near_duplicate_threshold=0))
    assert len(everything) == 8
    assert len({f.uri for f in everything}) == 7  # a twice: the same bytes are one file
    with pytest.raises(InvalidInput, match="near_duplicate_threshold"):
        list(extract_drive_log(path, tmp_path / "storage", near_duplicate_threshold=-1))


def test_extraction_is_content_addressed_and_idempotent(tmp_path):
    path = tmp_path / "log.mcap"
    write_drive_log(path, _distinct_frames(4))
    first = list(extract_drive_log(path, tmp_path / "storage"))
    files = sorted((tmp_path / "storage" / "frames").rglob("*.jpg"))
    again = list(extract_drive_log(path, tmp_path / "storage"))
    assert first == again and sorted((tmp_path / "storage" / "frames").rglob("*.jpg")) == files
    assert len(files) == 4 and all(f.width == 64 and f.height == 32 for f in first)
    for rec in first:
        assert rec.source == f"mcap:{path}#/camera/front/image/compressed"
        assert imageio.read_rgb(rec.uri).shape == (32, 64, 3)


def test_truncated_log_keeps_the_images_before_the_damage(tmp_path):
    path = tmp_path / "log.mcap"
    write_drive_log(path, _distinct_frames(30), image_format="png", chunk_size=1024)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    got = []
    with pytest.raises(InvalidInput, match=r"truncated or corrupt MCAP .* after \d+ images .*; the images "
                                           r"before the damage were kept"):
        for rec in extract_drive_log(cut, tmp_path / "storage"):
            got.append(rec)
    assert 5 < len(got) < 30
    assert [r.timestamp_ns for r in got] == [T0 + i * DT for i in range(len(got))]
    assert all(imageio.read_rgb(r.uri).shape == (32, 64, 3) for r in got)


def test_logs_without_images_and_files_that_are_no_drive_log_are_clear_errors(tmp_path):
    text_log = tmp_path / "text.mcap"
    with open(text_log, "wb") as f:
        w = ProtobufMcapWriter(f)
        w.write_message("/rosout", Log(message="hello", name="node"), log_time=T0, publish_time=T0)
        w.finish()
    with pytest.raises(InvalidInput, match=r"no camera image messages \(read: .*\); channels: /rosout \(foxglove.Log\)"):
        list(iter_drive_log_images(text_log))
    images = tmp_path / "images.mcap"
    write_drive_log(images, _distinct_frames(2))
    with pytest.raises(InvalidInput, match=r"no camera image messages on topics \['/cam/rear'\]"):
        list(iter_drive_log_images(images, topics=["/cam/rear"]))
    not_mcap = tmp_path / "notes.mcap"
    not_mcap.write_text("just some text, not a drive log")
    with pytest.raises(InvalidInput, match=r"notes.mcap: not a drive log \(starts b'just some te'\); read: MCAP files, "
                                           r"ROS 1 .bag"):
        list(iter_drive_log_images(not_mcap))
    with pytest.raises(NotFound):
        list(iter_drive_log_images(tmp_path / "missing.mcap"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(InvalidInput, match="no .png/.jpg/.jpeg images"):
        list(iter_image_folder(tmp_path / "empty_dir"))


# ---------------------------------------------------------------- through the service

@pytest.fixture(params=BACKENDS)
def coord(request, tmp_path):
    with database_url(request.param, tmp_path) as url:
        with running_coordinator(coordinator_config(url, tmp_path / "storage")) as (server, client):
            yield SimpleNamespace(server=server, client=client, tmp=tmp_path)


def test_ingest_every_source_kind_and_keep_the_rest_when_one_fails(coord, tiny_dataset):
    tmp, c = coord.tmp, coord.client
    write_frames(tmp / "folder", 3)
    unlabeled = tmp / "unlabeled_cs"
    shutil.copytree(tiny_dataset / "leftImg8bit" / "test", unlabeled / "leftImg8bit" / "test")
    log = tmp / "drive.mcap"
    seq = _distinct_frames(6)
    seq.insert(3, (seq[2][0] + 1, seq[2][1]))  # an exact repeat of frame 2: skipped as a near-duplicate
    write_drive_log(log, seq)
    truncated = tmp / "truncated.mcap"
    write_drive_log(truncated, _distinct_frames(20, seed=1), image_format="png", chunk_size=1024)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    empty_log = tmp / "empty.mcap"
    write_drive_log(empty_log, [])
    sources = [image_folder_source(str(tmp / "folder")),
               cityscapes_source(str(tiny_dataset), "train", require_labels=True),
               cityscapes_source(str(unlabeled), "test"),
               cityscapes_source(str(unlabeled), "test", require_labels=True),
               drive_log_source(str(log)),
               drive_log_source(str(truncated)),
               drive_log_source(str(empty_log)),
               image_folder_source(str(tmp / "nowhere"))]
    pool = c.create_pool("mixed")
    reply = c.ingest(pool.pool_id, sources)
    r = {i: res for i, res in enumerate(reply.results)}
    assert (r[0].frames_added, r[0].error) == (3, "")
    assert (r[1].frames_added, r[1].error) == (24, "")  # 6 sequences x 4 frames
    assert (r[2].frames_added, r[2].error) == (4, "")
    assert r[3].frames_added == 0 and "have no *_gtFine_labelIds.png" in r[3].error
    assert (r[4].frames_added, r[4].frames_skipped_near_duplicate, r[4].error) == (6, 1, "")
    assert 0 < r[5].frames_added < 20 and "truncated or corrupt MCAP" in r[5].error
    assert r[6].frames_added == 0 and "no camera image messages" in r[6].error
    assert r[7].frames_added == 0 and "does not exist" in r[7].error
    total = 3 + 24 + 4 + 6 + r[5].frames_added
    assert reply.frames_added == total and reply.frame_count == total
    frames = list(c.frames(pool.pool_id))
    by_source = {}
    for f in frames:
        by_source.setdefault(f.source.split(":", 1)[0], []).append(f)
    assert all(f.label_uri.endswith("_gtFine_labelIds.png") for f in by_source["cityscapes"]
               if "unlabeled_cs" not in f.source)
    assert all(not f.label_uri for f in by_source["cityscapes"] if "unlabeled_cs" in f.source)
    drive = sorted((f for f in by_source["mcap"] if str(log) in f.source), key=lambda f: f.timestamp_ns)
    assert [f.timestamp_ns for f in drive] == [t for t, _ in _distinct_frames(6)]
    assert all(f.uri.startswith(str(tmp / "storage" / "frames")) for f in by_source["mcap"])

    # re-ingesting is idempotent: nothing new, the broken sources report the same errors
    again = c.ingest(pool.pool_id, sources)
    assert again.frames_added == 0 and again.frame_count == total
    assert [x.frames_already_present for x in again.results] == [x.frames_added for x in reply.results]
    assert [bool(x.error) for x in again.results] == [bool(x.error) for x in reply.results]


def test_ingest_paths_outside_the_ingest_roots_are_refused(tmp_path):
    allowed = tmp_path / "allowed"
    write_frames(allowed, 2)
    write_frames(tmp_path / "secret", 2, seed=1)
    cfg = coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage", ingest_roots=(str(allowed),))
    with running_coordinator(cfg) as (_, c):
        pool = c.create_pool("p")
        reply = c.ingest(pool.pool_id, [image_folder_source(str(allowed)),
                                        image_folder_source(str(allowed / ".." / "secret"))])
        assert reply.results[0].frames_added == 2 and not reply.results[0].error
        assert reply.results[1].frames_added == 0 and "outside the ingest roots" in reply.results[1].error
        with pytest.raises(InvalidInput, match="at least one source"):
            c.ingest(pool.pool_id, [])


def test_a_bomb_frame_is_skipped_and_counted_and_the_other_logs_are_read(coord):
    """A log of [jpeg, 16384 x 16384 PNG, jpeg, jpeg] beside a good log and a ROS 2 bag directory,
    in one IngestFrames call: the bomb is skipped and named in its log's report, every other
    frame lands, and storage holds exactly the frames of the pool (no file for the bomb)."""
    from rosbags.rosbag2 import StoragePlugin

    from segxal.ingest import CameraMessage, write_camera_log
    from tests.ingest_support import png_bomb, write_ros2_bag
    tmp, c = coord.tmp, coord.client
    good = [imageio.encode_jpeg(_scene(i)) for i in range(3)]
    bomb_log = tmp / "bomb.mcap"
    write_camera_log(bomb_log, [CameraMessage("/cam", T0, good[0], "jpeg"),
                                CameraMessage("/cam", T0 + DT, png_bomb(), "png"),
                                CameraMessage("/cam", T0 + 2 * DT, good[1], "jpeg"),
                                CameraMessage("/cam", T0 + 3 * DT, good[2], "jpeg")], "ros2")
    good_log = tmp / "good.mcap"
    write_drive_log(good_log, _distinct_frames(4, seed=5))
    bag = tmp / "rosbag2_2026_11_03"
    write_ros2_bag(bag, [(T0 + k * DT, _scene(50 + k), imageio.encode_jpeg(_scene(60 + k))) for k in range(2)],
                   StoragePlugin.SQLITE3)
    pool = c.create_pool("bombs")
    reply = c.ingest(pool.pool_id, [drive_log_source(str(bomb_log), near_duplicate_threshold=0),
                                    drive_log_source(str(good_log)), drive_log_source(str(bag))])
    bomb, ok, ros = reply.results
    assert (bomb.frames_added, bomb.frames_skipped_unreadable, ok.frames_skipped_unreadable) == (3, 1, 0)
    assert "1 images could not be read and were skipped" in bomb.error and "over the decode limit" in bomb.error
    assert (ok.frames_added, ok.error) == (4, "") and (ros.frames_added, ros.error) == (4, "")
    frames = list(c.frames(pool.pool_id))
    assert reply.frame_count == len(frames) == 11
    stored = sorted(str(p) for p in (tmp / "storage" / "frames").rglob("*") if p.is_file())
    assert stored == sorted(f.uri for f in frames)
    assert sorted(imageio.read_bytes(f.uri) for f in frames if str(bomb_log) in f.source) == sorted(good)
