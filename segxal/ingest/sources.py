"""The drive-log formats robots record, read as one stream of (schema, channel, bytes, log time):

- an MCAP file (foxglove, ROS 2 or ROS 1 profile): segxal.ingest.mcapstream, record by record,
  keeping every message before damage;
- a ROS 1 bag (`#ROSBAG V2.0`, `rosbag record`) and a ROS 2 SQLite storage file (`.db3`): read
  with the `rosbags` library (no ROS installation needed);
- a ROS 2 bag directory (`ros2 bag record -o NAME` writes NAME/metadata.yaml and NAME_0.mcap,
  NAME_1.mcap ... or .db3): every storage file in the order metadata.yaml lists them; MCAP
  storage through mcapstream (a recording cut off keeps its messages), SQLite and compressed bags
  through `rosbags`. A directory without metadata.yaml (a recording killed before it wrote one)
  is read from its storage files in split order.

Messages from bags are handed on as MCAP Schema / Channel records, so one decoder
(segxal.ingest.messages) reads every format. The image schemas' definitions are the standard ones
(segxal.ingest.rosmsgs): older SQLite bags (before ROS 2 Iron) store no definitions at all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from mcap.records import Channel, Schema

from segxal.errors import InvalidInput, NotFound
from segxal.ingest.mcapstream import MAGIC as MCAP_MAGIC
from segxal.ingest.mcapstream import Damage, iter_mcap_messages
from segxal.ingest.rosmsgs import ROS1_MSGDEFS, ROS2_MSGDEFS

ROS1_MAGIC = b"#ROSBAG V2.0\n"
SQLITE_MAGIC = b"SQLite format 3\x00"
MCAP, ROS1_BAG, ROS2_SQLITE, ROS2_BAG_DIR = "MCAP", "ROS 1 bag", "ROS 2 SQLite bag", "ROS 2 bag directory"
_STORAGE_SUFFIXES = (".mcap", ".db3")


@dataclass(frozen=True)
class RawMessage:
    schema: Schema | None
    channel: Channel
    data: bytes | memoryview
    log_time: int  # ns


class LogDamage(Exception):
    """A log ended early or is corrupt (raised after every message before the damage); `detail`
    says where and how."""

    def __init__(self, fmt: str, detail: str):
        super().__init__(detail)
        self.fmt, self.detail = fmt, detail


def log_format(path: Path) -> str:
    """What a drive log is: MCAP, ROS1_BAG, ROS2_SQLITE or ROS2_BAG_DIR.

    Raises:
        NotFound: no such file or folder.
        InvalidInput: none of these (names what the first bytes are, and what is read).
    """
    if path.is_dir():
        if (path / "metadata.yaml").is_file() or _split_files(path):
            return ROS2_BAG_DIR
        raise InvalidInput(f"{path}: a folder without metadata.yaml or .mcap / .db3 storage files is not a ROS 2 "
                           f"bag (read: MCAP files, ROS 1 .bag, ROS 2 .db3 and bag directories)")
    if not path.is_file():
        raise NotFound(f"{path}: drive log does not exist")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(MCAP_MAGIC):
        return MCAP
    if head.startswith(ROS1_MAGIC):
        return ROS1_BAG
    if head.startswith(SQLITE_MAGIC):
        return ROS2_SQLITE
    raise InvalidInput(f"{path}: not a drive log (starts {head[:12]!r}); read: MCAP files, ROS 1 .bag "
                       f"(#ROSBAG V2.0), ROS 2 .db3 (SQLite) and ROS 2 bag directories (metadata.yaml)")


def _split_index(p: Path) -> tuple[int, str]:
    m = re.search(r"_(\d+)$", p.name.split(".")[0])
    return (int(m.group(1)) if m else -1, p.name)


def _split_files(path: Path) -> list[Path]:
    """A bag directory's storage files in split order (NAME_0, NAME_1, ..., NAME_10)."""
    return sorted((p for p in path.iterdir() if p.is_file() and p.suffix in _STORAGE_SUFFIXES), key=_split_index)


def _mcap_messages(path: Path, topics: Sequence[str] | None) -> Iterator[RawMessage]:
    with open(path, "rb") as f:
        try:
            for schema, channel, message in iter_mcap_messages(f, topics):
                yield RawMessage(schema, channel, message.data, int(message.log_time))
        except Damage as e:
            raise LogDamage(MCAP, f"{path}: truncated or corrupt MCAP ({e})") from None


def _bag_schema(conn, ros1: bool) -> tuple[Schema, Channel]:
    """A rosbags Connection as MCAP records, with the standard definition of the image types."""
    name = conn.msgtype.replace("/msg/", "/") if ros1 else conn.msgtype
    known = (ROS1_MSGDEFS if ros1 else ROS2_MSGDEFS).get(name)
    text = known if known is not None else (conn.msgdef.data or "")
    schema = Schema(id=conn.id, name=name, encoding="ros1msg" if ros1 else "ros2msg", data=text.encode())
    channel = Channel(id=conn.id, topic=conn.topic, message_encoding="ros1" if ros1 else "cdr",
                      metadata={}, schema_id=conn.id)
    return schema, channel


