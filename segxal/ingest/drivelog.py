"""Drive logs: camera images (the schemas of segxal.ingest.messages: foxglove, ROS 2 and ROS 1,
compressed or raw) from MCAP files, ROS 1 bags, ROS 2 .db3 files and ROS 2 bag directories
(segxal.ingest.sources), read as a stream and sampled into frames.

An MCAP file is read record by record (no summary needed, segxal.ingest.mcapstream), so memory does
not grow with the log, and a truncated log still yields every image before the damage, inside a
cut chunk too, and then raises InvalidInput saying where it broke.

An image that cannot be read (an unsupported encoding, bytes that do not decode, more pixels than
segxal.imageio.MAX_DECODE_PIXELS: for a raw image checked from the sizes its message states,
before any pixel buffer exists; for a compressed one from its header) is skipped, counted
(frames_skipped_unreadable) and named at the end; the images around it are kept and no file is
written for it.

Extraction writes a compressed image's bytes unchanged (no re-encoding, so no quality loss) and a
raw image as a lossless PNG (debayered first) to `<storage>/frames/<sha256[:2]>/<sha256>.<ext>`:
content-addressed, so ingesting a log twice writes nothing new and the same frame is never stored
twice. Each frame keeps its topic (one topic = one camera: the frame's source is
`mcap:<log>#<topic>`, for every drive-log format: the fleet worker reads the log back from it) and
its timestamp.

Sampling, per topic: a 30 Hz camera gives 108,000 frames an hour. `min_gap_s` keeps a frame only
when at least that much log time has passed since the last kept frame of its topic (checked before
the image is decoded, so skipped frames cost little).

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
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from mcap_protobuf.writer import Writer as ProtobufMcapWriter

from segxal import imageio
from segxal.errors import InvalidInput, NotFound, ResourceExhausted, SegxalError
from segxal.ingest.messages import IMAGE_SCHEMAS, RAW, LogImage, MessageReader
from segxal.ingest.records import IngestCounters, IngestedFrame
from segxal.ingest.sources import LogDamage, iter_log_messages

DEFAULT_TOPIC = "/camera/front/image/compressed"
DEFAULT_NEAR_DUPLICATE_THRESHOLD = 2.0  # grey levels, see the module docstring
DURABLE_BATCH = 256  # extracted frames made durable together, with one sync
THUMBNAIL_SHAPE = (32, 64)  # (rows, cols): the 1:2 aspect of the default 256 x 512 frames
_EXTENSION_FOR_FORMAT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", RAW: ".png"}


class _Problems:
    """Images skipped because they could not be read: counted by reason, reported once at the end
    (after every readable frame was yielded)."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def raise_if_any(self, where: str) -> None:
        if not self.counts:
            return
        total = sum(self.counts.values())
        listed = "; ".join(f"{reason} ({n} image{'s' * (n != 1)})" for reason, n in list(self.counts.items())[:3])
        more = f"; and {len(self.counts) - 3} more reasons" if len(self.counts) > 3 else ""
        raise InvalidInput(f"{where}: {total} images could not be read and were skipped: {listed}{more}")


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
    count = 0
    with imageio.atomic_output(path) as f:
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
    return count


