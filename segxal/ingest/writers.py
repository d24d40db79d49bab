"""Write camera logs the way robots record them, with the maintained MCAP writers (mcap_ros2,
mcap_ros1, mcap_protobuf): ROS 2 / ROS 1 `sensor_msgs` Image and CompressedImage, foxglove
CompressedImage and RawImage. Used to make test and benchmark logs; a real log comes from a car.

    write_camera_log("drive.mcap", [CameraMessage("/cam/front", t_ns, jpeg_bytes, "jpeg"), ...], "ros2")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.RawImage_pb2 import RawImage
from mcap.writer import CompressionType
from mcap_protobuf.writer import Writer as ProtobufWriter
# mcap_ros1's writer takes genpy message objects; its decoder builds their classes from the schema
# text with this same vendored genpy, so writer and reader agree without a ROS installation.
from mcap_ros1._vendor.genpy import dynamic as ros1_dynamic
from mcap_ros1.writer import Writer as Ros1Writer
from mcap_ros2.writer import Writer as Ros2Writer

from segxal import imageio
from segxal.errors import InvalidInput
from segxal.ingest.rosmsgs import (ROS1_COMPRESSED_IMAGE, ROS1_IMAGE, ROS1_MSGDEFS, ROS2_COMPRESSED_IMAGE,
                                   ROS2_IMAGE, ROS2_MSGDEFS)

PROFILES = ("ros2", "ros1", "foxglove")
COMPRESSED = ("jpeg", "png")


@dataclass(frozen=True)
class CameraMessage:
    topic: str
    timestamp_ns: int  # header stamp and log time
    data: bytes | np.ndarray  # compressed bytes, or raw pixels uint8 [H, W] / [H, W, C] in `encoding`
    encoding: str  # "jpeg" / "png" for compressed bytes; a raw encoding ("rgb8", "bayer_rggb8", ...)
    row_padding: int = 0  # raw: extra bytes at the end of each row (step = width * C + padding)
    frame_id: str = "camera"


def _raw_fields(m: CameraMessage) -> tuple[int, int, int, bytes]:
    """(height, width, step, data) of a raw message, rows padded as asked."""
    pixels = np.ascontiguousarray(m.data, dtype=np.uint8)
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)  # [H, W * C]
    if m.row_padding:
        rows = np.concatenate((rows, np.zeros((h, m.row_padding), np.uint8)), axis=1)
    return h, w, rows.shape[1], rows.tobytes()


class _Ros2:
    def __init__(self, f, chunk_size: int, compression: CompressionType):
        self.w = Ros2Writer(f, chunk_size=chunk_size, compression=compression)
        self.schemas = {name: self.w.register_msgdef(name, text) for name, text in ROS2_MSGDEFS.items()}

    def write(self, m: CameraMessage, seq: int) -> None:
        sec, nsec = divmod(int(m.timestamp_ns), 1_000_000_000)
        header = {"stamp": {"sec": sec, "nanosec": nsec}, "frame_id": m.frame_id}
        if isinstance(m.data, bytes):
            schema, msg = self.schemas[ROS2_COMPRESSED_IMAGE], {"header": header, "format": m.encoding, "data": m.data}
        else:
            h, w, step, data = _raw_fields(m)
            schema = self.schemas[ROS2_IMAGE]
            msg = {"header": header, "height": h, "width": w, "encoding": m.encoding, "is_bigendian": 0,
                   "step": step, "data": data}
        self.w.write_message(m.topic, schema, msg, log_time=m.timestamp_ns, publish_time=m.timestamp_ns,
                             sequence=seq)

    def finish(self) -> None:
        self.w.finish()


class _Ros1:
    def __init__(self, f, chunk_size: int, compression: CompressionType):
        self.w = Ros1Writer(f, chunk_size=chunk_size, compression=compression)
        self.types = {name: ros1_dynamic.generate_dynamic(name, text)[name] for name, text in ROS1_MSGDEFS.items()}

    def write(self, m: CameraMessage, seq: int) -> None:
        compressed = isinstance(m.data, bytes)
        msg = self.types[ROS1_COMPRESSED_IMAGE if compressed else ROS1_IMAGE]()
        msg.header.seq = seq
        msg.header.stamp.secs, msg.header.stamp.nsecs = divmod(int(m.timestamp_ns), 1_000_000_000)
        msg.header.frame_id = m.frame_id
        if compressed:
            msg.format, msg.data = m.encoding, m.data
        else:
            msg.height, msg.width, msg.step, msg.data = _raw_fields(m)
            msg.encoding, msg.is_bigendian = m.encoding, 0
        self.w.write_message(m.topic, msg, log_time=m.timestamp_ns, publish_time=m.timestamp_ns, sequence=seq)

    def finish(self) -> None:
        self.w.finish()


class _Foxglove:
    def __init__(self, f, chunk_size: int, compression: CompressionType):
        self.w = ProtobufWriter(f, chunk_size=chunk_size, compression=compression)

    def write(self, m: CameraMessage, seq: int) -> None:
        if isinstance(m.data, bytes):
            msg = CompressedImage(format=m.encoding, data=m.data, frame_id=m.frame_id)
        else:
            h, w, step, data = _raw_fields(m)
            msg = RawImage(width=w, height=h, encoding=m.encoding, step=step, data=data, frame_id=m.frame_id)
        msg.timestamp.FromNanoseconds(int(m.timestamp_ns))
        self.w.write_message(m.topic, msg, log_time=m.timestamp_ns, publish_time=m.timestamp_ns, sequence=seq)

    def finish(self) -> None:
        self.w.finish()


_WRITERS = {"ros2": _Ros2, "ros1": _Ros1, "foxglove": _Foxglove}
_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}


def write_camera_log(path: str | Path, messages: Iterable[CameraMessage], profile: str = "ros2",
                     chunk_size: int = 1 << 20, compression: str = "zstd") -> int:
    """Write camera messages to an MCAP file (beside, then renamed: never half-written).

    Args:
        messages: in log order; several topics may be mixed.
        profile: "ros2" (CDR), "ros1" or "foxglove" (protobuf).
        chunk_size: bytes of messages per chunk (the writers' default, 1 MiB).
        compression: of each chunk: "zstd" (the writers' default), "lz4" or "none".
    Returns:
        the number of messages written.
    Raises:
        InvalidInput: an unknown profile or compression, or compressed bytes whose encoding is not
            jpeg / png.
    """
    if profile not in _WRITERS:
        raise InvalidInput(f"profile must be one of {PROFILES}, got {profile!r}")
    if compression not in _COMPRESSION:
        raise InvalidInput(f"compression must be one of {tuple(_COMPRESSION)}, got {compression!r}")
    count = 0
    with imageio.atomic_output(path, fsync=False) as f:
        writer = _WRITERS[profile](f, chunk_size, _COMPRESSION[compression])
        for m in messages:
            if isinstance(m.data, bytes) and m.encoding not in COMPRESSED:
                raise InvalidInput(f"compressed image bytes need encoding jpeg or png, got {m.encoding!r}")
            writer.write(m, count)
            count += 1
        writer.finish()
    return count
