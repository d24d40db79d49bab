"""Label masks as labelers send them (segxal.annotation): COCO RLE against pycocotools, label
spaces against cityscapesscripts' mapping, and the content hash that makes submits idempotent."""
from __future__ import annotations

import numpy as np
import pycocotools.mask as coco_mask
import pytest

from segxal import imageio
from segxal.annotation import (LABEL_IDS, TRAIN_IDS, EncodedMask, Rle, content_sha256, decode_mask, decode_rle,
                               encode_class_rles, encode_rle)
from segxal.errors import InvalidInput
from segxal.labels import IGNORE, label_ids_to_train_ids


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (32, 64), (64, 128)])
def test_compressed_rle_decodes_like_pycocotools(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.02, 0.5, 0.98, 1.0):
        mask = rng.random(shape) < density
        enc = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))  # pycocotools' encoder
        got = decode_rle(Rle(shape[0], shape[1], enc["counts"].decode()))
        np.testing.assert_array_equal(got, coco_mask.decode(enc).astype(bool))
        assert encode_rle(mask).counts == enc["counts"].decode()  # and our encoder is theirs


def test_rle_that_does_not_cover_the_frame_is_refused():
    with pytest.raises(InvalidInput, match="cover 32 pixels, they cover 31"):
        decode_rle(Rle(4, 8, uncompressed_counts=(10, 21)))
    with pytest.raises(InvalidInput, match="not a valid COCO RLE"):
        decode_rle(Rle(4, 8, counts="zzzz~~~"))
    with pytest.raises(InvalidInput, match="character"):
        decode_rle(Rle(4, 8, counts="0 1"))


def test_label_spaces_png_and_rle_decode_to_the_same_train_ids():
    rng = np.random.default_rng(0)
    label_ids = rng.choice(np.array([0, 4, 7, 8, 11, 21, 23, 24, 26, 33], np.uint8), size=(16, 24))
    want = label_ids_to_train_ids(label_ids)  # cityscapesscripts' table
    from_png = decode_mask(EncodedMask(LABEL_IDS, png=imageio.encode_png(label_ids)), (16, 24))
    rles = tuple(c for c in encode_class_rles(label_ids))
    from_rle = decode_mask(EncodedMask(LABEL_IDS, rle=rles), (16, 24))
    from_train = decode_mask(EncodedMask(TRAIN_IDS, rle=encode_class_rles(want)), (16, 24))
    for got in (from_png, from_rle, from_train):
        np.testing.assert_array_equal(got, want)
    assert len({content_sha256(m, "whole_frame", ()) for m in (from_png, from_rle, from_train)}) == 1
    assert content_sha256(want, "regions", (1,)) != content_sha256(want, "whole_frame", ())
    assert (want == IGNORE).any()  # ids Cityscapes ignores (0, 4) mean "not annotated"
