"""MCAP messages in file order, record by record, keeping every message before damage.

mcap's own stream reader reads a chunk record whole before it parses a message of it; a log that
was cut inside a chunk (and logs under the writers' 1 MiB chunk size are one chunk) then gives
no message at all. Here the top-level records are framed by hand (opcode, length) and parsed with
mcap's record classes; a record cut short is, when it is a chunk, decompressed as far as its
bytes go and its complete inner records are read message by message. So "every image before the
damage" holds inside a chunk too: to the message for an uncompressed chunk, to the compression
block for zstd (blocks of up to 128 KiB) and lz4 (64 KiB) chunks, which decode only whole blocks.

A record longer than what is left of the file is treated as the damage (never allocated), so a
corrupt length cannot make the reader ask for terabytes.
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

import lz4.frame
import zstandard
from mcap.data_stream import ReadDataStream
from mcap.exceptions import McapError
from mcap.opcode import Opcode
from mcap.records import Channel, Message, Schema

MAGIC = b"\x89MCAP0\r\n"
_RECORD_HEADER = struct.Struct("<BQ")  # opcode, length
# Chunk fields before the records: start time, end time, uncompressed size, uncompressed crc.
_CHUNK_FIXED = struct.Struct("<QQQI")


class Damage(Exception):
    """The log ends here: what broke and at which byte."""

    def __init__(self, reason: str, offset: int):
        super().__init__(f"{reason} at byte {offset}")
        self.reason, self.offset = reason, offset


@dataclass
class _State:
    schemas: dict[int, Schema]
    channels: dict[int, Channel]


_MESSAGE_FIXED = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


def _read_record(opcode: int, body: memoryview) -> Schema | Channel | Message | None:
    """Schema and Channel records by mcap's parsers; a Message by hand, its data a view into the
    chunk (mcap's parser copies it twice: a camera image can be tens of MB)."""
    if opcode == Opcode.MESSAGE:
        channel_id, sequence, log_time, publish_time = _MESSAGE_FIXED.unpack_from(body)
        return Message(channel_id=channel_id, sequence=sequence, log_time=log_time, publish_time=publish_time,
                       data=body[_MESSAGE_FIXED.size:])
    if opcode == Opcode.SCHEMA:
        return Schema.read(ReadDataStream(io.BytesIO(body)))
    if opcode == Opcode.CHANNEL:
        return Channel.read(ReadDataStream(io.BytesIO(body)))
    return None


def _chunk_fields(body: bytes | memoryview) -> tuple[int, str, memoryview]:
    """(uncompressed size, compression, compressed records as a view) of a chunk record's body; the
    records are whatever of them is there when the body is cut short.

    Raises:
        ValueError: not even the chunk's own fields are there.
    """
    view = memoryview(body)
    fixed = _CHUNK_FIXED.size
    if len(view) < fixed + 4:
        raise ValueError("chunk fields cut short")
    _, _, uncompressed_size, _ = _CHUNK_FIXED.unpack_from(view)
    (n,) = struct.unpack_from("<I", view, fixed)
    pos = fixed + 4 + n
    if len(view) < pos + 8:
        raise ValueError("chunk fields cut short")
    (records_len,) = struct.unpack_from("<Q", view, pos)
    return uncompressed_size, bytes(view[fixed + 4:pos]).decode("utf-8", "replace"), view[pos + 8:pos + 8 + records_len]


def _partial_chunk_records(body: bytes) -> bytes | memoryview:
    """The decompressed records of a chunk record cut short or corrupt: as many bytes as its prefix
    decodes to (b"" when not even the chunk's own fields are there)."""
    try:
        _, compression, records = _chunk_fields(body)
        if compression == "":
            return records
        if compression == "zstd":
            return zstandard.ZstdDecompressor().decompressobj().decompress(records)
        if compression == "lz4":
            return lz4.frame.LZ4FrameDecompressor().decompress(records)
    except (zstandard.ZstdError, RuntimeError, ValueError):
        return b""
    return b""


def _inner_records(data: bytes | memoryview, complete: bool, base: int) -> Iterator[tuple[int, memoryview]]:
    """(opcode, body) of the records inside a chunk's decompressed bytes; when the chunk is not
    complete, stops at the first record cut short (no error: the caller reports the damage)."""
    view = memoryview(data)
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _RECORD_HEADER.size:
            if complete:
                raise Damage("a chunk's record header is cut short", base)
            return
        opcode, length = _RECORD_HEADER.unpack_from(data, pos)
        pos += _RECORD_HEADER.size
        if length > end - pos:
            if complete:
                raise Damage(f"a record inside a chunk claims {length} bytes, the chunk has {end - pos}", base)
            return
        yield opcode, view[pos:pos + length]
        pos += length


def iter_mcap_messages(f: BinaryIO, topics: Sequence[str] | None = None
                       ) -> Iterator[tuple[Schema | None, Channel, Message]]:
    """Every message of an MCAP file (chunked or not), in file order, as (schema, channel, message).

    Args:
        f: the file, opened for binary reading at its start.
        topics: only messages of these topics; None: all.
    A message's data is a memoryview into its chunk.

    Raises:
        Damage: after every message before it: not an MCAP file, a record cut short or corrupt
            (a cut chunk's complete messages were yielded first).
    """
    size = os.fstat(f.fileno()).st_size
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise Damage(f"not an MCAP file (starts {magic!r})", 0)
    wanted = set(topics) if topics else None
    state = _State({}, {})
    offset = len(MAGIC)

    def handle(opcode: int, body: memoryview, where: int) -> Iterator[tuple[Schema | None, Channel, Message]]:
        try:
            record = _read_record(opcode, body)
        except (McapError, struct.error, EOFError, ValueError, UnicodeDecodeError) as e:
            raise Damage(f"corrupt record ({type(e).__name__}: {e})", where) from None
        if isinstance(record, Schema):
            state.schemas[record.id] = record
        elif isinstance(record, Channel):
            state.channels[record.id] = record
        elif isinstance(record, Message):
            channel = state.channels.get(record.channel_id)
            if channel is None:
                raise Damage(f"a message on channel {record.channel_id}, which no channel record declared", where)
            if wanted is None or channel.topic in wanted:
                yield state.schemas.get(channel.schema_id), channel, record

    while True:
        header = f.read(_RECORD_HEADER.size)
        if not header:
            raise Damage("the file ends without a footer (cut off)", offset)
        if len(header) < _RECORD_HEADER.size:
            raise Damage("a record header is cut short", offset)
        opcode, length = _RECORD_HEADER.unpack(header)
        body_at = offset + _RECORD_HEADER.size
        if opcode == Opcode.FOOTER:
            return
        if length > size - body_at:
            # Cut short (or a corrupt length): read what is there, and only a chunk can give messages.
            if opcode == Opcode.CHUNK:
                body = f.read(size - body_at)
                for inner_op, inner in _inner_records(_partial_chunk_records(body), False, body_at):
                    yield from handle(inner_op, inner, body_at)
            name = Opcode(opcode).name.lower() if opcode in Opcode._value2member_map_ else f"opcode {opcode:#x}"
            raise Damage(f"{name} record claims {length} bytes, only {size - body_at} are left: cut off", offset)
        body = f.read(length)
        if opcode == Opcode.CHUNK:
            try:
                uncompressed_size, compression, records = _chunk_fields(body)
                if compression == "zstd":
                    data = zstandard.ZstdDecompressor().decompress(records, max_output_size=uncompressed_size)
                elif compression == "lz4":
                    data = lz4.frame.decompress(records)
                elif compression == "":
                    data = records
                else:
                    raise Damage(f"chunk compression {compression!r} is not supported (zstd, lz4, none)", offset)
                if len(data) != uncompressed_size:
                    raise ValueError(f"chunk decompressed to {len(data)} bytes, its record says {uncompressed_size}")
            except (struct.error, ValueError, RuntimeError, zstandard.ZstdError) as e:
                # A corrupt chunk: its readable prefix, then the damage.
                for inner_op, inner in _inner_records(_partial_chunk_records(body), False, body_at):
                    yield from handle(inner_op, inner, body_at)
                raise Damage(f"corrupt chunk ({type(e).__name__}: {e})", offset) from None
            for inner_op, inner in _inner_records(data, True, body_at):
                yield from handle(inner_op, inner, body_at)
        else:
            yield from handle(opcode, memoryview(body), offset)
        offset = body_at + length
