"""Drive logs written by the maintained MCAP writers (mcap_ros2, mcap_ros1, mcap_protobuf), read
back by segxal.ingest: every encoding gives frames whose pixels equal the source, topics stay
apart, sampling keeps what it should, a cut log keeps what came before the damage, and logs we
cannot read say which topic and encoding. The maintained decoders are the reference for what the
log holds; OpenCV is the reference for debayering. Then `segxal ingest log` through the real
coordinator."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader
from mcap_ros1.decoder import DecoderFactory as Ros1DecoderFactory
from mcap_ros2.decoder import DecoderFactory as Ros2DecoderFactory

from app.cli import main as segxal_main
from segxal import imageio
from segxal.errors import InvalidInput
from segxal.ingest import (CameraMessage, IngestCounters, extract_drive_log, iter_drive_log_images, rgb_to_raw,
                           write_camera_log)
from tests.coordinator_support import coordinator_config, running_coordinator

T0 = 1_700_000_000_000_000_000  # ns
PROFILES = ["ros2", "ros1", "foxglove"]
BAYER_TO_CV = {"bayer_rggb8": cv2.COLOR_BayerBG2RGB, "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
               "bayer_gbrg8": cv2.COLOR_BayerGR2RGB, "bayer_grbg8": cv2.COLOR_BayerGB2RGB}


def _scene(seed: int, h: int = 32, w: int = 64) -> np.ndarray:
    """Random 8 x 8 blocks of colour: uint8 RGB [H, W, 3]."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))


def _stored(rec) -> np.ndarray:
    return imageio.decode_image(imageio.read_bytes(rec.uri), mode=None)


def _extract(path, tmp_path, **kw):
    return list(extract_drive_log(path, tmp_path / "storage", near_duplicate_threshold=kw.pop("thr", 0), **kw))


# ---------------------------------------------------------------- every encoding, every profile

@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "mono8"])
def test_raw_images_ingest_to_the_source_pixels(tmp_path, profile, encoding):
    scenes = [_scene(i) for i in range(3)]
    raws = [rgb_to_raw(s, encoding) for s in scenes]
    path = tmp_path / "raw.mcap"
    # Rows padded by 5 bytes, as some drivers align them: the reader must honour `step`.
    write_camera_log(path, [CameraMessage("/cam/front/image_raw", T0 + i * 10**8, r, encoding, row_padding=5)
                            for i, r in enumerate(raws)], profile)
    frames = _extract(path, tmp_path)
    assert [f.timestamp_ns for f in frames] == [T0 + i * 10**8 for i in range(3)]
    for f, scene, raw in zip(frames, scenes, raws):
        expected = raw if encoding == "mono8" else scene  # grey stays grey; colour comes back as RGB
        np.testing.assert_array_equal(_stored(f), expected)
        assert (f.height, f.width) == scene.shape[:2] and f.uri.endswith(".png")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("encoding", sorted(BAYER_TO_CV))
def test_bayer_images_are_debayered_like_opencv_and_keep_flat_colours(tmp_path, profile, encoding):
    flat = np.zeros((32, 64, 3), np.uint8)
    flat[:] = (200, 90, 30)  # a flat colour: every demosaicing gives it back exactly
    flat[:, 32:] = (20, 160, 240)
    mosaic = rgb_to_raw(flat, encoding)
    path = tmp_path / "bayer.mcap"
    write_camera_log(path, [CameraMessage("/cam/bayer", T0, mosaic, encoding)], profile)
    (frame,) = _extract(path, tmp_path)
    got = _stored(frame)
    np.testing.assert_array_equal(got, cv2.cvtColor(mosaic, BAYER_TO_CV[encoding]))
    # Away from the colour edge (and the image border) the flat colours come back.
    np.testing.assert_array_equal(got[2:-2, 2:28], flat[2:-2, 2:28])
    np.testing.assert_array_equal(got[2:-2, 36:-2], flat[2:-2, 36:-2])


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_images_are_stored_byte_for_byte(tmp_path, profile, fmt):
    scenes = [_scene(10 + i) for i in range(3)]
    blobs = [imageio.encode_jpeg(s) if fmt == "jpeg" else imageio.encode_png(s) for s in scenes]
    path = tmp_path / "compressed.mcap"
    # ROS image_transport's compressed plugin writes "<encoding>; <codec> compressed <encoding>".
    ros_format = "rgb8; jpeg compressed bgr8" if fmt == "jpeg" else "png"
    write_camera_log(path, [CameraMessage("/cam/front/compressed", T0 + i, b, fmt) for i, b in enumerate(blobs)],
                     profile)
    if profile != "foxglove":  # the maintained decoder reads what the writer wrote
        factory = Ros2DecoderFactory() if profile == "ros2" else Ros1DecoderFactory()
        with open(path, "rb") as f:
            decoded = [m.decoded_message for m in make_reader(f, decoder_factories=[factory]).iter_decoded_messages()]
        assert [bytes(m.data) for m in decoded] == blobs
    frames = _extract(path, tmp_path)
    assert [imageio.read_bytes(f.uri) for f in frames] == blobs  # not re-encoded
    if fmt == "png":
        for f, s in zip(frames, scenes):
            np.testing.assert_array_equal(_stored(f), s)
    del ros_format


