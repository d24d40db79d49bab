"""World-anchored procedural noise textures and a hash of world coordinates to [0, 1)."""
from __future__ import annotations

import cv2
import numpy as np


# ---------------------------------------------------------------------------------------- textures
def _noise_tile(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Periodic fractal noise with power spectrum ~ 1/f^beta: zero mean, unit std, float32 [size, size].
    Periodic, so world coordinates can wrap (cv2.remap BORDER_WRAP) without seams."""
    f = np.fft.fftfreq(size)
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    fr[0, 0] = 1.0
    spec = np.fft.fft2(rng.standard_normal((size, size))) / fr ** (beta / 2)
    spec[0, 0] = 0.0
    tile = np.fft.ifft2(spec).real
    return ((tile - tile.mean()) / tile.std()).astype(np.float32)


class _Textures:
    """Two shared noise tiles (smooth blotches, fine grain), derived from the dataset seed only."""
    SIZE = 256

    def __init__(self, seed: int):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1000,)))
        self.coarse = _noise_tile(rng, self.SIZE, 3.2)
        self.fine = _noise_tile(rng, self.SIZE, 1.2)

    def sample(self, tile: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bilinear, wrapped lookup at texel coordinates x, y [n] (cv2.remap limits both the
        coordinates and the map width to 16 bits: callers keep coordinates small, rows of 4096)."""
        n = x.size
        cols = 4096
        rows = -(-n // cols)
        mx = np.zeros(rows * cols, np.float32)
        my = np.zeros(rows * cols, np.float32)
        mx[:n], my[:n] = x.ravel(), y.ravel()
        out = cv2.remap(tile, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_WRAP)
        return out.reshape(-1)[:n]


def _hash01(*keys: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer key tuple (window lit or not, ...)."""
    h = np.zeros(np.broadcast(*keys).shape, dtype=np.uint32)
    for i, k in enumerate(keys):
        h = h ^ (np.asarray(k).astype(np.int64).astype(np.uint32) * np.uint32(0x9E3779B1 + 2 * i))
        h = (h ^ (h >> np.uint32(15))) * np.uint32(0x85EBCA77)
    h = h ^ (h >> np.uint32(13))
    return (h & np.uint32(0xFFFFFF)).astype(np.float32) / float(0x1000000)
