"""Camera messages of a drive log as LogImage: which schemas are images, and how each one's
fields map to (timestamp, compressed bytes or raw pixels).

Read: foxglove `CompressedImage` and `RawImage` (protobuf), ROS 2 `sensor_msgs/msg/CompressedImage`
and `sensor_msgs/msg/Image` (CDR), ROS 1 `sensor_msgs/CompressedImage` and `sensor_msgs/Image`.
ROS messages are decoded by the maintained decoders (mcap-ros2-support, mcap-ros1-support), which
build a decoder from the schema the log carries; the foxglove ones by foxglove-schemas-protobuf.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.RawImage_pb2 import RawImage
from mcap.records import Channel, Schema
from mcap_ros1.decoder import DecoderFactory as Ros1DecoderFactory
from mcap_ros2.decoder import DecoderFactory as Ros2DecoderFactory

from segxal import imageio
from segxal.errors import InvalidInput
from segxal.ingest.pixels import SUPPORTED_ENCODINGS, check_pixel_count, raw_to_image
from segxal.ingest.rosmsgs import ROS1_COMPRESSED_IMAGE, ROS1_IMAGE, ROS2_COMPRESSED_IMAGE, ROS2_IMAGE

FOXGLOVE_COMPRESSED_IMAGE = "foxglove.CompressedImage"
FOXGLOVE_RAW_IMAGE = "foxglove.RawImage"
IMAGE_SCHEMAS = (FOXGLOVE_COMPRESSED_IMAGE, FOXGLOVE_RAW_IMAGE, ROS2_COMPRESSED_IMAGE, ROS2_IMAGE,
                 ROS1_COMPRESSED_IMAGE, ROS1_IMAGE)
RAW = "raw"  # LogImage.image_format of an uncompressed buffer
COMPRESSED_FORMATS = ("jpeg", "png", "webp")


@dataclass(frozen=True)
class LogImage:
    topic: str
    timestamp_ns: int  # capture time from the message header, else the log time
    image_format: str  # "jpeg", "png", "webp", or RAW
    data: bytes  # the compressed image, or the raw pixel buffer
    encoding: str = ""  # RAW: the pixel encoding ("rgb8", "bayer_rggb8", ...)
    width: int = 0  # RAW only
    height: int = 0
    step: int = 0  # RAW: bytes per row

    def pixels(self, where: str) -> np.ndarray:
        """uint8 RGB [H, W, 3], or grey [H, W] for a mono8 raw image.

        Raises:
            InvalidInput: unreadable compressed bytes, an unsupported raw encoding, a short buffer.
        """
        if self.image_format == RAW:
            return raw_to_image(self.data, self.height, self.width, self.encoding, self.step, where)
        return imageio.decode_image(self.data, where=where)


def compressed_format(fmt: str, where: str) -> str:
    """The image codec of a CompressedImage `format` field: "jpeg", "png" or "webp".

    ROS image_transport writes "jpeg" / "png" or "<encoding>; jpeg compressed <encoding>" (the
    compressed plugin); foxglove writes "jpeg", "png", "webp". compressedDepth images are refused.

    Raises:
        InvalidInput: any other format (named with `where`).
    """
    tokens = set(re.split(r"[;\s]+", fmt.strip().lower()))
    if "compresseddepth" not in tokens:
        if tokens & {"jpeg", "jpg"}:
            return "jpeg"
        for name in ("png", "webp"):
            if name in tokens:
                return name
    raise InvalidInput(f"{where}: compressed image format {fmt!r} is not supported "
                       f"(supported: {', '.join(COMPRESSED_FORMATS)})")


def _check_encoding(encoding: str, topic: str) -> None:
    """Unsupported encodings are named with the topic only, so a log's many such images group into
    one message."""
    if encoding.lower() not in SUPPORTED_ENCODINGS:
        raise InvalidInput(f"topic {topic}: image encoding {encoding!r} is not supported "
                           f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")


def _ros2_raw_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a CDR sensor_msgs/msg/Image: encapsulation (4 bytes), stamp (2 x 4),
    frame_id (uint32 length with its NUL, the bytes), padding to 4, then height and width."""
    endian = "<" if data[1] & 1 else ">"
    (n,) = struct.unpack_from(endian + "I", data, 4 + 8)
    at = 12 + n
    at += -at % 4  # CDR aligns a uint32 to 4 from the end of the encapsulation header
    return struct.unpack_from(endian + "II", data, 4 + at)


