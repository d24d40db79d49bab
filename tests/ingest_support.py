"""Images that claim more pixels than any decode allows, made the way an attacker (or a broken
camera driver) would: small on disk, huge once decoded."""
from __future__ import annotations

import functools
import struct
import zlib


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
