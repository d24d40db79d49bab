"""Test inputs for ingest: bags written by the `rosbags` library as ROS tools write them, and
images that claim more pixels than any decode allows (small on disk, huge once decoded)."""
from __future__ import annotations

import functools
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.rosbag2 import StoragePlugin
from rosbags.rosbag2 import Writer as Ros2Writer
from rosbags.typesys import Stores, get_typestore
from ruamel.yaml import YAML

from segxal.ingest import rgb_to_raw

RAW_TOPIC, JPEG_TOPIC = "/cam/front/image_raw", "/cam/left/image_raw/compressed"
ROS1 = get_typestore(Stores.ROS1_NOETIC)
ROS2 = get_typestore(Stores.ROS2_HUMBLE)
RECEIVE_DELAY_NS = 3_000_000  # a bag's record time is the receive time, after the camera's header stamp


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


@functools.lru_cache(maxsize=2)
def png_bomb(side: int = 16384) -> bytes:
    """A valid greyscale PNG of side x side black pixels (16384: 268 Mpx in ~260 kB)."""
    z = zlib.compressobj(9)
    rows = b"\x00" * (side + 1) * 256  # filter byte 0 + a row of zeros, 256 rows at a time
    idat = b"".join(z.compress(rows) for _ in range(side // 256)) + z.compress(b"\x00" * (side + 1) * (side % 256))
    idat += z.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _header(store, k: int, stamp_ns: int):
    sec, nanosec = divmod(stamp_ns, 1_000_000_000)
    t = store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    header = store.types["std_msgs/msg/Header"]
    return header(seq=k, stamp=t, frame_id="camera") if store is ROS1 else header(stamp=t, frame_id="camera")


def _raw_msg(store, k: int, stamp_ns: int, rgb: np.ndarray, encoding: str = "rgb8"):
    pixels = rgb_to_raw(rgb, encoding)
    h, w = pixels.shape[:2]
    return store.types["sensor_msgs/msg/Image"](
        header=_header(store, k, stamp_ns), height=h, width=w, encoding=encoding, is_bigendian=0,
        step=pixels.size // h, data=pixels.reshape(-1))


def _jpeg_msg(store, k: int, stamp_ns: int, jpeg: bytes):
    return store.types["sensor_msgs/msg/CompressedImage"](
        header=_header(store, k, stamp_ns), format="jpeg", data=np.frombuffer(jpeg, np.uint8))


def write_ros1_bag(path: Path, frames, compression=None) -> None:
    """A ROS 1 bag (as `rosbag record`): frames (header stamp, RGB [H, W, 3], JPEG bytes) as a raw
    rgb8 sensor_msgs/Image on RAW_TOPIC and a CompressedImage on JPEG_TOPIC; chunks optionally
    lz4 / bz2 compressed."""
    writer = Ros1Writer(path)
    if compression:
        writer.set_compression(compression)
    with writer:
        raw = writer.add_connection(RAW_TOPIC, "sensor_msgs/msg/Image", typestore=ROS1)
        jpeg = writer.add_connection(JPEG_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=ROS1)
        for k, (stamp, rgb, jpg) in enumerate(frames):
            writer.write(raw, stamp + RECEIVE_DELAY_NS, ROS1.serialize_ros1(_raw_msg(ROS1, k, stamp, rgb), raw.msgtype))
            writer.write(jpeg, stamp + RECEIVE_DELAY_NS, ROS1.serialize_ros1(_jpeg_msg(ROS1, k, stamp, jpg), jpeg.msgtype))


def write_ros2_bag(path: Path, frames, storage: StoragePlugin) -> None:
    """A ROS 2 bag directory (as `ros2 bag record -o path`, metadata.yaml and one storage file,
    SQLite or MCAP) of the same two topics."""
    with Ros2Writer(path, version=9, storage_plugin=storage) as writer:
        raw = writer.add_connection(RAW_TOPIC, "sensor_msgs/msg/Image", typestore=ROS2)
        jpeg = writer.add_connection(JPEG_TOPIC, "sensor_msgs/msg/CompressedImage", typestore=ROS2)
        for k, (stamp, rgb, jpg) in enumerate(frames):
            writer.write(raw, stamp + RECEIVE_DELAY_NS, ROS2.serialize_cdr(_raw_msg(ROS2, k, stamp, rgb), raw.msgtype))
            writer.write(jpeg, stamp + RECEIVE_DELAY_NS, ROS2.serialize_cdr(_jpeg_msg(ROS2, k, stamp, jpg), jpeg.msgtype))


def write_split_bag(path: Path, parts: list[list], storage: StoragePlugin) -> None:
    """One bag directory of several storage files (NAME_0, NAME_1, ... as `ros2 bag record
    --max-bag-size` splits them), metadata.yaml listing them in order."""
    yaml = YAML(typ="safe")
    files, metas = [], []
    for i, frames in enumerate(parts):
        part = path.parent / f"{path.name}-part{i}"
        write_ros2_bag(part, frames, storage)
        meta = yaml.load((part / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        (src,) = meta["relative_file_paths"]
        dst = f"{path.name}_{i}{Path(src).suffix}"
        path.mkdir(exist_ok=True)
        shutil.move(part / src, path / dst)
        shutil.rmtree(part)
        files.append(dst)
        metas.append(meta)
    info = metas[0]
    info["relative_file_paths"] = files
    info["files"] = [{**m["files"][0], "path": f} for m, f in zip(metas, files)]
    info["message_count"] = sum(m["message_count"] for m in metas)
    for t, topic in enumerate(info["topics_with_message_count"]):
        topic["message_count"] = sum(m["topics_with_message_count"][t]["message_count"] for m in metas)
    with open(path / "metadata.yaml", "w") as f:
        yaml.dump({"rosbag2_bagfile_information": info}, f)
