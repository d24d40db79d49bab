"""Label Studio's brush RLE, in our code (the bridge does not import label_studio_sdk: it pins
numpy 2.2 and protobuf 7, which our venv cannot take).

A brush region travels as `value.rle`: a list of byte values holding a bit stream in the format of
thi-ng's rle-pack (packages/rle-pack/src/index.ts), which the Label Studio frontend decodes and
encodes, over the region drawn as an RGBA image [H, W, 4] flattened row-major. The alpha channel is
the mask: label_studio_sdk.converter.brush reads `decode_rle(rle).reshape(H, W, 4)[:, :, 3]` and
writes masks with all four channels equal to the mask value.

Stream layout (bits, most significant first):
    num            32   number of values that follow (4 * H * W for a brush region)
    word_size - 1   5   bits per value (8 for RGBA bytes)
    rle_sizes - 1  4x4  widths of the four run-length fields (3, 4, 8, 16 from the SDK)
    then blocks until num values are out:
        repeat      1   1: one value repeated, 0: a run of literal values
        size_index  2   which of rle_sizes holds the length
        length - 1  rle_sizes[size_index]
        value(s)    word_size each: one for a repeat, `length` for literals
    zero bits up to a whole byte (the SDK adds a whole zero byte when already aligned)

References:
    thi-ng/umbrella packages/rle-pack/src/index.ts (encode/decode);
    label_studio_sdk/converter/brush.py (encode_rle, mask2rle, decode_rle), whose output
    encode_mask reproduces byte for byte.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from segxal.errors import InvalidInput

# The SDK's choice; the frontend reads whatever the header says.
RLE_SIZES = (3, 4, 8, 16)
WORD_SIZE = 8
_MAX_RUN = 1 << 16  # the longest run one 16-bit length field holds


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal values in a 1-D array: (lengths, values)."""
    change = np.flatnonzero(values[1:] != values[:-1])  # [n_runs - 1]
    ends = np.concatenate((change, [values.size - 1]))  # [n_runs]: index of each run's last value
    lengths = np.diff(np.concatenate(([-1], ends)))  # [n_runs]
    return lengths, values[ends]


def encode(values: np.ndarray) -> list[int]:
    """Encode a 1-D uint8 array the way label_studio_sdk's encode_rle does (byte-identical).

    Every run of one value becomes one block; runs longer than 65536 are split into blocks of
    65536 plus the rest. Single values are literal blocks of length 1.

    Args:
        values: uint8 [N], N >= 1 (a brush region: the RGBA image flattened, N = 4 * H * W).

    Returns:
        the stream as a list of byte values (JSON-ready for `value.rle`).

    Raises:
        InvalidInput: not a non-empty 1-D uint8 array, or N >= 2 ** 32.
    """
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype != np.uint8 or values.size == 0:
        raise InvalidInput(f"brush RLE encodes a non-empty 1-D uint8 array, got {values.dtype} {values.shape}")
    if values.size >= 1 << 32:
        raise InvalidInput(f"brush RLE holds fewer than 2**32 values, got {values.size}")
    lengths, run_values = _runs(values)
    # Split long runs: full 65536-blocks first, then the remainder (which may itself be 65536).
    full = (lengths - 1) // _MAX_RUN  # [n_runs]: 65536-blocks before the last block of each run
    last = lengths - full * _MAX_RUN  # [n_runs], in 1..65536
    n_blocks = full + 1
    block_len = np.full(int(n_blocks.sum()), _MAX_RUN, dtype=np.int64)  # [n_blocks]
    last_index = np.cumsum(n_blocks) - 1  # [n_runs]
    block_len[last_index] = last
    block_val = np.repeat(run_values.astype(np.int64), n_blocks)  # [n_blocks]
    long_run = np.repeat(lengths > 256, n_blocks)  # the SDK uses the 16-bit field for every block of a run > 256

    # Each block is one integer of width 1 + 2 + size + 8 bits: repeat flag, size index, length - 1, value.
    index = np.select([block_len <= 8, block_len <= 16, block_len <= 256], [0, 1, 2], 3)
    index[long_run] = 3
    single = (block_len == 1) & ~long_run  # a single value is a literal block: flag 0, 3-bit length 0
    index[single] = 0
    size = np.asarray(RLE_SIZES, dtype=np.int64)[index]  # [n_blocks]
    repeat = (~single).astype(np.int64)
    width = 1 + 2 + size + WORD_SIZE  # [n_blocks]
    word = ((repeat << (2 + size + WORD_SIZE)) | (index << (size + WORD_SIZE))
            | ((block_len - 1) << WORD_SIZE) | block_val)  # [n_blocks]

    header_bits = [(values.size, 32), (WORD_SIZE - 1, 5)] + [(s - 1, 4) for s in RLE_SIZES]
    header = np.array([v for v, _ in header_bits], dtype=np.int64)
    header_width = np.array([w for _, w in header_bits], dtype=np.int64)
    word = np.concatenate((header, word))
    width = np.concatenate((header_width, width))
    bits = _to_bits(word, width)
    pad = 8 - bits.size % 8  # 1..8, as the SDK pads (a whole zero byte when already aligned)
    bits = np.concatenate((bits, np.zeros(pad, dtype=np.uint8)))
    return np.packbits(bits).tolist()