def test_ros_image_transport_format_strings(tmp_path):
    blob = imageio.encode_jpeg(_scene(1))
    path = tmp_path / "transport.mcap"
    write_camera_log(path, [CameraMessage("/cam", T0, blob, "jpeg")], "ros2")
    from segxal.ingest.messages import compressed_format
    assert compressed_format("rgb8; jpeg compressed bgr8", "t") == "jpeg"
    assert compressed_format("bgr8; compressed png", "t") == "png"
    with pytest.raises(InvalidInput, match="topic /depth: compressed image format '16UC1; compressedDepth png'"):
        compressed_format("16UC1; compressedDepth png", "topic /depth")


# ---------------------------------------------------------------- topics and sampling

def test_two_topics_land_as_two_cameras_with_their_timestamps(tmp_path):
    front, left = [_scene(i) for i in range(4)], [_scene(100 + i) for i in range(4)]
    msgs = []
    for i in range(4):
        msgs.append(CameraMessage("/cam/front/image_raw", T0 + i * 10**8, rgb_to_raw(front[i], "bgr8"), "bgr8"))
        msgs.append(CameraMessage("/cam/left/image_raw", T0 + i * 10**8 + 5, rgb_to_raw(left[i], "bayer_rggb8"),
                                  "bayer_rggb8"))
    path = tmp_path / "two.mcap"
    write_camera_log(path, msgs, "ros2")
    frames = _extract(path, tmp_path)
    by_topic = {}
    for f in frames:
        by_topic.setdefault(f.source, []).append(f)
    assert sorted(by_topic) == [f"mcap:{path}#/cam/front/image_raw", f"mcap:{path}#/cam/left/image_raw"]
    assert [f.timestamp_ns for f in by_topic[f"mcap:{path}#/cam/front/image_raw"]] == [T0 + i * 10**8 for i in range(4)]
    assert [f.timestamp_ns for f in by_topic[f"mcap:{path}#/cam/left/image_raw"]] == [T0 + i * 10**8 + 5
                                                                                      for i in range(4)]
    for f, s in zip(by_topic[f"mcap:{path}#/cam/front/image_raw"], front):
        np.testing.assert_array_equal(_stored(f), s)
    only_left = _extract(path, tmp_path, topics=["/cam/left/image_raw"])
    assert [f.timestamp_ns for f in only_left] == [T0 + i * 10**8 + 5 for i in range(4)]


def test_sampling_by_time_gap_and_near_duplicates_per_topic(tmp_path):
    dt = 1_000_000_000 // 30  # a 30 Hz camera
    msgs = []
    for k in range(30):  # one second of two cameras; /cam/b repeats one scene the whole time
        msgs.append(CameraMessage("/cam/a", T0 + k * dt, rgb_to_raw(_scene(k), "rgb8"), "rgb8"))
        msgs.append(CameraMessage("/cam/b", T0 + k * dt, rgb_to_raw(_scene(999), "rgb8"), "rgb8"))
    path = tmp_path / "30hz.mcap"
    write_camera_log(path, msgs, "ros1")
    counters = IngestCounters()
    frames = list(extract_drive_log(path, tmp_path / "storage", min_gap_s=0.25, counters=counters))
    a = [f.timestamp_ns for f in frames if f.source.endswith("#/cam/a")]
    b = [f.timestamp_ns for f in frames if f.source.endswith("#/cam/b")]
    # k/30 s: the first frame, then the first one at least 0.25 s after the last kept one: k = 8, 16, 24.
    assert a == [T0 + k * dt for k in (0, 8, 16, 24)]
    assert b == [T0]  # the same scene four times: three near-duplicates of the first
    assert counters.frames_read == 60
    assert counters.frames_skipped_min_gap == 52 and counters.frames_skipped_near_duplicate == 3
    with pytest.raises(InvalidInput, match="min_gap_s must be >= 0"):
        list(iter_drive_log_images(path, min_gap_s=-1))


# ---------------------------------------------------------------- damage and bad input

