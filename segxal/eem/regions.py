"""Regions to fix: connected components of the EEM above a threshold (docs/design.md, "The EEM as shipped").

Each region carries what a labeler or platform needs: bounding box, outer polygon, a COCO RLE mask,
area, mean EEM and the dominant predicted class. The threshold is fixed or chosen per frame by
Otsu's method on the EEM histogram. A pixel belongs to the foreground when eem > threshold.

RLE is COCO's uncompressed format: the mask flattened column-major (Fortran order), counts of
alternating runs starting with a background run (0 when the first pixel is set), size [H, W];
pycocotools.mask.frPyObjects turns it into the compressed form.

References:
    SegXAL, arXiv 2408.04482 (region-level annotation of the EEM's hot spots).
    Otsu, "A Threshold Selection Method from Gray-Level Histograms", IEEE SMC 1979.
    COCO data format (cocodataset/cocoapi, PythonAPI/pycocotools/mask.py) for RLE.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from segxal import rle
from segxal.errors import InvalidInput
from segxal.labels import CLASS_NAMES, IGNORE
from segxal.resize import resize_nearest

DEFAULT_THRESHOLD = 0.5  # fixed mode when no threshold is given
DEFAULT_MIN_AREA = 16  # pixels; smaller components are noise, not work for a labeler (EEMOptions' default)
REFERENCE_PIXELS = 256 * 512  # min_area is stated at this resolution; larger frames scale it up
DEFAULT_MAX_REGIONS = 100  # regions kept per frame (most EEM mass first); 0 = no cap


def scaled_min_area(min_area: int, height: int, width: int, reference_pixels: int = REFERENCE_PIXELS) -> int:
    """The region floor at a map's resolution: `min_area` is in pixels of a `reference_pixels`
    frame (256 x 512), i.e. a share of the scene, so it scales with the map's pixel count both ways
    (16 pixels at 256 x 512 is 256 at 1024 x 2048 and 4 at 128 x 256): a component is kept or
    dropped alike whether the EEM is computed at the model's size or at the frame's. At least 1
    when min_area > 0."""
    return max(int(min_area > 0), int(round(min_area * height * width / reference_pixels)))


THRESHOLD_MODES = ("fixed", "otsu")


@dataclass(frozen=True)
class Region:
    """One connected component of EEM > threshold."""

    bbox: tuple[int, int, int, int]  # x, y, w, h in pixels of the frame (COCO order)
    polygon: list[list[int]]  # outer contour [[x, y], ...] from cv2.findContours (CHAIN_APPROX_SIMPLE)
    rle: dict  # {"size": [H, W], "counts": [int, ...]}: COCO uncompressed RLE over the whole image
    area: int  # pixels of the frame (of the RLE mask)
    mean_eem: float
    class_id: int  # dominant predicted trainId (255 = ignore)
    class_name: str


def mask_to_rle(mask: np.ndarray) -> dict:
    """Binary mask -> COCO uncompressed RLE as a dict (segxal.rle.encode_uncompressed).

    Args:
        mask: [H, W], nonzero = set.

    Returns:
        {"size": [H, W], "counts": [int, ...]}, column-major runs starting with background.

    Raises:
        InvalidInput: the mask is not 2-D.
    """
    r = rle.encode_uncompressed(mask)
    return {"size": [r.height, r.width], "counts": list(r.uncompressed_counts)}


def rle_to_mask(region_rle: dict) -> np.ndarray:
    """COCO uncompressed RLE dict -> binary mask (segxal.rle.decode).

    Args:
        region_rle: {"size": [H, W], "counts": [int, ...]} as mask_to_rle writes it.

    Returns:
        uint8 mask [H, W] of 0 and 1.

    Raises:
        InvalidInput: counts are negative or do not cover H * W pixels.
    """
    h, w = (int(v) for v in region_rle["size"])
    return rle.decode(rle.Rle(h, w, uncompressed_counts=tuple(region_rle["counts"])), "region").astype(np.uint8)


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] | None = None) -> float:
    """Otsu's threshold: the histogram split maximising the between-class variance w0 w1 (mu0 - mu1)^2.

    Returns the bin edge t between the two classes, so class 1 is values > t (values exactly at t,
    a measure-zero event for real maps, fall in class 0). When every value lies in one bin there is
    no split: t is that bin's upper edge, so nothing lies above it.

    Args:
        values: any shape, finite.
        bins: number of histogram bins.
        value_range: histogram range; default the data's (min, max), as skimage does.

    Returns:
        the threshold.

    Raises:
        InvalidInput: empty or non-finite values, bins < 2.
    """
    values = np.asarray(values, dtype=np.float64).ravel()  # [N]
    if values.size == 0 or not np.isfinite(values).all():
        raise InvalidInput("otsu_threshold needs a non-empty array of finite values")
    if bins < 2:
        raise InvalidInput(f"bins must be >= 2, got {bins}")
    lo, hi = value_range if value_range is not None else (values.min(), values.max())
    if hi <= lo:
        return float(hi)
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))  # [bins], [bins + 1]
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2  # [bins]
    w0 = np.cumsum(hist)[:-1]  # [bins - 1]: pixels in bins 0..k
    w1 = hist.sum() - w0  # [bins - 1]
    m0 = np.cumsum(hist * centers)[:-1]  # [bins - 1]
    m1 = (hist * centers).sum() - m0  # [bins - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        between = w0 * w1 * (m0 / w0 - m1 / w1) ** 2  # [bins - 1]
    between = np.where((w0 > 0) & (w1 > 0), between, -1.0)
    if between.max() < 0:
        return float(edges[np.flatnonzero(hist)[-1] + 1])
    return float(edges[int(np.argmax(between)) + 1])


def _component_rle(comp: np.ndarray, y0: int, x0: int, height: int, width: int) -> list[int]:
    """Whole-image RLE counts of a component given as its bbox crop, in O(H * bbox width)."""
    band = np.zeros((height, comp.shape[1]), dtype=bool)  # [H, bbox w]: the columns the bbox spans
    band[y0:y0 + comp.shape[0]] = comp
    counts = rle.run_lengths(band.ravel(order="F"))
    counts[0] += x0 * height  # columns left of the bbox are background
    right = (width - x0 - comp.shape[1]) * height
    if len(counts) % 2:  # ends with a background run
        counts[-1] += right
    elif right:
        counts.append(right)
    return counts


def _outer_polygon(comp: np.ndarray, y0: int, x0: int) -> list[list[int]]:
    """Outer contour of a component (its bbox crop) in image coordinates."""
    padded = np.pad(comp.astype(np.uint8), 1)  # [h + 2, w + 2]: contours need a background border
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x0 - 1, y0 - 1))
    outer = max(contours, key=len)  # [n_points, 1, 2]; one contour for an 8-connected component
    return outer[:, 0, :].tolist()


def _sources(n_map: int, n_frame: int) -> np.ndarray:
    """[n_frame]: the map pixel each frame pixel takes along one axis under segxal.resize's
    nearest-neighbour sampling (separable), so a region's frame mask is resize_nearest's."""
    return resize_nearest(np.arange(n_map, dtype=np.int32)[None], (1, n_frame))[0]


def _to_frame(comp: np.ndarray, rows: slice, cols: slice, row_src: np.ndarray,
              col_src: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """A component's bbox crop at the map's size -> (its crop at the frame's size, y0, x0), the
    component upsampled nearest-neighbour; None when it vanishes (a frame smaller than the map)."""
    y0, y1 = np.searchsorted(row_src, [rows.start, rows.stop])  # row_src is non-decreasing
    x0, x1 = np.searchsorted(col_src, [cols.start, cols.stop])
    big = comp[np.ix_(row_src[y0:y1] - rows.start, col_src[x0:x1] - cols.start)]  # [frame bbox h, w]
    ys, xs = np.flatnonzero(big.any(1)), np.flatnonzero(big.any(0))
    if ys.size == 0:
        return None
    return big[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1], int(y0 + ys[0]), int(x0 + xs[0])


def extract_regions(eem: np.ndarray, labels: np.ndarray, threshold: float | None = None, mode: str = "fixed",
                    min_area: int = DEFAULT_MIN_AREA, connectivity: int = 8,
                    class_names: tuple[str, ...] | list[str] | None = None,
                    max_regions: int = 0, frame_hw: tuple[int, int] | None = None) -> list[Region]:
    """Connected components of eem > threshold, largest mean EEM first.

    The components are found on the map as given (the model's size: cheap); with `frame_hw`, each
    region kept is then brought to the frame: its mask is the component upsampled nearest-neighbour
    (segxal.resize.resize_nearest's sampling), and bbox, polygon, RLE and area are those of that mask.

    Args:
        eem: EEM map [H, W] (float16 or float32), in [0, 1].
        labels: predicted trainIds [H, W] (0..C-1, or 255 = ignore).
        threshold: in [0, 1] for mode "fixed" (None: DEFAULT_THRESHOLD); must be None for "otsu".
        mode: "fixed" or "otsu" (threshold from otsu_threshold on this map).
        min_area: components with fewer pixels are dropped (0 or 1: none are).
        connectivity: 4 or 8 (pixel neighbourhood of a component).
        class_names: the model's classes, index = label value (None: the 19 Cityscapes trainIds).
        max_regions: keep the regions with the most EEM mass (area x mean EEM), at most this many;
            0 keeps all. Floor and cap apply to the components at the map's size.
        frame_hw: (H, W) of the frame the regions are reported in; None: the map's own size.

    Returns:
        list of Region, sorted by mean_eem descending (ties: larger area first).

    Raises:
        InvalidInput: shapes differ or are not 2-D, non-finite EEM, a threshold outside [0, 1] or given
            in otsu mode, unknown mode, min_area < 0, connectivity not 4 or 8, labels out of range,
            frame_hw not two sizes >= 1.
    """
    eem = np.asarray(eem, dtype=np.float32)
    if eem.ndim != 2 or labels.shape != eem.shape:
        raise InvalidInput(f"eem and labels must both be [H, W], got {eem.shape} and {labels.shape}")
    if not np.isfinite(eem).all():
        raise InvalidInput("eem holds NaN or infinite values")
    if mode not in THRESHOLD_MODES:
        raise InvalidInput(f"threshold mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    if mode == "otsu":
        if threshold is not None:
            raise InvalidInput(f"threshold={threshold} given with mode 'otsu', which computes it; pass None")
        threshold = otsu_threshold(eem)
    elif threshold is None:
        threshold = DEFAULT_THRESHOLD
    elif not 0.0 <= threshold <= 1.0:
        raise InvalidInput(f"threshold must be in [0, 1] (EEM range), got {threshold}")
    if min_area < 0:
        raise InvalidInput(f"min_area must be >= 0, got {min_area}")
    if connectivity not in (4, 8):
        raise InvalidInput(f"connectivity must be 4 or 8, got {connectivity}")
    if max_regions < 0:
        raise InvalidInput(f"max_regions must be >= 0, got {max_regions}")
    if frame_hw is not None and (len(frame_hw) != 2 or min(frame_hw) < 1):
        raise InvalidInput(f"frame_hw must be (H, W) >= 1, got {frame_hw}")
    names = CLASS_NAMES if class_names is None else tuple(class_names)
    num_classes = len(names)
    labels = np.asarray(labels).astype(np.int64)  # [H, W]
    if ((labels < 0) | ((labels >= num_classes) & (labels != IGNORE))).any():
        raise InvalidInput(f"labels must be class indices 0..{num_classes - 1} or {IGNORE}")

    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)  # [3, 3]
    components, n = ndimage.label(eem > threshold, structure=structure)  # [H, W] int32, 0 = background
    areas = np.bincount(components.ravel(), minlength=n + 1)  # [n + 1]
    eem_sums = np.bincount(components.ravel(), weights=eem.ravel(), minlength=n + 1)  # [n + 1]
    height, width = eem.shape
    keep = np.flatnonzero(areas >= max(min_area, 1))
    keep = keep[keep > 0]  # [n_kept] component ids, background excluded
    if max_regions and keep.size > max_regions:
        keep = keep[np.argsort(-eem_sums[keep], kind="stable")[:max_regions]]  # most EEM mass first
    wanted = np.zeros(n + 1, dtype=bool)
    wanted[keep] = True
    fh, fw = (height, width) if frame_hw is None else (int(frame_hw[0]), int(frame_hw[1]))
    row_src, col_src = _sources(height, fh), _sources(width, fw)  # [fh], [fw]; identity at map size
    regions = []
    for idx, (rows, cols) in enumerate(ndimage.find_objects(components), start=1):
        if not wanted[idx]:
            continue
        comp = components[rows, cols] == idx  # [bbox h, bbox w]
        class_id = int(np.argmax(np.bincount(labels[rows, cols][comp], minlength=IGNORE + 1)))
        at_frame = _to_frame(comp, rows, cols, row_src, col_src)
        if at_frame is None:
            continue
        big, y0, x0 = at_frame  # [bbox h, bbox w] at the frame's size
        regions.append(Region(
            bbox=(x0, y0, big.shape[1], big.shape[0]),
            polygon=_outer_polygon(big, y0, x0),
            rle={"size": [fh, fw], "counts": _component_rle(big, y0, x0, fh, fw)},
            area=int(big.sum()),
            mean_eem=float(eem_sums[idx] / areas[idx]),
            class_id=class_id,
            class_name=names[class_id] if class_id < num_classes else "ignore",
        ))
    regions.sort(key=lambda r: (-r.mean_eem, -r.area))
    return regions
