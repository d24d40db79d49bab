"""Regions (segxal.eem.regions): RLE against pycocotools, planted blobs found exactly, Otsu against
a brute-force between-class-variance maximiser."""
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segxal.errors import InvalidInput
from segxal.eem.regions import extract_regions, mask_to_rle, otsu_threshold, rle_to_mask
from segxal.labels import NAME_TO_TRAIN_ID


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), np.uint8)
    yield np.ones((5, 7), np.uint8)
    corner = np.zeros((6, 4), np.uint8)
    corner[0, 0] = 1  # first pixel set: counts start with a 0-length background run
    yield corner
    last = np.zeros((6, 4), np.uint8)
    last[-1, -1] = 1
    yield last
    for shape in [(1, 9), (9, 1), (17, 23), (64, 128)]:
        yield (rng.random(shape) > 0.6).astype(np.uint8)


@pytest.mark.parametrize("mask", list(_masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_rle_round_trips_through_pycocotools(mask):
    rle = mask_to_rle(mask)
    assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
    np.testing.assert_array_equal(rle_to_mask(rle), mask)
    compressed = coco_mask.frPyObjects(rle, *mask.shape)  # our uncompressed RLE, read by COCO
    np.testing.assert_array_equal(coco_mask.decode(compressed), mask)
    assert compressed["counts"] == coco_mask.encode(np.asfortranarray(mask))["counts"]
    assert coco_mask.area(compressed) == mask.sum()


def test_rle_to_mask_rejects_bad_counts():
    with pytest.raises(InvalidInput, match="cover 4 pixels, they cover 3"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})


def _scene():
    """EEM 0.1 with three planted hot blobs of known box, area and class; labels road elsewhere."""
    eem = np.full((60, 80), 0.1, np.float32)  # [H, W]
    labels = np.full((60, 80), NAME_TO_TRAIN_ID["road"], np.uint8)  # [H, W]
    eem[5:15, 10:30] = 0.9  # rectangle, x 10..29, y 5..14: 200 px, person on 120 of them
    labels[5:15, 10:22] = NAME_TO_TRAIN_ID["person"]
    yy, xx = np.mgrid[:60, :80]
    disc = (yy - 40) ** 2 + (xx - 60) ** 2 <= 8 ** 2  # disc centred (x 60, y 40), radius 8
    eem[disc] = 0.7
    labels[disc] = NAME_TO_TRAIN_ID["car"]
    eem[50:53, 2:5] = 0.8  # 9 px: below min_area
    planted = {"person": (eem >= 0.9), "car": disc}
    return eem, labels, planted


def test_planted_blobs_are_found_exactly():
    eem, labels, planted = _scene()
    regions = extract_regions(eem, labels, threshold=0.5, min_area=20)
    assert [r.class_name for r in regions] == ["person", "car"]  # highest mean EEM first, tiny blob dropped
    person, car = regions
    assert person.bbox == (10, 5, 20, 10) and person.area == 200
    assert person.class_id == NAME_TO_TRAIN_ID["person"] and person.mean_eem == pytest.approx(0.9)
    ys, xs = np.nonzero(planted["car"])
    assert car.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (52, 32, 17, 17)
    assert car.area == planted["car"].sum() and car.mean_eem == pytest.approx(0.7)
    for region in regions:
        mask = planted[region.class_name]
        assert region.rle == mask_to_rle(mask)
        np.testing.assert_array_equal(coco_mask.decode(coco_mask.frPyObjects(region.rle, 60, 80)), mask)
        poly = np.array(region.polygon)  # [n, 2] x, y on the outer boundary pixels
        assert tuple(poly.min(0)) == region.bbox[:2]
        assert tuple(poly.max(0) - poly.min(0) + 1) == region.bbox[2:]
        assert mask[poly[:, 1], poly[:, 0]].all()
    assert len(extract_regions(eem, labels, threshold=0.5, min_area=1)) == 3


def test_connectivity():
    eem = np.zeros((4, 4), np.float32)
    eem[0, 0] = eem[1, 1] = 1.0  # diagonal neighbours
    labels = np.zeros((4, 4), np.uint8)
    assert len(extract_regions(eem, labels, 0.5, min_area=1, connectivity=8)) == 1
    assert len(extract_regions(eem, labels, 0.5, min_area=1, connectivity=4)) == 2


def _brute_force_otsu_split(values: np.ndarray) -> float:
    """Split of the sorted unique values maximising between-class variance; returns the last value of class 0."""
    v = np.sort(values.ravel().astype(np.float64))
    best, best_t = -1.0, None
    for t in np.unique(v)[:-1]:
        low, high = v[v <= t], v[v > t]
        between = low.size * high.size * (low.mean() - high.mean()) ** 2
        if between > best:
            best, best_t = between, t
    return best_t


def _between_variance(values: np.ndarray, fg: np.ndarray) -> float:
    return fg.sum() * (~fg).sum() * (values[fg].mean() - values[~fg].mean()) ** 2


def test_otsu_on_a_bimodal_map():
    rng = np.random.default_rng(0)
    # modes at 0.25 and 0.7 with unequal weights; values quantised to 1/200 so that every split
    # of the brute force is also a histogram split
    values = np.concatenate([rng.normal(0.25, 0.05, 3000), rng.normal(0.7, 0.08, 1000)])
    values = np.round(np.clip(values, 0, 1) * 200) / 200  # [4000]
    t = otsu_threshold(values, bins=201, value_range=(-0.0025, 1.0025))  # bin centres on the 1/200 grid
    t_ref = _brute_force_otsu_split(values)
    np.testing.assert_array_equal(values > t, values > t_ref)
    assert 0.35 < t < 0.55

    eem = values[:3600].reshape(60, 60).astype(np.float32)  # default bins and data range
    fg = eem > otsu_threshold(eem)
    best = _between_variance(eem, eem > _brute_force_otsu_split(eem))
    assert _between_variance(eem, fg) >= 0.999 * best


def test_otsu_mode_extracts_the_hot_mode():
    eem, labels, planted = _scene()
    regions = extract_regions(eem, labels, mode="otsu", min_area=20)
    assert sorted(r.class_name for r in regions) == ["car", "person"]
    assert extract_regions(np.full((8, 8), 0.3, np.float32), np.zeros((8, 8), np.uint8), mode="otsu") == []


def test_bad_arguments_are_rejected():
    eem, labels, _ = _scene()
    with pytest.raises(InvalidInput, match="threshold must be in"):
        extract_regions(eem, labels, threshold=-0.1)
    with pytest.raises(InvalidInput, match="otsu"):
        extract_regions(eem, labels, threshold=0.5, mode="otsu")
    with pytest.raises(InvalidInput, match="mode"):
        extract_regions(eem, labels, mode="kmeans")
    with pytest.raises(InvalidInput, match="labels must be"):
        extract_regions(eem, np.full(eem.shape, 40, np.uint8))
    with pytest.raises(InvalidInput, match=r"\[H, W\]"):
        extract_regions(eem, labels[:, :5])