def test_truncated_log_keeps_what_was_read_and_says_where_it_broke(tmp_path):
    path = tmp_path / "log.mcap"
    write_camera_log(path, [CameraMessage("/cam", T0 + i * 10**8, rgb_to_raw(_scene(i), "rgb8"), "rgb8")
                            for i in range(30)], "ros2", chunk_size=4096)
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.6)])
    got = []
    with pytest.raises(InvalidInput, match=r"truncated or corrupt MCAP .* after (\d+) images \(last message read: "
                                           r"log time \d+ ns\); the images before the damage were kept") as err:
        for rec in extract_drive_log(cut, tmp_path / "storage", near_duplicate_threshold=0):
            got.append(rec)
    assert 5 < len(got) < 30
    assert f"after {len(got)} images" in str(err.value)
    assert f"log time {got[-1].timestamp_ns} ns" in str(err.value)
    for i, rec in enumerate(got):
        np.testing.assert_array_equal(_stored(rec), _scene(i))


def test_unsupported_encoding_names_the_topic_and_encoding_and_keeps_the_rest(tmp_path):
    msgs = []
    for i in range(3):
        msgs.append(CameraMessage("/cam/front", T0 + i, rgb_to_raw(_scene(i), "rgb8"), "rgb8"))
        msgs.append(CameraMessage("/cam/rear", T0 + i, _scene(50 + i)[:, :, :2].copy(), "yuv422"))
    path = tmp_path / "mixed.mcap"
    write_camera_log(path, msgs, "foxglove")
    got = []
    with pytest.raises(InvalidInput, match=r"3 images could not be read and were skipped: topic /cam/rear: image "
                                           r"encoding 'yuv422' is not supported \(supported: .*bayer_rggb8.*\) "
                                           r"\(3 images\)"):
        for rec in extract_drive_log(path, tmp_path / "storage", near_duplicate_threshold=0):
            got.append(rec)
    assert [r.source.rsplit("#", 1)[1] for r in got] == ["/cam/front"] * 3


def test_a_wanted_topic_without_images_is_named_with_its_schema(tmp_path):
    from foxglove_schemas_protobuf.Log_pb2 import Log
    from mcap_protobuf.writer import Writer as ProtobufWriter
    path = tmp_path / "text.mcap"
    with open(path, "wb") as f:
        w = ProtobufWriter(f)
        w.write_message("/rosout", Log(message="hello", name="node"), log_time=T0, publish_time=T0)
        w.finish()
    with pytest.raises(InvalidInput, match=r"topics that hold no camera images: /rosout \(foxglove.Log\)"):
        list(iter_drive_log_images(path, topics=["/rosout"]))
    with pytest.raises(InvalidInput, match=r"no camera image messages .*channels: /rosout \(foxglove.Log\)"):
        list(iter_drive_log_images(path))


# ---------------------------------------------------------------- through the coordinator

def test_segxal_ingest_log_through_the_coordinator(tmp_path, capsys):
    path = tmp_path / "drive.mcap"
    dt = 1_000_000_000 // 10
    msgs = []
    for k in range(10):
        msgs.append(CameraMessage("/cam/front/image_raw", T0 + k * dt, rgb_to_raw(_scene(k), "bayer_grbg8"),
                                  "bayer_grbg8"))
        msgs.append(CameraMessage("/cam/left/compressed", T0 + k * dt, imageio.encode_png(_scene(200 + k)), "png"))
        msgs.append(CameraMessage("/cam/right/compressed", T0 + k * dt, imageio.encode_png(_scene(300 + k)), "png"))
    write_camera_log(path, msgs, "ros2")
    with running_coordinator(coordinator_config(f"sqlite://{tmp_path / 'c.db'}", tmp_path / "storage")) as (server, client):
        argv = ["ingest", "log", str(path), "--coordinator", server.target, "--pool", "drive", "--create-pool",
                "--topic", "/cam/front/image_raw", "--topic", "/cam/left/compressed", "--min-gap-s", "0.25"]
        assert segxal_main(argv) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert lines[0]["frames_added"] == 8 and lines[0]["frames_skipped_min_gap"] == 12 and not lines[0]["error"]
        frames = list(client.frames(client.get_pool(name="drive").pool_id))
        cams = {}
        for f in frames:
            cams.setdefault(f.source.rsplit("#", 1)[1], []).append(f.timestamp_ns)
        # 10 Hz, at most one frame per 0.25 s: k = 0, 3, 6, 9 on each of the two topics asked for.
        assert {t: sorted(v) for t, v in cams.items()} == {
            t: [T0 + k * dt for k in (0, 3, 6, 9)] for t in ("/cam/front/image_raw", "/cam/left/compressed")}
        assert segxal_main(["ingest", "log", str(path), "--coordinator", server.target, "--pool", "nope"]) == 2
        assert "no pool 'nope' (pass --create-pool to make it)" in capsys.readouterr().err
        # A pool in the segmentation model's classes: its Triton label file
        (tmp_path / "labels.txt").write_text("flat\nvehicle\nhuman\nsky\n")
        base = ["ingest", "log", str(path), "--coordinator", server.target, "--topic", "/cam/left/compressed"]
        assert segxal_main([*base, "--pool", "four", "--create-pool", "--labels", str(tmp_path / "labels.txt")]) == 0
        assert tuple(client.get_pool(name="four").class_names) == ("flat", "vehicle", "human", "sky")
        capsys.readouterr()
        assert segxal_main([*base, "--pool", "drive", "--labels", str(tmp_path / "labels.txt")]) == 2
        assert "pool 'drive' is labelled in 19 classes (road, " in capsys.readouterr().err


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_a_log_cut_inside_its_only_chunk_keeps_the_images_before_the_cut(tmp_path, compression):
    """A log under the writers' 1 MiB chunk size is one chunk: the cut falls inside it."""
    noise = [np.random.default_rng(i).integers(0, 256, (128, 256, 3), dtype=np.uint8) for i in range(10)]
    path = tmp_path / "small.mcap"
    write_camera_log(path, [CameraMessage("/cam", T0 + i * 10**8, n, "rgb8") for i, n in enumerate(noise)], "ros2",
                     compression=compression)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    got = []
    with pytest.raises(InvalidInput, match=r"truncated or corrupt MCAP \(chunk record claims \d+ bytes, only \d+ are "
                                           r"left: cut off at byte \d+\) after (\d+) images"):
        for rec in extract_drive_log(cut, tmp_path / "storage", near_duplicate_threshold=0):
            got.append(rec)
    # 60 % of the bytes hold 6 of the 10 images whole (98 kB of noise each: it does not compress);
    # zstd and lz4 decode whole blocks (128 / 64 kB), so the last one before the cut may be lost.
    assert 5 <= len(got) <= 6
    assert [r.timestamp_ns for r in got] == [T0 + i * 10**8 for i in range(len(got))]
    for rec, n in zip(got, noise):
        np.testing.assert_array_equal(_stored(rec), n)