def _to_bits(words: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate each word's `width` low bits, most significant first: uint8 bits [sum(widths)]."""
    top = int(widths.max())
    shifts = (widths[:, None] - 1 - np.arange(top)[None, :])  # [n, top]
    valid = shifts >= 0
    bits = (words[:, None] >> np.where(valid, shifts, 0)) & 1  # [n, top]
    return bits[valid].astype(np.uint8)


class _BitReader:
    """Reads big-endian bit fields from a byte stream."""

    def __init__(self, data: bytes):
        self._bits = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b") if data else ""
        self.pos = 0

    def read(self, n: int) -> int:
        end = self.pos + n
        if end > len(self._bits):
            raise InvalidInput(f"brush RLE is truncated: a field needs bits {self.pos}..{end}, "
                               f"the stream has {len(self._bits)}")
        value = int(self._bits[self.pos:end], 2)
        self.pos = end
        return value


def decode(rle: Sequence[int], expected_num: int | None = None) -> np.ndarray:
    """Decode any rle-pack stream (the SDK's or the frontend's).

    Args:
        rle: the stream as byte values, as in a brush result's `value.rle`.
        expected_num: refuse a stream announcing another number of values (before allocating them).

    Returns:
        [num] array: uint8 for word sizes up to 8, uint16 up to 16, else uint32.

    Raises:
        InvalidInput: not a list of bytes, a truncated stream, or blocks that overrun num.
    """
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise InvalidInput("brush RLE must be a list of byte values 0..255") from None
    reader = _BitReader(data)
    num = reader.read(32)
    if expected_num is not None and num != expected_num:  # checked before allocating num values
        raise InvalidInput(f"brush RLE holds {num} values, expected {expected_num}")
    word_size = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    dtype = np.uint8 if word_size <= 8 else np.uint16 if word_size <= 16 else np.uint32
    out = np.zeros(num, dtype=dtype)  # [num]
    i = 0
    while i < num:
        repeat = reader.read(1)
        j = i + 1 + reader.read(sizes[reader.read(2)])
        if j > num:
            raise InvalidInput(f"brush RLE block covers values {i}..{j}, past the {num} the header announces")
        if repeat:
            out[i:j] = reader.read(word_size)
        else:
            for k in range(i, j):
                out[k] = reader.read(word_size)
        i = j
    return out


def encode_mask(mask: np.ndarray) -> list[int]:
    """A binary mask as a brush region: set pixels opaque white, as label_studio_sdk's mask2rle
    writes a 0/255 mask (all four RGBA channels equal).

    Args:
        mask: [H, W], nonzero = in the region.

    Returns:
        the brush RLE (byte values).

    Raises:
        InvalidInput: the mask is not 2-D.
    """
    if mask.ndim != 2:
        raise InvalidInput(f"brush mask must be [H, W], got shape {mask.shape}")
    alpha = np.where(mask.astype(bool), 255, 0).astype(np.uint8)  # [H, W]
    return encode(np.repeat(alpha.ravel(), 4))  # [4 * H * W]: R, G, B, A per pixel


def decode_alpha(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """The alpha channel of a brush region: uint8 [H, W] (0 = not painted).

    Raises:
        InvalidInput: a bad stream, or one that does not hold H * W RGBA pixels.
    """
    values = decode(rle, expected_num=4 * height * width)
    if values.size != 4 * height * width:
        raise InvalidInput(f"brush RLE holds {values.size} values, a {height} x {width} RGBA image "
                           f"needs {4 * height * width}")
    return values.reshape(height, width, 4)[:, :, 3].astype(np.uint8)  # [H, W]
