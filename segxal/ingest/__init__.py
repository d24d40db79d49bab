"""Ingest: turn image folders, Cityscapes-layout folders and drive logs (MCAP, ROS 1 bags, ROS 2
bags in SQLite or MCAP storage) into frame records
(URI on shared storage, source, capture time, size, ground truth when there is one).

Folders are referenced in place; drive-log frames are extracted once to storage, content-addressed.
The functions here are generators: a source that breaks part-way (a truncated log) yields the
frames it could read and then raises, so the caller keeps what came before the damage.
"""
from segxal.ingest.drivelog import (DEFAULT_NEAR_DUPLICATE_THRESHOLD, NearDuplicateFilter, extract_drive_log,
                                    iter_drive_log_images, write_drive_log)
from segxal.ingest.folders import iter_cityscapes, iter_image_folder
from segxal.ingest.messages import IMAGE_SCHEMAS, LogImage
from segxal.ingest.pixels import SUPPORTED_ENCODINGS, rgb_to_raw
from segxal.ingest.records import IngestCounters, IngestedFrame
from segxal.ingest.sources import log_format as drive_log_format
from segxal.ingest.writers import CameraMessage, write_camera_log

__all__ = [
    "DEFAULT_NEAR_DUPLICATE_THRESHOLD", "IMAGE_SCHEMAS", "SUPPORTED_ENCODINGS", "CameraMessage", "IngestCounters",
    "IngestedFrame", "LogImage", "drive_log_format", "NearDuplicateFilter", "extract_drive_log", "iter_cityscapes",
    "iter_drive_log_images", "iter_image_folder", "rgb_to_raw", "write_camera_log", "write_drive_log",
]