# ---------------------------------------------------------------- images larger than any decode allows

@pytest.mark.parametrize("profile", PROFILES)
def test_a_raw_image_over_the_pixel_limit_is_skipped_from_its_stated_size(tmp_path, profile):
    """8200 x 8200 mono8 (67.2 Mpx, just over the 8192 x 8192 limit) between two good frames: the
    size is read from the message's first bytes, so no pixel buffer is made for it."""
    import tracemalloc
    side = 8200
    path = tmp_path / "bomb.mcap"
    write_camera_log(path, [CameraMessage("/cam/a", T0, rgb_to_raw(_scene(1), "rgb8"), "rgb8"),
                            CameraMessage("/cam/a", T0 + 1, np.zeros((side, side), np.uint8), "mono8"),
                            CameraMessage("/cam/a", T0 + 2, rgb_to_raw(_scene(2), "rgb8"), "rgb8")], profile)
    assert path.stat().st_size < 1_000_000  # zeros compress: small on disk
    counters, got = IngestCounters(), []
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match=rf"1 images could not be read and were skipped: .*#/cam/a@{T0 + 1}: raw "
                                               rf"image of {side} x {side} = {side * side} pixels is over the decode "
                                               rf"limit of 67108864 pixels"):
            for rec in extract_drive_log(path, tmp_path / "storage", near_duplicate_threshold=0, counters=counters):
                got.append(rec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.timestamp_ns for r in got] == [T0, T0 + 2]
    assert counters.frames_read == 3 and counters.frames_skipped_unreadable == 1
    assert len(list((tmp_path / "storage").rglob("*.png"))) == 2
    # The decompressed chunk holds the message once (side^2 bytes); decoding it would need several copies.
    assert peak < 1.3 * side * side, peak


def test_a_compressed_bomb_is_skipped_and_the_frames_after_it_are_kept(tmp_path):
    from tests.ingest_support import png_bomb
    good = [imageio.encode_jpeg(_scene(i)) for i in range(3)]
    path = tmp_path / "bomb.mcap"
    write_camera_log(path, [CameraMessage("/cam/c", T0, good[0], "jpeg"),
                            CameraMessage("/cam/c", T0 + 1, png_bomb(), "png"),
                            CameraMessage("/cam/c", T0 + 2, good[1], "jpeg"),
                            CameraMessage("/cam/c", T0 + 3, good[2], "jpeg")], "ros2")
    got = []
    with pytest.raises(InvalidInput, match=r"1 images could not be read and were skipped: .*#/cam/c@1700000000000000001: "
                                           r"image of .* is over the decode limit of 67108864 pixels"):
        for rec in extract_drive_log(path, tmp_path / "storage", near_duplicate_threshold=0):
            got.append(rec)
    assert [imageio.read_bytes(r.uri) for r in got] == good
    assert sorted(p.name for p in (tmp_path / "storage").rglob("*.*")) == sorted(Path(r.uri).name for r in got)
