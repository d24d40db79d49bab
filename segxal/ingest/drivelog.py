"""Drive logs as MCAP files of compressed camera images (foxglove.CompressedImage, protobuf).

Reading streams the file record by record (mcap's NonSeekingReader, no summary needed), so a
truncated log still yields every image before the damage and then raises InvalidInput.

Extraction writes each image's bytes unchanged (no re-encoding, so no quality loss) to
`<storage>/frames/<sha256[:2]>/<sha256>.<ext>`: content-addressed, so ingesting a log twice
writes nothing new and the same frame is never stored twice.

Near-duplicates: a parked car records the same scene for minutes; labeling those frames twice
wastes budget. A frame is skipped when the mean absolute difference between its 32 x 64 grayscale
thumbnail (block means) and the last *kept* frame's thumbnail on the same topic is below a
threshold in grey levels (0..255). Comparing with the last kept frame, not the previous one, means
a slow drift still produces a new frame once it adds up. The default, 2.0, sits above what JPEG
re-encoding and sensor noise leave after block averaging (well under one level) and below the
change of a car moving at walking speed between frames at 10 Hz.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader
from mcap_protobuf.writer import Writer as ProtobufMcapWriter

from segxal import imageio
from segxal.errors import InvalidInput, NotFound
from segxal.ingest.records import IngestCounters, IngestedFrame

FOXGLOVE_COMPRESSED_IMAGE = "foxglove.CompressedImage"
ROS2_COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
DEFAULT_TOPIC = "/camera/front/image/compressed"
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 2.0  # grey levels, see the module docstring
THUMBNAIL_SHAPE = (32, 64)  # (rows, cols): the 1:2 aspect of the default 256 x 512 frames
_EXTENSION_FOR_FORMAT = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png", "webp": ".webp"}


@dataclass(frozen=True)
class LogImage:
    topic: str
    timestamp_ns: int  # capture time from the message, else the log time
    image_format: str  # "jpeg", "png", ...
    data: bytes


def write_drive_log(path: str | Path, frames: Iterable[tuple[int, np.ndarray | bytes]],
                    topic: str = DEFAULT_TOPIC, image_format: str = "jpeg",
                    camera_frame_id: str = "camera_front", chunk_size: int = 1 << 20) -> int:
    """Write a drive log: one foxglove.CompressedImage message per frame.

    Args:
        path: the .mcap file to write (written beside, then renamed: never half-written).
        frames: (capture time in ns, image) pairs; an image is RGB uint8 [H, W, 3] (encoded as
            `image_format`) or already-encoded bytes.
        image_format: "jpeg" or "png".
    Returns:
        The number of messages written.
    """
    if image_format not in ("jpeg", "png"):
        raise InvalidInput(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "wb") as f:
            writer = ProtobufMcapWriter(f, chunk_size=chunk_size)
            for timestamp_ns, image in frames:
                if isinstance(image, np.ndarray):
                    image = (imageio.encode_jpeg(image) if image_format == "jpeg"
                             else imageio.encode_png(image))
                msg = CompressedImage(format=image_format, data=image, frame_id=camera_frame_id)
                msg.timestamp.FromNanoseconds(int(timestamp_ns))
                writer.write_message(topic, msg, log_time=int(timestamp_ns),
                                     publish_time=int(timestamp_ns), sequence=count)
                count += 1
            writer.finish()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _records(reader: NonSeekingReader, topics: Sequence[str] | None, where: str, counted: list[int]):
    """The reader's messages; a broken file becomes InvalidInput saying how far it got."""
    it = reader.iter_messages(topics=list(topics) if topics else None, log_time_order=False)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        # mcap reports a cut-off file as EndOfFile / struct.error and bad compression or records as
        # McapError or ValueError; all mean the same to us: the log ends here.
        except (McapError, struct.error, EOFError, ValueError) as e:
            kind = type(e).__name__
            raise InvalidInput(
                f"{where}: truncated or corrupt MCAP ({kind}{': ' + str(e) if str(e) else ''}) after "
                f"{counted[0]} images; the images before the damage were kept") from None
        yield item


