"""The one resize module (segxal.resize) and the one RLE module (segxal.rle), against independent
references: Pillow / OpenCV for resizing, pycocotools for RLE."""
import cv2
import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image

from segxal import rle
from segxal.errors import InvalidInput
from segxal.resize import resize_image, resize_map, resize_nearest

SIZES = [((64, 128), (96, 200)), ((37, 53), (13, 17)), ((128, 256), (256, 512)), ((40, 60), (40, 60))]


@pytest.mark.parametrize("src, dst", SIZES)
def test_nearest_samples_pixel_centres_like_pillow_and_opencv(src, dst):
    labels = np.random.default_rng(0).integers(0, 19, src, dtype=np.uint8)
    got = resize_nearest(labels, dst)
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(labels).resize(dst[::-1], Image.NEAREST)))
    np.testing.assert_array_equal(got, cv2.resize(labels, dst[::-1], interpolation=cv2.INTER_NEAREST_EXACT))
    mask = labels > 9
    assert resize_nearest(mask, dst).dtype == bool
    np.testing.assert_array_equal(resize_nearest(mask, dst), got > 9)  # masks follow their labels
    disparity = labels.astype(np.float32) / 7
    np.testing.assert_array_equal(resize_nearest(disparity, dst), got.astype(np.float32) / 7)


@pytest.mark.parametrize("src, dst", SIZES)
def test_bilinear_is_pillows(src, dst):
    rgb = np.random.default_rng(1).integers(0, 256, (*src, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_image(rgb, dst),
                                  np.asarray(Image.fromarray(rgb).resize(dst[::-1], Image.BILINEAR)))
    values = np.random.default_rng(2).random(src).astype(np.float16)
    out = resize_map(values, dst)
    assert out.dtype == np.float16 and out.shape == dst


def _masks():
    rng = np.random.default_rng(3)
    yield np.zeros((5, 7), bool)
    yield np.ones((5, 7), bool)
    yield rng.random((33, 17)) > 0.5
    m = np.zeros((20, 30), bool)
    m[3:9, 4:20] = True
    yield m


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_both_forms_are_cocos_and_decode_to_the_mask(mask):
    compressed, runs = rle.encode(mask), rle.encode_uncompressed(mask)
    assert compressed.counts == coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    assert rle.compressed_counts(compressed.counts) == list(runs.uncompressed_counts)
    np.testing.assert_array_equal(rle.decode(compressed), mask)
    np.testing.assert_array_equal(rle.decode(runs), mask)


def test_decode_refuses_both_forms_and_none():
    with pytest.raises(InvalidInput, match="not both"):
        rle.decode(rle.Rle(2, 2, counts="4", uncompressed_counts=(4,)))
    with pytest.raises(InvalidInput, match="no counts"):
        rle.decode(rle.Rle(2, 2))