def iter_drive_log_images(path: str | Path, topics: Sequence[str] | None = None, min_gap_s: float = 0.0,
                          counters: IngestCounters | None = None,
                          problems: _Problems | None = None) -> Iterator[LogImage]:
    """Every camera image of a log (an MCAP file, a ROS 1 bag, a ROS 2 .db3 or bag directory:
    segxal.ingest.sources; foxglove, ROS 2 or ROS 1 messages, compressed or raw), in file order.

    Args:
        topics: only these topics (each must hold images); None: every image topic.
        min_gap_s: per topic, skip an image less than this many seconds after the last one yielded.
        counters: frames_read, frames_skipped_min_gap and frames_skipped_unreadable are counted here.
        problems: collects the images that cannot be read (the caller reports them); None: raised
            here at the end.
    Raises:
        NotFound: no such file or bag directory.
        InvalidInput: not a drive log (names the formats read), truncated / corrupt (raised after
            the readable images), a wanted topic that holds no images (names its schema), no image
            message at all, or (at the end) images that were skipped: an unsupported encoding or
            format (names topic and encoding) or more pixels than any decode allows.
    """
    path = Path(path).resolve()
    where = str(path)
    if not path.exists():
        raise NotFound(f"{where}: drive log does not exist")
    if min_gap_s < 0 or not math.isfinite(min_gap_s):
        raise InvalidInput(f"min_gap_s must be >= 0 (0 keeps every frame), got {min_gap_s}")
    min_gap_ns = int(round(min_gap_s * 1e9))
    counters = counters if counters is not None else IngestCounters()
    own_problems = problems is None
    problems = _Problems() if problems is None else problems
    counted = 0
    last_time = None
    channels_seen: dict[str, str] = {}
    last_kept: dict[str, int] = {}
    messages = MessageReader()
    stream = iter_log_messages(path, list(topics) if topics else None, channels_seen)
    while True:
        try:
            raw = next(stream)
        except StopIteration:
            break
        except LogDamage as e:
            at = f" (last message read: log time {last_time} ns)" if last_time is not None else ""
            raise InvalidInput(f"{e.detail} after {counted} images{at}; the images before the damage were kept") \
                from None
        schema, channel = raw.schema, raw.channel
        last_time = raw.log_time
        channels_seen[channel.topic] = schema.name if schema is not None else ""
        if not messages.is_image(schema, channel):
            continue
        counted += 1
        counters.frames_read += 1
        try:
            image = messages.to_image(schema, channel, raw.data, raw.log_time,
                                      f"{where}#{channel.topic}@{raw.log_time}")
        except (InvalidInput, ResourceExhausted) as e:
            counters.frames_skipped_unreadable += 1
            problems.add(str(e))
            continue
        last = last_kept.get(image.topic)
        if min_gap_ns and last is not None and abs(image.timestamp_ns - last) < min_gap_ns:
            counters.frames_skipped_min_gap += 1
            continue
        last_kept[image.topic] = image.timestamp_ns
        yield image
    not_images = {t: s for t, s in channels_seen.items() if s not in IMAGE_SCHEMAS}
    if topics and not_images:
        listed = ", ".join(f"{t} ({s or 'no schema'})" for t, s in sorted(not_images.items()))
        raise InvalidInput(f"{where}: topics that hold no camera images: {listed}; image schemas read: "
                           f"{', '.join(IMAGE_SCHEMAS)}")
    if counted == 0:
        seen = ", ".join(f"{t} ({s or 'no schema'})" for t, s in sorted(channels_seen.items())) or "none"
        wanted = f" on topics {list(topics)}" if topics else ""
        raise InvalidInput(f"{where}: no camera image messages{wanted} (read: {', '.join(IMAGE_SCHEMAS)}); "
                           f"channels: {seen}")
    if own_problems:
        problems.raise_if_any(where)


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
                      counters: IngestCounters | None = None, min_gap_s: float = 0.0,
                      durable_batch: int = DURABLE_BATCH) -> Iterator[IngestedFrame]:
    """Extract a log's images to `<storage_dir>/frames/` and yield one record per kept frame.

    A record is yielded only once its file is durable: files are written without their own fsync
    and made durable together (one os.sync() per `durable_batch` new files, and before an error is
    raised), so a caller that stores the records never references a frame a power cut could lose.

    Args:
        topics: the camera topics to read (each frame's source names its topic); None: all.
        near_duplicate_threshold: grey levels (module docstring); 0 keeps every frame.
        counters: read / skipped counts, filled in as the log is read.
        min_gap_s: per topic, the least log time between two kept frames; 0 keeps every frame.
        durable_batch: frames written between two syncs.
    Raises:
        NotFound / InvalidInput: as iter_drive_log_images, after the frames read before the damage;
            InvalidInput also at the end when some images could not be read (they are skipped; the
            message names each topic and unsupported encoding).
    """
    if near_duplicate_threshold < 0:
        raise InvalidInput(f"near_duplicate_threshold must be >= 0 (0 keeps every frame), "
                           f"got {near_duplicate_threshold}")
    if durable_batch < 1:
        raise InvalidInput(f"durable_batch must be >= 1, got {durable_batch}")
    path = Path(path).resolve()
    frames_dir = Path(storage_dir).resolve() / "frames"
    counters = counters if counters is not None else IngestCounters()
    dedup = NearDuplicateFilter(near_duplicate_threshold)
    problems = _Problems()
    pending: list[IngestedFrame] = []
    written = 0  # files written since the last sync

    def release() -> Iterator[IngestedFrame]:
        nonlocal written
        if written:
            os.sync()
            written = 0
        yield from pending
        pending.clear()

    try:
        for image in iter_drive_log_images(path, topics, min_gap_s, counters, problems):
            where = f"{path}#{image.topic}@{image.timestamp_ns}"
            try:
                if image.image_format == RAW:
                    pixels = image.pixels(where)  # [H, W, 3] RGB or [H, W] grey
                    gray = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)  # [H, W]
                else:
                    gray = imageio.decode_image(image.data, where=where, mode="L")  # [H, W]
            except (InvalidInput, ResourceExhausted) as e:  # skipped and reported; the log goes on
                counters.frames_skipped_unreadable += 1
                problems.add(str(e))
                continue
            if not dedup.keep(image.topic, gray):
                counters.frames_skipped_near_duplicate += 1
                continue
            # A raw image is stored as a lossless PNG: its pixels come back exactly.
            data = imageio.encode_png(pixels) if image.image_format == RAW else image.data
            digest = hashlib.sha256(data).hexdigest()
            out = frames_dir / digest[:2] / f"{digest}{_EXTENSION_FOR_FORMAT[image.image_format]}"
            if not out.is_file():
                imageio.atomic_write_bytes(out, data, fsync=False)
                written += 1
            pending.append(IngestedFrame(uri=str(out), source=f"mcap:{path}#{image.topic}",
                                         timestamp_ns=image.timestamp_ns, width=gray.shape[1], height=gray.shape[0]))
            if len(pending) >= durable_batch:
                yield from release()
    except SegxalError:
        yield from release()  # the frames before the damage
        raise
    yield from release()
    problems.raise_if_any(str(path))