def iter_drive_log_images(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[LogImage]:
    """Every compressed camera image of a log, in file order.

    Raises:
        NotFound: no such file.
        InvalidInput: not an MCAP file, truncated / corrupt (raised after the readable images), no
            image message on the wanted topics, or images in an encoding we do not read.
    """
    path = Path(path).resolve()
    where = str(path)
    if not path.is_file():
        raise NotFound(f"{where}: drive log does not exist")
    counted = [0]
    channels_seen: dict[str, str] = {}
    with open(path, "rb") as f:
        reader = NonSeekingReader(f)
        for schema, channel, message in _records(reader, topics, where, counted):
            schema_name = schema.name if schema is not None else ""
            channels_seen[channel.topic] = schema_name
            if schema_name == ROS2_COMPRESSED_IMAGE:
                raise InvalidInput(f"{where}: topic {channel.topic} holds ROS 2 {ROS2_COMPRESSED_IMAGE}, "
                                   f"which this coordinator does not read yet; record "
                                   f"{FOXGLOVE_COMPRESSED_IMAGE} (protobuf) instead")
            if schema_name != FOXGLOVE_COMPRESSED_IMAGE or channel.message_encoding != "protobuf":
                continue
            msg = CompressedImage.FromString(message.data)
            ts = msg.timestamp.ToNanoseconds() if msg.HasField("timestamp") else 0
            counted[0] += 1
            yield LogImage(topic=channel.topic, timestamp_ns=ts or int(message.log_time),
                           image_format=msg.format.lower(), data=msg.data)
    if counted[0] == 0:
        seen = ", ".join(f"{t} ({s or 'no schema'})" for t, s in sorted(channels_seen.items())) or "none"
        wanted = f" on topics {list(topics)}" if topics else ""
        raise InvalidInput(f"{where}: no {FOXGLOVE_COMPRESSED_IMAGE} messages{wanted}; channels: {seen}")


def _thumbnail(gray: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> float32 THUMBNAIL_SHAPE of block means (the whole image when smaller)."""
    h, w = gray.shape
    th, tw = THUMBNAIL_SHAPE
    if h < th or w < tw:
        return gray.astype(np.float32)
    rows = np.linspace(0, h, th + 1).astype(np.int64)
    cols = np.linspace(0, w, tw + 1).astype(np.int64)
    sums = np.add.reduceat(np.add.reduceat(gray.astype(np.float64), rows[:-1], axis=0), cols[:-1], axis=1)
    areas = np.outer(np.diff(rows), np.diff(cols))
    return (sums / areas).astype(np.float32)  # [32, 64]


class NearDuplicateFilter:
    """Per topic, keeps a frame unless it is within `threshold` grey levels (mean absolute
    difference of thumbnails) of the last kept frame. threshold <= 0 keeps every frame."""

    def __init__(self, threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD):
        self.threshold = float(threshold)
        self._last_kept: dict[str, np.ndarray] = {}

    def keep(self, topic: str, gray: np.ndarray) -> bool:
        thumb = _thumbnail(gray)
        last = self._last_kept.get(topic)
        if (self.threshold > 0 and last is not None and last.shape == thumb.shape
                and float(np.abs(thumb - last).mean()) < self.threshold):
            return False
        self._last_kept[topic] = thumb
        return True


def extract_drive_log(path: str | Path, storage_dir: str | Path, topics: Sequence[str] | None = None,
                      near_duplicate_threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
                      counters: IngestCounters | None = None) -> Iterator[IngestedFrame]:
    """Extract a log's images to `<storage_dir>/frames/` and yield one record per kept frame.

    Raises:
        NotFound / InvalidInput: as iter_drive_log_images, after the frames read before the damage;
            InvalidInput also at the end when some images could not be decoded (they are skipped).
    """
    if near_duplicate_threshold < 0:
        raise InvalidInput(f"near_duplicate_threshold must be >= 0 (0 keeps every frame), "
                           f"got {near_duplicate_threshold}")
    path = Path(path).resolve()
    frames_dir = Path(storage_dir).resolve() / "frames"
    counters = counters if counters is not None else IngestCounters()
    dedup = NearDuplicateFilter(near_duplicate_threshold)
    unreadable: list[str] = []
    for image in iter_drive_log_images(path, topics):
        counters.frames_read += 1
        ext = _EXTENSION_FOR_FORMAT.get(image.image_format)
        where = f"{path}#{image.topic}@{image.timestamp_ns}"
        try:
            if ext is None:
                raise InvalidInput(f"{where}: image format {image.image_format!r} is not one of "
                                   f"{sorted(_EXTENSION_FOR_FORMAT)}")
            gray = imageio.decode_image(image.data, where=where, mode="L")  # [H, W]
        except InvalidInput as e:
            unreadable.append(str(e))
            continue
        if not dedup.keep(image.topic, gray):
            counters.frames_skipped_near_duplicate += 1
            continue
        digest = hashlib.sha256(image.data).hexdigest()
        out = frames_dir / digest[:2] / f"{digest}{ext}"
        if not out.is_file():
            imageio.atomic_write_bytes(out, image.data)
        yield IngestedFrame(uri=str(out), source=f"mcap:{path}#{image.topic}",
                            timestamp_ns=image.timestamp_ns, width=gray.shape[1], height=gray.shape[0])
    if unreadable:
        raise InvalidInput(f"{path}: {len(unreadable)} images could not be decoded and were skipped "
                           f"(first: {unreadable[0]})")