def _rosbags_messages(path: Path, fmt: str, topics: Sequence[str] | None,
                      channels: dict[str, str]) -> Iterator[RawMessage]:
    """A ROS 1 bag, a ROS 2 .db3 file, or a ROS 2 bag directory (any storage or compression) through
    rosbags, in its time order."""
    from rosbags.rosbag1 import Reader as Ros1Reader
    from rosbags.rosbag1 import ReaderError as Ros1Error
    from rosbags.rosbag2 import Reader as Ros2Reader
    from rosbags.rosbag2 import ReaderError as Ros2Error
    from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader

    ros1 = fmt == ROS1_BAG
    try:
        if ros1:
            reader = Ros1Reader(path)
        elif fmt == ROS2_SQLITE:
            reader = Sqlite3Reader(path)  # what rosbags' Reader uses for a .db3 file, any file name
        else:
            reader = Ros2Reader(path)
        reader.open()
    except (Ros1Error, Ros2Error, OSError, KeyError, ValueError) as e:
        hint = " (an unindexed bag: `rosbag reindex` it first)" if "index" in str(e).lower() else ""
        raise InvalidInput(f"{path}: unreadable {fmt} ({type(e).__name__}: {e}){hint}") from None
    except Exception as e:  # sqlite3 / apsw errors of a damaged database
        raise InvalidInput(f"{path}: unreadable {fmt} ({type(e).__name__}: {e})") from None
    try:
        records = {c.id: _bag_schema(c, ros1) for c in reader.connections}
        wanted = [c for c in reader.connections if not topics or c.topic in topics]
        for conn in wanted:
            channels[conn.topic] = records[conn.id][0].name
        if not wanted:
            return  # rosbags reads every connection for an empty list
        try:
            for conn, timestamp, data in reader.messages(connections=wanted):
                schema, channel = records[conn.id]
                yield RawMessage(schema, channel, data, int(timestamp))
        except Exception as e:  # rosbags' ReaderError, or the storage's own (sqlite, zstd, struct)
            raise LogDamage(fmt, f"{path}: truncated or corrupt {fmt} ({type(e).__name__}: {e})") from None
    finally:
        reader.close()


def _bag_dir_storage(path: Path) -> tuple[str, str, list[Path]] | None:
    """(storage identifier, compression mode, storage files in order) from metadata.yaml; None when
    there is no metadata.yaml.

    Raises:
        InvalidInput: an unreadable metadata.yaml, or storage files it lists that are missing.
    """
    meta = path / "metadata.yaml"
    if not meta.is_file():
        return None
    from ruamel.yaml import YAML, YAMLError
    try:
        info = YAML(typ="safe").load(meta.read_text())["rosbag2_bagfile_information"]
        files = [path / Path(p).name for p in info["relative_file_paths"]]
        storage = str(info.get("storage_identifier", ""))
        compression = str(info.get("compression_mode", "") or "").lower()
    except (OSError, YAMLError, KeyError, TypeError) as e:
        raise InvalidInput(f"{meta}: not a ROS 2 bag's metadata ({type(e).__name__}: {e})") from None
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise InvalidInput(f"{path}: storage files listed in metadata.yaml are missing: {', '.join(missing)}")
    return storage, compression if compression != "none" else "", files


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def iter_log_messages(path: Path, topics: Sequence[str] | None = None,
                      channels: dict[str, str] | None = None) -> Iterator[RawMessage]:
    """Every message of a drive log of any format read here (module docstring), in file order.

    Args:
        topics: only these topics; None: all.
        channels: filled with {topic: schema name} of the wanted topics the log declares (bags
            declare theirs up front, MCAP files as their messages come; the caller adds those).

    Raises:
        NotFound: no such log.
        InvalidInput: not a drive log, or one that cannot be opened (says which format it is and why).
        LogDamage: after every message before it: the log is cut off or corrupt.
    """
    channels = {} if channels is None else channels
    fmt = log_format(path)
    if fmt == MCAP:
        yield from _mcap_messages(path, topics)
        return
    if fmt != ROS2_BAG_DIR:
        yield from _rosbags_messages(path, fmt, topics, channels)
        return
    described = _bag_dir_storage(path)
    if described is not None and (described[0] != "mcap" or described[1]):
        yield from _rosbags_messages(path, fmt, topics, channels)  # SQLite storage, or compressed files / messages
        return
    files = described[2] if described is not None else _split_files(path)
    for storage in files:
        if _head(storage).startswith(SQLITE_MAGIC):
            yield from _rosbags_messages(storage, ROS2_SQLITE, topics, channels)
        else:
            yield from _mcap_messages(storage, topics)