def _ros1_raw_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a ROS 1 sensor_msgs/Image: seq, stamp (2 x uint32), frame_id (uint32
    length, the bytes), then height and width, little-endian and unaligned."""
    (n,) = struct.unpack_from("<I", data, 12)
    return struct.unpack_from("<II", data, 16 + n)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[at]
        at += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _foxglove_raw_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a foxglove.RawImage, walking the protobuf fields without copying `data`
    (width = field 2, height = field 3, both fixed32)."""
    sizes, at = {2: 0, 3: 0}, 0
    while at < len(data):
        key, at = _varint(data, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 2:
            n, at = _varint(data, at)
            at += n
        elif wire == 5:
            if field in sizes:
                (sizes[field],) = struct.unpack_from("<I", data, at)
            at += 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
    return sizes[3], sizes[2]


_RAW_SIZE = {ROS2_IMAGE: _ros2_raw_size, ROS1_IMAGE: _ros1_raw_size, FOXGLOVE_RAW_IMAGE: _foxglove_raw_size}


def raw_size(schema_name: str, data: bytes | memoryview) -> tuple[int, int] | None:
    """(height, width) a raw image message states, read from its first bytes (never decoding its
    pixels); None for compressed schemas or bytes too short to say (the decoder then reports them)."""
    peek = _RAW_SIZE.get(schema_name)
    if peek is None:
        return None
    try:
        return peek(data)
    except (struct.error, IndexError, ValueError):
        return None


def _stamp_ns(header: Any, ros1: bool) -> int:
    stamp = header.stamp
    if ros1:
        return int(stamp.secs) * 1_000_000_000 + int(stamp.nsecs)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class MessageReader:
    """Turns (schema, channel, message bytes) into LogImage, caching one decoder per schema."""

    def __init__(self):
        self._ros1 = Ros1DecoderFactory()
        self._ros2 = Ros2DecoderFactory()
        self._decoders: dict[int, Callable[[bytes], Any] | None] = {}

    @staticmethod
    def is_image(schema: Schema | None, channel: Channel) -> bool:
        return schema is not None and schema.name in IMAGE_SCHEMAS

    def _ros_decoder(self, schema: Schema, channel: Channel) -> Callable[[bytes], Any] | None:
        if schema.id not in self._decoders:
            factory = self._ros1 if channel.message_encoding == "ros1" else self._ros2
            self._decoders[schema.id] = factory.decoder_for(channel.message_encoding, schema)
        return self._decoders[schema.id]

    def to_image(self, schema: Schema, channel: Channel, data: bytes | memoryview, log_time_ns: int,
                 where: str) -> LogImage:
        """One image message as a LogImage.

        Raises:
            InvalidInput: a message encoding the schema does not go with, unreadable message bytes,
                an unsupported compressed format.
            ResourceExhausted: a raw image whose stated size is over segxal.imageio.MAX_DECODE_PIXELS
                (checked from the message's first bytes, before its pixels are decoded).
        """
        name, enc, topic = schema.name, channel.message_encoding, channel.topic
        size = raw_size(name, data)
        if size is not None:
            check_pixel_count(*size, where)  # before the decoder copies the pixel bytes
        data = bytes(data)
        try:
            if name in (FOXGLOVE_COMPRESSED_IMAGE, FOXGLOVE_RAW_IMAGE):
                if enc != "protobuf":
                    raise InvalidInput(f"{where}: {name} with message encoding {enc!r}, expected protobuf")
                if name == FOXGLOVE_COMPRESSED_IMAGE:
                    msg = CompressedImage.FromString(data)
                else:
                    msg = RawImage.FromString(data)
                ts = msg.timestamp.ToNanoseconds() if msg.HasField("timestamp") else 0
                ts = ts or log_time_ns
                if name == FOXGLOVE_COMPRESSED_IMAGE:
                    return LogImage(topic, ts, compressed_format(msg.format, f"topic {topic}"), msg.data)
                _check_encoding(msg.encoding, topic)
                return LogImage(topic, ts, RAW, msg.data, msg.encoding, msg.width, msg.height, msg.step)
            decoder = self._ros_decoder(schema, channel)
            if decoder is None:
                raise InvalidInput(f"{where}: {name} with message encoding {enc!r} and schema encoding "
                                   f"{schema.encoding!r}; expected ros1/ros1msg or cdr/ros2msg")
            msg = decoder(data)
            ts = _stamp_ns(msg.header, ros1=enc == "ros1") or log_time_ns
            if name in (ROS2_COMPRESSED_IMAGE, ROS1_COMPRESSED_IMAGE):
                return LogImage(topic, ts, compressed_format(msg.format, f"topic {topic}"), bytes(msg.data))
            _check_encoding(msg.encoding, topic)
            return LogImage(topic, ts, RAW, bytes(msg.data), msg.encoding, int(msg.width), int(msg.height),
                            int(msg.step))
        except InvalidInput:
            raise
        except Exception as e:  # the decoders raise their own types (McapError, struct.error, DecodeError...)
            raise InvalidInput(f"{where}: unreadable {name} message ({type(e).__name__}: {e})") from None
