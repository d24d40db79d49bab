"""The codec's fast decoders (segxal.imageio: simplejpeg for JPEG, OpenCV for PNG) against Pillow,
the reference decoder: identical pixels for what they decode, Pillow for everything else, and
EXIF orientation ignored by both (a rotated copy would shift every region)."""
import io

import numpy as np
import pytest
from PIL import Image

from segxal import imageio
from segxal.errors import InvalidInput


def _frame(h=96, w=160, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (h // 8, w // 8, 3)), np.ones((8, 8, 1)))  # blocks, as in a scene
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)  # [h, w, 3]


def _pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {"quality": 90}), ("JPEG", {"quality": 75, "subsampling": 0}),
                                    ("JPEG", {"quality": 85, "progressive": True})])
def test_fast_decoders_give_pillows_pixels(fmt, kw):
    data = _encoded(Image.fromarray(_frame()), fmt, **kw)
    assert imageio._decode_rgb_fast(data, fmt) is not None  # the fast path really ran
    np.testing.assert_array_equal(imageio.decode_image(data), _pillow(data))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_other_modes_decode_as_before(mode):
    rgb = Image.fromarray(_frame())
    image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(_frame()[..., 0].astype(np.uint16) * 257)
    data = _encoded(image, "PNG")
    out = imageio.decode_image(data)
    assert out.shape == (96, 160, 3) and out.dtype == np.uint8
    if mode != "I;16":  # 16-bit is scaled by the codec, not by Pillow's convert
        np.testing.assert_array_equal(out, _pillow(data))


def test_exif_orientation_is_ignored_like_pillow():
    image = Image.fromarray(_frame(64, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encoded(image, "JPEG", quality=90, exif=exif.tobytes())
    out = imageio.decode_image(data)
    assert out.shape == (64, 128, 3)
    np.testing.assert_array_equal(out, _pillow(data))


def test_truncated_images_are_refused_as_before():
    for fmt in ("PNG", "JPEG"):
        data = _encoded(Image.fromarray(_frame()), fmt)
        with pytest.raises(InvalidInput, match="not a readable image"):
            imageio.decode_image(data[: len(data) // 2], where="frame.x")
