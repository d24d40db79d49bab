"""Procedural synthetic driving scenes, written in the Cityscapes layout that
segxal.data.cityscapes reads (leftImg8bit/, gtFine/*_labelIds.png, disparity/, camera/).

Scene model
-----------
World frame: X to the right (metres, 0 = centre of the ego lane), Z forward along a straight street,
heights above a flat ground plane. The camera is a pinhole with Cityscapes' calibration scaled to the
image size, mounted `Camera.mount_height` above the ground and pitched down by `pitch`; a camera-space
ray through pixel (u, v) with unit depth t = 1 meets world offsets
    X = (u - u0) / fx,   Z = cos(pitch) - r sin(pitch),   down = r cos(pitch) + sin(pitch),
with r = (v - v0) / fy. Every surface is either the ground (depth = height / down) or a vertical plane
n_x X + n_z Z = c (depth = c / (n_x X + n_z Z)), so depth, hence disparity = baseline * fx / depth,
is exact per pixel and follows the same geometry as the image.

* The street: lanes (ego lane, same-direction lanes, oncoming lanes, parking lanes) with markings,
  zebra crossings and cross streets; kerbs, sidewalks, then per side three lines of vertical planes
  parallel to the street: a low barrier (wall / fence) at the sidewalk's outer edge, a front line of
  building facades / hedges with gaps, and a closed back line. Each line is a list of blocks along Z
  (kind, height, colour, window layout). The static scene is ray cast per pixel with numpy.
* Objects (cars, trucks, buses, persons, riders on bicycles and motorcycles, parked two-wheelers,
  street lights, sign poles with signs, traffic lights at crossings, trees, bushes, street furniture
  labelled `static`, which Cityscapes ignores) are planar polygons in vertical planes (a rear face
  and the visible flank for vehicles), projected exactly and drawn far to near (painter's order)
  with cv2.fillPoly as part ids; label, albedo and plane come from one table lookup per pixel, so
  label edges are image edges.
* A sequence is a drive log: the camera moves forward at the ego speed (with a little lateral sway),
  other road users move at their own speeds, so consecutive frames overlap heavily but differ.
* Appearance: world-anchored procedural noise textures (they move with the scene), facades with
  windows, per-instance colours (grey cars on grey roads, beige cars by beige walls), sun shadows of
  the facades and objects, weather (clear, overcast, rain with streaks and wet roads, fog whose
  density grows with depth) and time of day (day, dusk, night with street lights, head/tail lights
  and lit windows), then a camera model: auto exposure, white balance, vignetting, blur, noise,
  JPEG artefacts. Difficulty comes from appearance only; labels are always exact.

Every sequence draws from its own random stream derived from (seed, split, sequence index), so a
seed gives byte-identical files and adding sequences leaves the earlier ones unchanged.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import id2label

from segxal import imageio
from segxal.errors import InvalidInput
from segxal.labels import NAME_TO_LABEL_ID, label_ids_to_train_ids

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Distinct synthetic cities per split (a split never shares a city with another, as in Cityscapes).
CITIES = {
    "train": ("aldenport", "brightwater", "cedarfield", "dunmore"),
    "val": ("eastmarsh", "fairhollow"),
    "test": ("glenridge", "harrowgate"),
}
WEATHERS = ("clear", "overcast", "rain", "fog")
TIMES_OF_DAY = ("day", "dusk", "night")
SIDECAR = "synth.json"  # dataset-level record: config and class pixel counts; marks our folders
FORMAT_VERSION = 1

_ID = {n: NAME_TO_LABEL_ID[n] for n in (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "motorcycle",
    "bicycle", "static")}


@dataclass
class SynthConfig:
    """What to generate. The files depend on nothing else. frames_per_sequence and frame_interval_s
    set the route length, so changing them redraws the sequences; the sequence counts do not."""
    height: int = 256
    width: int = 512
    train_sequences: int = 240  # 1,200 frames (Cityscapes: 2,975), 300 val: rare classes need the scenes
    val_sequences: int = 60
    test_sequences: int = 20
    frames_per_sequence: int = 5
    seed: int = 0
    # Seconds between frames. At 4-14 m/s the camera moves 1.5-5 m per frame: neighbouring frames
    # overlap heavily, as in a drive log, yet are not duplicates (stopped cars see only others move).
    frame_interval_s: float = 0.35
    # 0 = clean renders (no noise, blur or JPEG, faint textures, no look-alike colours); 1 = default
    # realism; up to 2 = harsh camera. Labels stay exact at every level.
    difficulty: float = 1.0
    # Relative weights of the per-sequence weather and time of day (they combine: foggy nights exist).
    weather_weights: dict[str, float] = field(default_factory=lambda: {
        "clear": 0.5, "overcast": 0.25, "rain": 0.13, "fog": 0.12})
    time_weights: dict[str, float] = field(default_factory=lambda: {
        "day": 0.72, "dusk": 0.13, "night": 0.15})
    # Scales the number of vehicles, pedestrians and riders (1 = a moderately busy city street).
    traffic_density: float = 1.0
    # Std of read noise (fraction of full scale) at difficulty 1, before auto exposure: night
    # frames get ~3x the gain, hence ~3x the noise, as a real camera does.
    sensor_noise: float = 0.012
    # Gaussian optical blur in pixels at 512 px width and difficulty 1 (scales with the width).
    blur_sigma: float = 0.6
    # JPEG quality of the camera's compression round trip at difficulty 1 (+-8 per frame); 0 = off.
    jpeg_quality: int = 88


# ------------------------------------------------------------------------------------------ camera
# Cityscapes calibration (aachen) for 2048 x 1024 images, scaled to the output size.
_CS_FX, _CS_FY, _CS_U0, _CS_V0 = 2262.52, 2265.30, 1096.98, 513.137
_CS_BASELINE, _CS_HEIGHT, _CS_PITCH, _CS_MOUNT_X = 0.209313, 1.22, 0.038, 1.7
_NEAR = 0.3  # m: near clipping distance of object polygons


@dataclass(frozen=True)
class Camera:
    width: int
    height: int
    fx: float
    fy: float
    u0: float
    v0: float
    baseline: float  # m, stereo baseline that defines the disparity
    mount_height: float  # m above the ground plane (Cityscapes extrinsic z)
    pitch: float  # rad, positive = looking down

    @classmethod
    def cityscapes_like(cls, height: int, width: int) -> "Camera":
        """Cityscapes' camera scaled to height x width (a resized Cityscapes image)."""
        sx, sy = width / 2048.0, height / 1024.0
        return cls(width, height, _CS_FX * sx, _CS_FY * sy, _CS_U0 * sx, _CS_V0 * sy,
                   _CS_BASELINE, _CS_HEIGHT, _CS_PITCH)

    def to_json(self) -> dict:
        """Cityscapes camera JSON (extrinsic / intrinsic)."""
        return {
            "extrinsic": {"baseline": self.baseline, "pitch": self.pitch, "roll": 0.0, "yaw": 0.0,
                          "x": _CS_MOUNT_X, "y": 0.0, "z": self.mount_height},
            "intrinsic": {"fx": self.fx, "fy": self.fy, "u0": self.u0, "v0": self.v0},
        }


class _Rays:
    """Per-pixel ray offsets for unit camera depth (see the module docstring)."""

    def __init__(self, cam: Camera):
        r = (np.arange(cam.height, dtype=np.float64) - cam.v0) / cam.fy
        cp, sp = math.cos(cam.pitch), math.sin(cam.pitch)
        self.xd = ((np.arange(cam.width, dtype=np.float64) - cam.u0) / cam.fx)  # [W] lateral
        self.fwd = cp - r * sp  # [H] forward
        self.down = r * cp + sp  # [H] downward
        self.ground_row0 = int(np.argmax(self.down > 1e-4))  # first row below the horizon
        self.split_col = int(math.ceil(cam.u0))  # columns left of it look left (xd < 0)
        self.xd32 = self.xd.astype(np.float32)
        self.fwd32 = self.fwd.astype(np.float32)
        self.down32 = self.down.astype(np.float32)


def _project(cam: Camera, x: np.ndarray, up: np.ndarray, z: np.ndarray):
    """Camera-relative world points (x right, up above ground, z forward) -> (u, v, camera depth)."""
    cp, sp = math.cos(cam.pitch), math.sin(cam.pitch)
    down = cam.mount_height - up
    zc = z * cp + down * sp
    yc = down * cp - z * sp
    zs = np.maximum(zc, 1e-6)
    return cam.u0 + cam.fx * x / zs, cam.v0 + cam.fy * yc / zs, zc


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


# ------------------------------------------------------------------------------------------- world
_OPEN, _BUILDING, _HEDGE, _CROSSING = range(4)  # block kinds of a line of planes
_NO_BARRIER, _WALL, _FENCE = range(3)
# static surface materials
_M_SKY, _M_ROAD, _M_SIDEWALK, _M_TERRAIN, _M_FACADE, _M_HEDGE, _M_WALL, _M_FENCE = range(8)

_BUILDING_COLOURS = np.array([
    (0.76, 0.70, 0.60), (0.56, 0.55, 0.54), (0.60, 0.36, 0.29), (0.84, 0.83, 0.79), (0.46, 0.37, 0.30),
    (0.80, 0.72, 0.47), (0.50, 0.55, 0.60), (0.63, 0.60, 0.57), (0.33, 0.32, 0.34), (0.70, 0.55, 0.45),
], dtype=np.float32)
_CAR_COLOURS = (  # (colour, weight): whites, blacks and greys dominate as in real traffic
    ((0.88, 0.88, 0.87), 0.2), ((0.06, 0.06, 0.07), 0.2), ((0.62, 0.63, 0.65), 0.15),
    ((0.36, 0.37, 0.39), 0.14), ((0.12, 0.2, 0.45), 0.08), ((0.55, 0.07, 0.06), 0.08),
    ((0.12, 0.25, 0.15), 0.03), ((0.70, 0.64, 0.50), 0.04), ((0.85, 0.7, 0.1), 0.02),
    ((0.3, 0.45, 0.6), 0.03), ((0.45, 0.28, 0.16), 0.03))
# walls are stone, brick or concrete masonry; fences painted metal (dark green, grey, black)
_WALL_COLOURS = np.array([(0.62, 0.58, 0.5), (0.5, 0.5, 0.47), (0.55, 0.36, 0.28), (0.42, 0.43, 0.39)],
                         dtype=np.float32)
_FENCE_COLOURS = np.array([(0.13, 0.24, 0.16), (0.32, 0.33, 0.34), (0.08, 0.08, 0.09)], dtype=np.float32)
_CLOTHES = np.array([(0.05, 0.05, 0.06), (0.12, 0.14, 0.25), (0.35, 0.35, 0.37), (0.6, 0.55, 0.45),
                     (0.55, 0.1, 0.1), (0.8, 0.8, 0.78), (0.2, 0.3, 0.2), (0.45, 0.3, 0.2),
                     (0.25, 0.45, 0.7), (0.75, 0.6, 0.2)], dtype=np.float32)
_SKIN = np.array([(0.85, 0.68, 0.55), (0.7, 0.5, 0.38), (0.45, 0.3, 0.2), (0.92, 0.78, 0.66)],
                 dtype=np.float32)


@dataclass
class _Line:
    """One line of vertical planes parallel to the street, |X| = dist on one side, in blocks along Z.
    Block i covers z0[i] <= Z < z0[i + 1]; it indexes the world's block table at offset + i."""
    dist: float
    z0: np.ndarray  # [n + 1], z0[0] = -inf, z0[n] = +inf
    offset: int
    max_top: float = 0.0  # tallest thing on the line (m), bounds the image rows it can cover

    def blocks(self, z: np.ndarray) -> np.ndarray:
        """Global block index of world positions z (any shape)."""
        i = np.searchsorted(self.z0, z, side="right") - 1
        return np.clip(i, 0, len(self.z0) - 2) + self.offset


@dataclass
class _Side:
    sign: int  # -1 left, +1 right
    kerb: float  # |X| of the kerb (road edge)
    verge: float  # |X| where the sidewalk starts (a grass strip lies between it and the kerb)
    walk: float  # |X| of the sidewalk's outer edge (barriers stand here)
    front: _Line  # facades / hedges with gaps (kind _OPEN) and cross streets (_CROSSING)
    back: _Line  # always closed: buildings or tree lines
    barrier: _Line  # same blocks as `front`, at |X| = walk


@dataclass
class _Thing:
    """A movable or fixed object; x, z = footprint centre in world metres at time 0."""
    kind: str
    x: float
    z: float
    width: float
    height: float
    length: float
    vx: float = 0.0
    vz: float = 0.0
    facing: int = 1  # +1: shows its rear / back to the camera (same direction of travel); -1: front
    colour: tuple = (0.5, 0.5, 0.5)
    colour2: tuple = (0.2, 0.2, 0.2)
    colour3: tuple = (0.1, 0.1, 0.1)
    variant: int = 0
    phase: float = 0.0  # walking / pedalling phase at time 0 (rad)
    yaw: float = 0.0  # rad, parked two-wheelers: angle of their plane to the street axis
    side: int = 1  # street side (arms of street lights point to the road)
    # kind-specific: sign plate size, tree trunk height, truck cab height, street-light arm, overhead
    # traffic-light arm; persons: a uniform draw that picks hair colour, helmet and bag
    extra: float = 0.0
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # shapes by view, shadows


@dataclass
class _World:
    """Everything about one drive log that does not change between its frames."""
    split: str
    index: int
    city: str
    weather: str
    time_of_day: str
    speed: float  # ego speed, m/s
    sway: tuple  # (amplitude m, period s, phase rad) of the ego's lateral motion
    sides: tuple  # (left _Side, right _Side)
    blocks: dict  # struct of arrays of all lines' blocks
    markings: list  # (x, half width, dash period, duty) of lane markings
    zebras: list  # (z start, z end) of zebra crossings
    stop_lines: list  # (z, x min, x max)
    road_span: tuple  # (left edge x, right edge x) of the carriageway, without cross streets
    things: list
    colours: dict  # base albedos: road, sidewalk, terrain, vegetation, marking
    sun: tuple  # (elevation rad, azimuth rad from +Z toward +X)
    fog_visibility: float  # m (meteorological: contrast 5 % at this depth); inf = none
    hedge_noise: np.ndarray  # [n] irregular top of hedges / tree lines, sampled every 0.5 m
    hedge_z0: float
    tex_offset: tuple  # texture offsets so that sequences do not share texture patches
    wb: np.ndarray  # [3] white balance gains of this camera / drive
    lamps: list = field(default_factory=list)  # (x, height, z) of street-light heads


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Generator for one derived stream: sequences, frames and texture tiles each get their own key."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


def _weighted(rng: np.random.Generator, weights: dict[str, float], names: tuple) -> str:
    """Draw a name with the given relative weights (always one uniform draw, whatever the weights)."""
    w = np.array([max(0.0, float(weights.get(n, 0.0))) for n in names])
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _city_style(city: str) -> dict:
    """Per-city look (fixed by the name): building height, greenery, palette, parking habits."""
    r = np.random.default_rng(zlib.crc32(city.encode()))
    return {
        "building_height": float(r.uniform(0.8, 1.3)),
        "greenery": float(r.uniform(0.6, 1.5)),
        "palette": r.permutation(len(_BUILDING_COLOURS))[: int(r.integers(5, 9))],
        "parking": float(r.uniform(0.35, 0.8)),
        "trees": float(r.uniform(0.3, 0.7)),
    }


def _build_world(cfg: SynthConfig, split: str, index: int) -> _World:
    """Draw the street, its blocks, its road users and the conditions of one drive log."""
    rng = _rng(cfg.seed, SPLITS.index(split), index)
    cities = CITIES[split]
    city = cities[index % len(cities)]
    style = _city_style(city)
    weather = _weighted(rng, cfg.weather_weights, WEATHERS)
    time_of_day = _weighted(rng, cfg.time_weights, TIMES_OF_DAY)
    stopped = rng.random() < 0.1
    speed = float(rng.uniform(0.0, 0.4) if stopped else rng.uniform(4.0, 14.0))
    duration = cfg.frame_interval_s * max(cfg.frames_per_sequence - 1, 0)
    z_end = speed * duration
    sway = (float(rng.uniform(0.0, 0.25)), float(rng.uniform(3.0, 8.0)), float(rng.uniform(0, 2 * np.pi)))

    lanes = _draw_lanes(rng, style)
    z_range = (-80.0, z_end + 450.0)
    crossings = _draw_crossings(rng, z_range)
    blocks: dict[str, list] = {k: [] for k in (
        "kind", "top", "colour", "floor_h", "win_pitch", "win_w", "win_h", "shop_h", "barrier",
        "barrier_h", "barrier_colour", "garden")}
    sides = []
    for sign in (-1, 1):
        kerb = lanes["left_kerb"] if sign < 0 else lanes["right_kerb"]
        verge = kerb + (float(rng.uniform(1.0, 2.5)) if rng.random() < 0.3 * style["greenery"] else 0.0)
        walk = verge + float(rng.uniform(2.0, 4.5))
        front_dist = walk + (0.0 if rng.random() < 0.5 else float(rng.uniform(1.0, 6.0)))
        back_dist = front_dist + float(rng.uniform(8.0, 25.0))
        front = _draw_line(rng, blocks, front_dist, z_range, crossings, style, back=False,
                           garden=front_dist > walk + 0.5)
        back = _draw_line(rng, blocks, back_dist, z_range, [], style, back=True, garden=False)
        barrier = _Line(walk, front.z0, front.offset)
        sides.append(_Side(sign, kerb, verge, walk, front, back, barrier))
    table = {k: np.asarray(v, dtype=np.float32) for k, v in blocks.items()}
    table["kind"] = table["kind"].astype(np.int8)
    table["barrier"] = table["barrier"].astype(np.int8)

    road_col = float(rng.uniform(0.26, 0.44))
    colours = {
        "road": np.float32(road_col) + rng.normal(0, 0.012, 3).astype(np.float32),
        "sidewalk": _sidewalk_colour(rng, road_col, cfg.difficulty),
        "terrain": [np.array(c, np.float32) for c in ((0.33, 0.42, 0.18), (0.5, 0.47, 0.3), (0.42, 0.36, 0.27))][
            int(rng.choice(3, p=[0.6, 0.25, 0.15]))] * np.float32(rng.uniform(0.85, 1.1)),
        "vegetation": (np.array((0.45, 0.36, 0.12), np.float32) if rng.random() < 0.12 else
                       np.array((rng.uniform(0.16, 0.3), rng.uniform(0.28, 0.43), rng.uniform(0.08, 0.17)),
                                np.float32)),
        "marking": np.array((0.86, 0.86, 0.83), np.float32) * np.float32(rng.uniform(0.75, 1.0)),
    }
    high, low = float(rng.uniform(20, 62)), float(rng.uniform(3, 12))
    sun = (math.radians(high if time_of_day == "day" else low), float(rng.uniform(-np.pi, np.pi)))
    visibility = float(rng.uniform(35.0, 160.0))  # drawn in any weather: weather must not move the scene
    fog = visibility if weather == "fog" else math.inf
    world = _World(
        split=split, index=index, city=city, weather=weather, time_of_day=time_of_day, speed=speed,
        sway=sway, sides=tuple(sides), blocks=table, markings=lanes["markings"],
        zebras=[(zc - 5.0, zc - 1.0) for zc, _, zebra in crossings if zebra],
        stop_lines=[(zc - 6.5, lanes["left_kerb_same"], lanes["right_kerb"]) for zc, _, _ in crossings],
        road_span=(-lanes["left_kerb"], lanes["right_kerb"]), things=[], colours=colours, sun=sun,
        fog_visibility=fog,
        hedge_noise=np.cumsum(rng.normal(0, 0.35, int((z_range[1] - z_range[0]) / 0.5) + 2)).astype(np.float32),
        hedge_z0=z_range[0],
        tex_offset=(float(rng.uniform(0, 256)), float(rng.uniform(0, 256))),
        wb=(1.0 + rng.normal(0, 0.035 * cfg.difficulty, 3)).astype(np.float32),
    )
    world.hedge_noise -= np.convolve(world.hedge_noise, np.ones(40) / 40, mode="same")  # no drift
    _set_line_heights(world)
    _populate(rng, cfg, world, lanes, crossings, style, z_end)
    return world


def _set_line_heights(world: _World) -> None:
    """Bound each line's height (the ray caster only looks at image rows it can cover)."""
    tb = world.blocks
    for side in world.sides:
        for line in (side.front, side.back):
            blocks = slice(line.offset, line.offset + len(line.z0) - 1)
            line.max_top = float(tb["top"][blocks].max() + max(world.hedge_noise.max(), 0.0))
        blocks = slice(side.barrier.offset, side.barrier.offset + len(side.barrier.z0) - 1)
        side.barrier.max_top = float(np.where(tb["barrier"][blocks] != _NO_BARRIER, tb["barrier_h"][blocks], 0).max())


def _sidewalk_colour(rng: np.random.Generator, road: float, difficulty: float) -> np.ndarray:
    # every value is drawn whatever the outcome, so that the difficulty does not move the scene
    """Pavement albedo; with probability 0.2 x difficulty almost the road's colour."""
    like_road = rng.random() < 0.2 * difficulty  # pavement that looks almost like the road
    grey = np.float32(road + rng.uniform(0.03, 0.08)) + rng.normal(0, 0.01, 3).astype(np.float32)
    options = ((0.58, 0.58, 0.57), (0.56, 0.44, 0.4), (0.63, 0.59, 0.52), (0.5, 0.5, 0.52))
    paved = np.array(options[int(rng.integers(len(options)))], np.float32) * np.float32(rng.uniform(0.85, 1.1))
    return grey if like_road else paved


def _draw_lanes(rng: np.random.Generator, style: dict) -> dict:
    """Lane layout across the street; X = 0 is the centre of the ego lane, + to the right."""
    lane_w = float(rng.uniform(2.9, 3.6))
    n_same = 1 if rng.random() < 0.55 else 2
    n_opp = int(rng.choice(3, p=[0.25, 0.55, 0.2]))
    ego = 0 if rng.random() < 0.8 else n_same - 1  # lane index from the right
    park_r = 2.2 if rng.random() < style["parking"] else 0.0
    park_l = 2.2 if rng.random() < style["parking"] * 0.6 else 0.0
    right_lanes_edge = ego * lane_w + lane_w / 2
    same_left = right_lanes_edge - n_same * lane_w  # x of the boundary between directions
    left_edge = same_left - n_opp * lane_w
    lanes_same = [right_lanes_edge - lane_w * (i + 0.5) for i in range(n_same)]
    lanes_opp = [same_left - lane_w * (j + 0.5) for j in range(n_opp)]
    markings = []
    if rng.random() > 0.12:  # some residential streets have no markings at all
        w = float(rng.uniform(0.06, 0.08))
        for i in range(n_same - 1):
            markings.append((right_lanes_edge - lane_w * (i + 1), w, 9.0, 0.34))
        if n_opp:
            markings.append((same_left, w, 1.0, 1.0) if rng.random() < 0.6 else (same_left, w, 9.0, 0.34))
        for j in range(n_opp - 1):
            markings.append((same_left - lane_w * (j + 1), w, 9.0, 0.34))
        if park_r:
            markings.append((right_lanes_edge, w * 0.8, 1.0, 1.0))
        if park_l:
            markings.append((left_edge, w * 0.8, 1.0, 1.0))
    return {
        "lane_w": lane_w, "same": lanes_same, "opp": lanes_opp,
        "right_kerb": right_lanes_edge + park_r, "left_kerb": -(left_edge - park_l),
        "left_kerb_same": same_left, "park_r": park_r > 0, "park_l": park_l > 0,
        "park_r_x": right_lanes_edge + park_r / 2, "park_l_x": left_edge - park_l / 2,
        "markings": markings, "one_way": n_opp == 0,
    }


def _draw_crossings(rng: np.random.Generator, z_range: tuple) -> list:
    """Cross streets: (z start, width, has a zebra crossing) along the route."""
    out = []
    z = z_range[0] + float(rng.uniform(40, 200))
    while z < z_range[1]:
        out.append((z, float(rng.uniform(9.0, 16.0)), bool(rng.random() < 0.6)))
        z += float(rng.uniform(40.0, 130.0))
    return out


def _draw_line(rng: np.random.Generator, table: dict, dist: float, z_range: tuple, crossings: list,
               style: dict, back: bool, garden: bool) -> _Line:
    """Blocks of one line of planes, appended to the shared block table."""
    offset = len(table["kind"])
    starts = [-np.inf]
    z = z_range[0]
    cross = sorted(crossings)
    ci = 0
    while z < z_range[1]:
        if ci < len(cross) and cross[ci][0] <= z + 1.0:
            zc, width, _ = cross[ci]
            ci += 1
            _append_block(rng, table, _CROSSING, style, back, garden)
            z = max(z, zc) + width
            starts.append(z)
            continue
        length = float(rng.uniform(15.0, 60.0) if back else rng.uniform(10.0, 45.0))
        if ci < len(cross):
            length = min(length, cross[ci][0] - z)
        p_build = 0.75 if back else 0.62 / (0.62 + 0.28 * style["greenery"])
        kind = _BUILDING if rng.random() < p_build else (_HEDGE if back or rng.random() < 0.45 else _OPEN)
        _append_block(rng, table, kind, style, back, garden)
        z += max(length, 1.0)
        starts.append(z)
    _append_block(rng, table, _BUILDING, style, back, garden)  # beyond the route: to infinity
    starts.append(np.inf)
    return _Line(dist, np.array(starts[:-1] + [np.inf]), offset)


def _append_block(rng: np.random.Generator, table: dict, kind: int, style: dict, back: bool,
                  garden: bool) -> None:
    """Draw one block (kind, height, colour, window layout, barrier) into the block table."""
    hscale = style["building_height"]
    if kind == _BUILDING:
        top = rng.uniform(10.0, 30.0) if back else rng.uniform(7.0, 24.0)
        top *= hscale
    elif kind == _HEDGE:
        top = rng.uniform(5.0, 14.0) if back else rng.uniform(2.0, 8.0)
    else:
        top = 0.0
    palette = style["palette"]
    colour = _BUILDING_COLOURS[int(palette[rng.integers(len(palette))])] * rng.uniform(0.85, 1.12, 3)
    barrier = _NO_BARRIER
    if kind in (_OPEN, _HEDGE) or (kind == _BUILDING and garden and rng.random() < 0.5):
        barrier = int(rng.choice(3, p=[0.4, 0.3, 0.3]))
    table["kind"].append(kind)
    table["top"].append(top)
    table["colour"].append(np.clip(colour, 0, 1))
    table["floor_h"].append(rng.uniform(2.8, 3.6))
    table["win_pitch"].append(rng.uniform(1.8, 3.6))
    table["win_w"].append(rng.uniform(0.3, 0.6))
    table["win_h"].append(rng.uniform(0.35, 0.6))
    table["shop_h"].append(rng.uniform(3.0, 4.5) if rng.random() < 0.5 else 0.0)
    table["barrier"].append(barrier)
    table["barrier_h"].append(rng.uniform(0.8, 2.2) if barrier == _WALL else rng.uniform(1.0, 2.2))
    wall = _WALL_COLOURS[int(rng.integers(len(_WALL_COLOURS)))] * rng.uniform(0.9, 1.1)
    fence = _FENCE_COLOURS[int(rng.integers(len(_FENCE_COLOURS)))] * rng.uniform(0.85, 1.15)
    table["barrier_colour"].append(wall if barrier == _WALL else fence)
    table["garden"].append(1.0 if garden else 0.0)


# --------------------------------------------------------------------------------- road users etc.
def _car_colour(rng: np.random.Generator) -> tuple:
    """A car paint colour, weighted as in real traffic, with a little jitter."""
    cols, w = zip(*_CAR_COLOURS)
    c = np.array(cols[int(rng.choice(len(cols), p=np.array(w) / sum(w)))])
    return tuple(np.clip(c * rng.uniform(0.85, 1.12) + rng.normal(0, 0.02, 3), 0, 1).tolist())


# Shares of road vehicles (the rest are cars). Trucks and buses are big, so a small share already
# gives them about half a percent of the pixels each; motorcycles only come ridden, in traffic.
_P_TRUCK, _P_BUS, _P_MOTORCYCLIST = 0.016, 0.018, 0.06


def _vehicle(rng: np.random.Generator, x: float, z: float, vz: float, facing: int,
             allow_big: bool = True, parked: bool = False) -> _Thing:
    """A car most of the time; trucks, buses and motorcyclists are rare."""
    r = rng.random()
    if allow_big and r < _P_TRUCK:
        return _Thing("truck", x, z, 2.45, float(rng.uniform(2.9, 3.8)), float(rng.uniform(6.5, 10.0)),
                      vz=vz, facing=facing, colour=tuple(rng.choice([0.85, 0.6, 0.3], 3).tolist()),
                      colour2=_car_colour(rng), extra=float(rng.uniform(2.5, 2.9)))
    if allow_big and r < _P_TRUCK + _P_BUS:
        bus_cols = ((0.85, 0.7, 0.1), (0.85, 0.85, 0.82), (0.7, 0.12, 0.1), (0.15, 0.3, 0.6))
        return _Thing("bus", x, z, 2.55, float(rng.uniform(3.0, 3.3)), float(rng.uniform(11.0, 13.0)),
                      vz=vz, facing=facing, colour=bus_cols[int(rng.integers(4))])
    if not parked and r > 1.0 - _P_MOTORCYCLIST:
        return _motorcyclist(rng, x, z, vz, facing)
    suv = rng.random() < 0.22
    return _Thing("car", x, z, float(rng.uniform(1.65, 1.95)),
                  float(rng.uniform(1.65, 2.0) if suv else rng.uniform(1.35, 1.55)),
                  float(rng.uniform(3.8, 4.9)), vz=vz, facing=facing, colour=_car_colour(rng),
                  variant=int(suv))


def _person(rng: np.random.Generator, kind: str, x: float, z: float, vx: float, vz: float,
            facing: int, variant: int = 0) -> _Thing:
    """variant 0: seen from front/back, 1: in profile (walking across the view)."""
    child = kind == "person" and rng.random() < 0.07
    h = float(rng.uniform(1.0, 1.35) if child else np.clip(rng.normal(1.72, 0.08), 1.5, 1.95))
    return _Thing(kind, x, z, 0.5 * h / 1.75, h, 0.35, vx=vx, vz=vz, facing=facing,
                  colour=tuple(_CLOTHES[rng.integers(len(_CLOTHES))].tolist()),
                  colour2=tuple(_CLOTHES[rng.integers(len(_CLOTHES))].tolist()),
                  colour3=tuple(_SKIN[rng.integers(len(_SKIN))].tolist()),
                  variant=variant, phase=float(rng.uniform(0, 2 * np.pi)), extra=float(rng.random()))


def _motorcyclist(rng: np.random.Generator, x: float, z: float, vz: float, facing: int) -> _Thing:
    """A rider on a motorcycle (colour3 = helmet)."""
    t = _person(rng, "motorcyclist", x, z, 0.0, vz, facing)
    t.colour3 = _car_colour(rng)  # helmet
    t.length, t.width = 2.0, 0.8
    return t


def _populate(rng: np.random.Generator, cfg: SynthConfig, world: _World, lanes: dict,
              crossings: list, style: dict, z_end: float) -> None:
    """Place road users, poles, signs, lights, trees and street furniture along the route."""
    dens = cfg.traffic_density * float(rng.uniform(0.4, 1.5))  # quiet and busy streets
    duration = cfg.frame_interval_s * max(cfg.frames_per_sequence - 1, 0)
    lo, hi = -30.0, z_end + 170.0
    things = world.things
    _place_traffic(rng, things, lanes, world.speed, duration, dens, lo, hi)
    for side in world.sides:
        _place_pedestrians(rng, things, side, dens, lo, hi)
        _place_street_lights(rng, world, side, lo, hi)
        _place_signs(rng, things, side, lo, hi)
        _place_trees_and_furniture(rng, world, side, style, lo, hi)
        _place_bicycle_racks(rng, things, side, dens, lo, hi)
    _place_cyclists(rng, things, lanes, world.speed, duration, dens)
    for zc, _, zebra in crossings:
        if not (lo < zc < hi + 40):
            continue
        if rng.random() < 0.75:
            _place_traffic_lights(rng, world, zc)
        # pedestrians on the zebra, unless the ego car would drive through them
        if zebra and zc - 4.0 > z_end + 6.0 and rng.random() < 0.5 * min(dens, 1.5):
            for _ in range(int(rng.integers(1, 4))):
                dirn = 1 if rng.random() < 0.5 else -1
                things.append(_person(rng, "person", float(rng.uniform(-lanes["left_kerb"], lanes["right_kerb"])),
                                      zc - 3.0 + float(rng.uniform(-1, 1)), dirn * float(rng.uniform(1.0, 1.6)),
                                      0.0, 1, variant=1))


def _place_bicycle_racks(rng: np.random.Generator, things: list, side: _Side, dens: float,
                         lo: float, hi: float) -> None:
    """Groups of parked bicycles (now and then a motorcycle) at the sidewalk's outer edge, at an angle."""
    s = side.sign
    for _ in range(rng.poisson(1.6 * dens)):
        z = float(rng.uniform(lo + 10, hi - 40))
        for k in range(int(rng.integers(1, 6))):
            kind = "motorcycle" if rng.random() < 0.15 else "bicycle"
            things.append(_Thing(kind, s * (side.walk - 0.6), z + 0.8 * k, 0.6, 1.0,
                                 2.0 if kind == "motorcycle" else 1.7, colour=_car_colour(rng),
                                 yaw=float(rng.uniform(0.6, 1.45)) * s, side=s))


def _place_cyclists(rng: np.random.Generator, things: list, lanes: dict, ego_speed: float,
                    duration: float, dens: float) -> None:
    """Cyclists near the right kerb, a few against the traffic on the left; met within the drive."""
    if rng.random() >= 0.45 * dens:
        return
    for _ in range(int(rng.integers(1, 3))):
        right = rng.random() < 0.75
        speed = float(rng.uniform(3.5, 6.5))
        if right:  # ahead, and still ahead of the (faster) ego car at the end of the drive log
            x, vz, z = lanes["right_kerb"] - 0.9, speed, 8.0 + max(0.0, (ego_speed - speed) * duration)
        else:
            x, vz, z = -(lanes["left_kerb"] - 0.9), -speed, ego_speed * duration
        t = _person(rng, "cyclist", x, z + float(rng.uniform(0.0, 80.0)), 0.0, vz, 1 if right else -1)
        t.colour2 = _car_colour(rng)  # bicycle frame
        things.append(t)


def _place_traffic(rng: np.random.Generator, things: list, lanes: dict, ego_speed: float,
                   duration: float, dens: float, lo: float, hi: float) -> None:
    """Vehicles per lane at a common lane speed (gaps never close within a drive log)."""
    for x in lanes["same"]:
        lane_speed = max(0.0, ego_speed + float(rng.normal(0, 1.5))) if ego_speed > 1 else float(rng.uniform(0, 1))
        ego_lane = abs(x) < 0.1
        # nothing may come closer than 6 m to the ego camera within its lane
        z = (6.0 + max(0.0, (ego_speed - lane_speed) * duration) + float(rng.exponential(12.0))
             if ego_lane else lo + float(rng.uniform(0, 15)))
        while z < hi:
            t = _vehicle(rng, x + float(rng.normal(0, 0.15)), 0.0, lane_speed + float(rng.uniform(-0.15, 0.15)), 1)
            t.z = z + t.length / 2
            things.append(t)
            z += t.length + 3.0 + float(rng.exponential(30.0 / dens))
    for x in lanes["opp"]:
        speed = float(rng.uniform(6.0, 14.0))
        z = lo + float(rng.uniform(0, 20))
        while z < hi + speed * duration:
            t = _vehicle(rng, x + float(rng.normal(0, 0.15)), 0.0, -speed, -1)
            t.z = z + t.length / 2
            things.append(t)
            z += t.length + 6.0 + float(rng.exponential(45.0 / dens))
    for park, x, sign in ((lanes["park_r"], lanes["park_r_x"], 1), (lanes["park_l"], lanes["park_l_x"], -1)):
        if not park:
            continue
        z = lo + float(rng.uniform(0, 6))
        while z < hi:
            if rng.random() < 0.6:
                t = _vehicle(rng, x + float(rng.normal(0, 0.12)), 0.0, 0.0,
                             1 if sign > 0 or rng.random() < 0.5 else -1, allow_big=rng.random() < 0.3,
                             parked=True)
                t.z = z + t.length / 2
                things.append(t)
                z += t.length + float(rng.uniform(0.8, 3.0))
            else:
                z += float(rng.uniform(4.0, 12.0))


def _place_pedestrians(rng: np.random.Generator, things: list, side: _Side, dens: float,
                       lo: float, hi: float) -> None:
    """Walkers and standers on the sidewalk, alone or in small groups."""
    s = side.sign
    n_groups = rng.poisson(dens * 0.065 * (hi - lo))
    for _ in range(n_groups):
        z = float(rng.uniform(lo, hi))
        x = s * float(rng.uniform(side.verge + 0.4, side.walk - 0.4))
        walking = rng.random() < 0.8
        dirn = 1 if rng.random() < 0.5 else -1
        v = dirn * float(rng.uniform(1.0, 1.6)) if walking else 0.0
        for k in range(1 + int(rng.poisson(0.6))):
            p = _person(rng, "person", x + s * 0.55 * k, z + float(rng.normal(0, 0.4)), 0.0, v,
                        dirn if walking else (1 if rng.random() < 0.5 else -1))
            if not walking:
                p.phase = 0.0
            things.append(p)


def _place_street_lights(rng: np.random.Generator, world: _World, side: _Side, lo: float, hi: float) -> None:
    """Street lights at regular spacing along the kerb; their heads light the night."""
    if rng.random() < 0.1:
        return
    z = lo + float(rng.uniform(0, 30))
    spacing = float(rng.uniform(22.0, 38.0))
    col = (0.3, 0.32, 0.3) if rng.random() < 0.6 else (0.12, 0.16, 0.14)
    height = float(rng.uniform(6.5, 9.0))
    arm = float(rng.uniform(0.8, 2.2))
    while z < hi:
        x = side.sign * (side.kerb + 0.45)
        world.things.append(_Thing("streetlight", x, z, 0.18, height, 0.18, colour=col, side=side.sign,
                                   extra=arm))
        world.lamps.append((x - side.sign * arm, height - 0.1, z))
        z += spacing


def _place_signs(rng: np.random.Generator, things: list, side: _Side, lo: float, hi: float) -> None:
    """Sign poles near the kerb: discs, triangles, squares, rectangles, octagons; some seen from behind."""
    n = rng.poisson(0.035 * (hi - lo))
    for _ in range(n):
        z = float(rng.uniform(lo, hi))
        x = side.sign * (side.kerb + float(rng.uniform(0.3, 0.8)))
        shape = int(rng.integers(5))  # disc, triangle, square, rectangle, octagon
        things.append(_Thing("sign", x, z, 0.07, float(rng.uniform(1.9, 2.7)), 0.07,
                             facing=1 if rng.random() < 0.35 else -1, variant=shape,
                             colour=((0.75, 0.08, 0.08), (0.1, 0.25, 0.65), (0.9, 0.75, 0.1),
                                     (0.1, 0.45, 0.25))[int(rng.integers(4))],
                             extra=float(rng.uniform(0.6, 0.9)), side=side.sign))


def _place_traffic_lights(rng: np.random.Generator, world: _World, zc: float) -> None:
    """Traffic lights at a crossing, facing the ego lane (some overhead) and the cross traffic."""
    state = int(rng.integers(3))
    for side in world.sides:
        x = side.sign * (side.kerb + 0.5)
        overhead = side.sign > 0 and rng.random() < 0.4
        world.things.append(_Thing("traffic_light", x, zc - 1.0, 0.32, float(rng.uniform(2.8, 3.6)), 0.3,
                                   facing=-1, variant=state, side=side.sign,
                                   extra=float(rng.uniform(3.0, 5.5)) if overhead else 0.0))
        if rng.random() < 0.5:  # lights for the cross traffic, seen from behind
            world.things.append(_Thing("traffic_light", x, zc + 0.5, 0.32, float(rng.uniform(2.8, 3.6)), 0.3,
                                       facing=1, variant=state, side=side.sign))


def _place_trees_and_furniture(rng: np.random.Generator, world: _World, side: _Side, style: dict,
                               lo: float, hi: float) -> None:
    """Avenue trees, trees and bushes in open blocks, bins / bollards / advertising columns."""
    s = side.sign
    veg = world.colours["vegetation"]
    if rng.random() < style["trees"]:  # an avenue: trees at regular spacing near the kerb
        z = lo + float(rng.uniform(0, 10))
        spacing = float(rng.uniform(7.0, 15.0))
        while z < hi:
            x = (side.kerb + side.verge) / 2 if side.verge > side.kerb else side.kerb + 1.0
            _add_tree(rng, world.things, s * x, z + float(rng.normal(0, 0.5)), veg, s)
            z += spacing
    for i, kind in enumerate(world.blocks["kind"][side.front.offset: side.front.offset + len(side.front.z0) - 1]):
        z0, z1 = side.front.z0[i], side.front.z0[i + 1]
        if kind not in (_OPEN, _HEDGE) or not np.isfinite(z0) or z1 < lo or z0 > hi:
            continue
        if world.blocks["barrier"][side.front.offset + i] != _NO_BARRIER:
            continue  # bushes behind a wall would break the painter's order
        for _ in range(rng.poisson(0.15 * min(z1, hi + 50) - 0.15 * max(z0, lo))):
            z = float(rng.uniform(max(z0, lo), min(z1, hi + 50)))
            x = s * float(rng.uniform(side.walk + 0.8, side.front.dist - 0.3 if side.front.dist > side.walk + 1.2
                                      else side.walk + 1.0))
            if rng.random() < 0.5:
                _add_tree(rng, world.things, x, z, veg, s)
            else:
                r = float(rng.uniform(0.5, 1.4))
                world.things.append(_Thing("bush", x, z, 2 * r, r * 1.4, 2 * r,
                                           colour=tuple((veg * rng.uniform(0.8, 1.2, 3)).tolist()),
                                           phase=float(rng.uniform(0, 100))))
    for _ in range(rng.poisson(0.03 * (hi - lo))):  # bins, bollards, advertising columns (void)
        z = float(rng.uniform(lo, hi))
        kind = int(rng.choice(3, p=[0.5, 0.35, 0.15]))
        w, h = ((0.5, 1.0), (0.14, 0.9), (1.0, 2.6))[kind]
        x = s * ((side.kerb + 0.25) if kind == 1 else float(rng.uniform(side.kerb + 0.4, side.walk - 0.2)))
        world.things.append(_Thing("furniture", x, z, w, h, w, variant=kind,
                                   colour=tuple(rng.uniform(0.1, 0.8, 3).tolist())))


def _add_tree(rng: np.random.Generator, things: list, x: float, z: float, veg: np.ndarray, s: int) -> None:
    """A tree: trunk and canopy (both `vegetation`, as Cityscapes annotates them)."""
    r = float(rng.uniform(1.3, 3.2))
    trunk = float(rng.uniform(2.2, 4.0))
    leaves = tuple((veg * rng.uniform(0.8, 1.2, 3)).tolist())
    things.append(_Thing("tree", x, z, 2 * r, trunk + 2 * r, 0.4, colour=leaves,
                         colour2=(0.3, 0.25, 0.2) if rng.random() < 0.6 else (0.42, 0.4, 0.36),
                         extra=trunk, phase=float(rng.uniform(0, 100)), side=s))


# --------------------------------------------------------------------------------- static scene
class _Canvas:
    """Per-frame buffers. The static ray cast fills surf/depth/block; objects fill part_id, from
    which label, albedo and plane are looked up, so the label edge is the image edge."""

    def __init__(self, h: int, w: int):
        self.label = np.full((h, w), _ID["sky"], np.uint8)
        self.albedo = np.zeros((h, w, 3), np.float32)  # [H, W, rgb]
        self.emissive = np.zeros((h, w), np.float32)  # glow gain of lamps, lights, lit windows
        # [H, W, 4]: object plane n_x, n_z, c (n_x = n_z = 0 on static pixels) and the sun cosine
        self.plane = np.zeros((h, w, 4), np.float32)
        self.depth = np.full((h, w), np.inf, np.float32)  # static scene depth (inf = sky)
        self.surf = np.zeros((h, w), np.uint8)  # static material
        self.block = np.zeros((h, w), np.int32)  # block table index of plane pixels
        self.part_id = np.zeros((h, w), np.int32)  # object part drawn last at a pixel (0 = none)
        self.shadow = np.ones((h, w), np.float32)  # sun visibility on the ground (object shadows)
        self.ao = np.ones((h, w), np.float32)  # ambient occlusion under vehicles


_SURF_LABEL = np.zeros(8, np.uint8)
_SURF_LABEL[[_M_SKY, _M_ROAD, _M_SIDEWALK, _M_TERRAIN, _M_FACADE, _M_HEDGE, _M_WALL, _M_FENCE]] = [
    _ID["sky"], _ID["road"], _ID["sidewalk"], _ID["terrain"], _ID["building"], _ID["vegetation"],
    _ID["wall"], _ID["fence"]]
_GROUND_SURFACES = (_M_ROAD, _M_SIDEWALK, _M_TERRAIN)


def _frac(x: np.ndarray) -> np.ndarray:
    """Fractional part in [0, 1) (np.mod is ~15x slower for floats)."""
    return x - np.floor(x)


# numpy broadcasting over a trailing axis of 3 (m[..., None] * rgb) is ~8x slower than cv2.merge of
# three single-channel products: these two helpers keep per-pixel colour arithmetic fast
def _tint(m: np.ndarray, colour) -> np.ndarray:
    """Scalar map m [H, W] or [n] times an RGB colour -> float32 m.shape + (3,)."""
    m = np.asarray(m, np.float32)
    return cv2.merge([m * np.float32(c) for c in colour]).reshape(m.shape + (3,))


def _rgb3(m: np.ndarray) -> np.ndarray:
    """Scalar map m [H, W] or [n] repeated over 3 channels -> float32 m.shape + (3,)."""
    m = np.asarray(m, np.float32)
    return cv2.merge([m, m, m]).reshape(m.shape + (3,))


def _ray_cast_ground(world: _World, cam: Camera, rays: _Rays, cam_x: float, cam_z: float,
                     cv: _Canvas) -> None:
    """Ground below the horizon: road, kerbs, sidewalks, gardens, cross streets."""
    g0 = rays.ground_row0
    tg = cam.mount_height / rays.down[g0:]  # [Hg] ground depth per row
    zg = rays.fwd[g0:] * tg + cam_z  # [Hg] world Z per row (does not depend on the column)
    xg = rays.xd[None, :] * tg[:, None] + cam_x  # [Hg, W] world X
    surf = np.full(xg.shape, _M_ROAD, np.uint8)
    kinds, barriers = world.blocks["kind"], world.blocks["barrier"]
    for side in world.sides:
        d = side.sign * xg
        blk = side.front.blocks(zg)
        kind = kinds[blk][:, None]  # [Hg, 1]
        paved = ((kind == _BUILDING) & (barriers[blk] == _NO_BARRIER)[:, None])  # plaza up to facade
        off_road = (d > side.kerb) & (kind != _CROSSING)
        surf[off_road] = _M_TERRAIN
        surf[off_road & ((d <= side.walk) | paved) & (d > side.verge)] = _M_SIDEWALK
    cv.surf[g0:] = surf
    cv.depth[g0:] = tg[:, None].astype(np.float32)


def _ray_cast_planes(world: _World, cam: Camera, rays: _Rays, cam_x: float, cam_z: float,
                     cv: _Canvas) -> None:
    """Lines of vertical planes: back line, front line, barriers; nearer lines overwrite farther.
    A plane is hit where the ray meets it between the ground and the block's top."""
    tb = world.blocks
    h = cam.mount_height
    for side in world.sides:
        cols = slice(rays.split_col, cam.width) if side.sign > 0 else slice(0, rays.split_col)
        xd = rays.xd[cols]
        if xd.size == 0:
            continue
        for line, role in ((side.back, "back"), (side.front, "front"), (side.barrier, "barrier")):
            t = np.minimum((side.sign * line.dist - cam_x) / np.where(xd == 0, 1e-9, xd), 1e6)  # [Wc]
            if t.max() <= 0:
                continue
            t = np.where(t > 0, t, 1e6)
            # rows where 0 <= height < line.max_top for some column: a band around the horizon
            t_min = float(t.min())
            low = (h - line.max_top) / (t_min if h < line.max_top else float(t.max()))
            rows = slice(int(np.searchsorted(rays.down, low)),
                         int(np.searchsorted(rays.down, h / t_min, side="right")))
            if rows.start >= rows.stop:
                continue
            z = rays.fwd[rows, None] * t[None, :] + cam_z  # [Hb, Wc] world Z
            y = h - rays.down[rows, None] * t[None, :]  # [Hb, Wc] height above the ground
            blk = _blocks_in_columns(line, z)
            kind = tb["kind"][blk]
            if role == "barrier":
                top = np.where(tb["barrier"][blk] != _NO_BARRIER, tb["barrier_h"][blk], 0.0)
                surf = np.where(tb["barrier"][blk] == _WALL, _M_WALL, _M_FENCE).astype(np.uint8)
            else:
                hedge = kind == _HEDGE
                top = np.where(hedge, tb["top"][blk] + _hedge_top_noise(world, z), tb["top"][blk])
                if role == "front":
                    top = np.where((kind == _BUILDING) | hedge, top, 0.0)
                surf = np.where(hedge, _M_HEDGE, _M_FACADE).astype(np.uint8)
            hit = (y >= 0.0) & (y < top)
            sub = (rows, cols)
            np.copyto(cv.surf[sub], surf, where=hit)
            np.copyto(cv.depth[sub], np.broadcast_to(t[None, :], hit.shape).astype(np.float32), where=hit)
            np.copyto(cv.block[sub], blk.astype(np.int32), where=hit)


def _blocks_in_columns(line: _Line, z: np.ndarray) -> np.ndarray:
    """line.blocks(z) for z [rows, cols] that grows only slightly along rows (camera pitch): look up
    the top and bottom rows and search per pixel only in columns that cross a block boundary."""
    top, bottom = line.blocks(z[0]), line.blocks(z[-1])
    blk = np.broadcast_to(top[None, :], z.shape).copy()
    mixed = top != bottom
    if mixed.any():
        blk[:, mixed] = line.blocks(z[:, mixed])
    return blk


def _hedge_top_noise(world: _World, z: np.ndarray) -> np.ndarray:
    """Irregular tops of hedges and tree lines (m), anchored to the world."""
    n = world.hedge_noise
    i = np.clip(((z - world.hedge_z0) * 2.0).astype(np.int64), 0, len(n) - 1)
    return n[i]


@dataclass
class _Patch:
    """The visible pixels of one static material (flat indices) and what shading needs of them."""
    idx: np.ndarray  # [n] flat pixel indices
    blk: np.ndarray  # [n] block table index (planes)
    ca: np.ndarray  # [n] surface coordinate: ground X, plane Z (world, m)
    cb: np.ndarray  # [n] ground Z, plane height (m)
    foot: np.ndarray  # [n] metres covered by the pixel (texture / pattern anti-aliasing)
    fine: np.ndarray  # [n] fine-grain noise, already faded with distance
    coarse: np.ndarray  # [n] blotchy noise, faded with distance
    amp: float  # texture strength from the difficulty


# texels per metre of the two noise tiles: periods of 20 m and 320 m, so that coordinates can be
# taken relative to a 320 m grid point near the camera (they stay small, remap needs 16 bits)
_FINE_SCALE, _COARSE_SCALE, _TEX_SNAP = 12.8, 0.8, 320.0


def _shade_static(world: _World, cam: Camera, rays: _Rays, cv: _Canvas, tex: _Textures,
                  difficulty: float, cam_x: float, cam_z: float) -> None:
    """Albedo and sun cosine of the static pixels left visible by the objects: world-anchored
    textures, markings, windows. Pixels are grouped by material (one stable sort)."""
    width = cam.width
    surf_all = np.where(cv.part_id == 0, cv.surf, _M_SKY).reshape(-1)
    idx = np.flatnonzero(surf_all)  # visible static pixels, sky excluded
    if not idx.size:
        return
    order = np.argsort(surf_all[idx], kind="stable")
    idx = idx[order]
    surf = surf_all[idx]
    r, c = idx // width, idx % width
    t = cv.depth.reshape(-1)[idx]
    ground = surf <= _M_TERRAIN  # road, sidewalk, terrain come first in the material order
    fwd_t = rays.fwd32[r] * t
    # surface coordinates: ground (X, Z), planes (Z, height), in world metres
    ca = np.where(ground, rays.xd32[c] * t + np.float32(cam_x), fwd_t + np.float32(cam_z))
    cb = np.where(ground, fwd_t + np.float32(cam_z), np.float32(cam.mount_height) - rays.down32[r] * t)
    foot = t / np.float32(cam.fx)  # metres per pixel; on the ground, along Z it is longer:
    foot = np.where(ground, np.maximum(foot, t * t / np.float32(cam.fy * cam.mount_height)), foot)
    elev, az = world.sun
    cv.plane[..., 3].reshape(-1)[idx] = np.where(
        ground, np.float32(math.sin(elev)),  # facades face the road: normal -sign(X) * X
        np.float32(math.cos(elev) * math.sin(az)) * -np.sign(rays.xd32[c]))
    snap_x, snap_z = math.floor(cam_x / _TEX_SNAP) * _TEX_SNAP, math.floor(cam_z / _TEX_SNAP) * _TEX_SNAP
    ua = ca - np.where(ground, np.float32(snap_x), np.float32(snap_z))
    vb = cb - np.where(ground, np.float32(snap_z), np.float32(0.0))
    ox, oy = world.tex_offset
    fine = tex.sample(tex.fine, ua * _FINE_SCALE + ox, vb * _FINE_SCALE + oy) * np.clip(0.06 / foot, 0, 1)
    coarse = tex.sample(tex.coarse, ua * _COARSE_SCALE + oy, vb * _COARSE_SCALE + ox) * np.clip(1.0 / foot, 0, 1)
    blk = cv.block.reshape(-1)[idx]
    amp = 0.35 + 0.65 * min(difficulty, 1.5)
    albedo = cv.albedo.reshape(-1, 3)
    bounds = np.searchsorted(surf, np.arange(_M_FENCE + 2))
    for m, fn in ((_M_ROAD, _shade_road), (_M_SIDEWALK, _shade_sidewalk), (_M_TERRAIN, _shade_terrain),
                  (_M_FACADE, _shade_facade), (_M_HEDGE, _shade_hedge), (_M_WALL, _shade_barrier),
                  (_M_FENCE, _shade_barrier)):
        sl = slice(bounds[m], bounds[m + 1])
        if sl.start == sl.stop:
            continue
        rgb, emissive = fn(world, _Patch(idx[sl], blk[sl], ca[sl], cb[sl], foot[sl], fine[sl], coarse[sl], amp))
        albedo[idx[sl]] = rgb
        if emissive is not None:
            cv.emissive.reshape(-1)[idx[sl]] = emissive


def _paint_mix(mask: np.ndarray, width_m: float, foot: np.ndarray) -> np.ndarray:
    """Coverage of a painted pattern: fades into the base colour where a pixel covers much more
    than the pattern's width (no aliasing flicker between frames)."""
    return mask * np.clip(width_m / foot, 0.0, 1.0)


def _shade_road(world: _World, g: _Patch):
    """Asphalt with patches, lane markings, zebras and stop lines (all `road`); darker when wet."""
    x, z = g.ca, g.cb
    k = 1.0 + g.amp * (0.09 * g.coarse + 0.12 * g.fine)
    k = k * np.where(g.coarse > 1.4, 0.86, 1.0)  # patched asphalt
    if world.weather == "rain":
        k = k * 0.72
    out = _tint(k, world.colours["road"])
    paint = np.zeros(x.shape, bool)
    for mx, hw, period, duty in world.markings:
        on = np.abs(x - mx) < hw
        if duty < 1.0:
            on &= _frac(z / period) < duty
        paint |= on
    left, right = world.road_span
    for z0, z1 in world.zebras:
        paint |= (z > z0) & (z < z1) & (x > left) & (x < right) & (_frac(x) < 0.5)
    for zs, xl, xr in world.stop_lines:
        paint |= (z > zs) & (z < zs + 0.4) & (x > xl) & (x < xr)
    mix = _paint_mix(paint, 0.12, g.foot)
    out = out * _rgb3(1 - mix) + _tint((0.9 + 0.1 * k) * mix, world.colours["marking"])
    return out, None


def _shade_sidewalk(world: _World, g: _Patch):
    """Paving slabs with joints."""
    joint = (_frac(g.ca / 0.4) < 0.075) | (_frac(g.cb / 0.4) < 0.075)
    k = (1.0 + g.amp * (0.06 * g.coarse + 0.12 * g.fine)) * (1 - 0.2 * _paint_mix(joint, 0.03, g.foot))
    if world.weather == "rain":
        k = k * 0.78
    return _tint(k, world.colours["sidewalk"]), None


def _shade_terrain(world: _World, g: _Patch):
    """Grass blending into dry patches."""
    dry = np.clip(0.5 + 0.35 * g.coarse, 0, 1) * 0.35
    k = 1.0 + g.amp * 0.25 * g.fine
    return _tint((1 - dry) * k, world.colours["terrain"]) + _tint(dry * k, (0.45, 0.4, 0.3)), None


def _shade_facade(world: _World, g: _Patch):
    """Facades: per-block colour, storeys of windows, shop fronts, cornice; lit windows after dusk."""
    tb = world.blocks
    blk = g.blk
    s, y = g.ca, g.cb
    out = tb["colour"][blk] * _rgb3(1.0 + g.amp * (0.08 * g.coarse + 0.06 * g.fine))
    top, floor_h, pitch, shop = tb["top"][blk], tb["floor_h"][blk], tb["win_pitch"][blk], tb["shop_h"][blk]
    first = np.maximum(shop, 0.8)
    col_f, row_f = s / pitch, (y - first) / floor_h
    fy = _frac(row_f)
    window = ((np.abs(_frac(col_f) - 0.5) < tb["win_w"][blk] / 2) & (fy > 0.3) & (fy < 0.3 + tb["win_h"][blk])
              & (y > first) & (y < top - 1.0))
    storefront = (y < shop - 0.7) & (y > 0.2) & (_frac(s / 4.0) > 0.075)
    out[y > top - 0.45] *= 0.78  # cornice
    w_idx = np.flatnonzero(window | storefront)
    emis = None
    if w_idx.size:
        rnd = _hash01(np.floor(col_f[w_idx]), np.floor(row_f[w_idx]), blk[w_idx])
        glass = (0.07 + 0.22 * rnd)[:, None] * np.array((0.85, 0.95, 1.1), np.float32)
        shop_px = storefront[w_idx]
        glass[shop_px] = np.array((0.1, 0.11, 0.12), np.float32) + 0.1 * rnd[shop_px, None]
        vis = np.where(shop_px, 1.0, np.clip(0.25 / g.foot[w_idx], 0, 1))[:, None]  # sub-pixel windows fade
        out[w_idx] = out[w_idx] * (1 - vis) + glass * vis
        if world.time_of_day != "day":
            lit = np.where(shop_px, _hash01(np.floor(s[w_idx] / 4.0), blk[w_idx]) < 0.6, rnd < 0.3)
            out[w_idx[lit]] = np.array((0.95, 0.75, 0.45), np.float32) * (0.6 + 0.4 * rnd[lit, None])
            emis = np.zeros(len(s), np.float32)
            emis[w_idx[lit]] = 1.0
    return out, emis


def _shade_hedge(world: _World, g: _Patch):
    """Leafy hedges and tree lines."""
    k = (1.0 + 0.15 * g.coarse + g.amp * 0.3 * g.fine) * np.where(g.fine > 1.1, 0.65, 1.0)
    return _tint(k, world.colours["vegetation"]), None


def _shade_barrier(world: _World, g: _Patch):
    """Walls and fences along the sidewalk's outer edge."""
    tb = world.blocks
    blk = g.blk
    s, y = g.ca, g.cb
    base = tb["barrier_colour"][blk] * _rgb3(1.0 + g.amp * (0.1 * g.coarse + 0.1 * g.fine))
    fence = tb["barrier"][blk] == _FENCE
    height = tb["barrier_h"][blk]
    # fence: vertical bars between a top and a bottom rail, dark gaps; wall: staggered masonry
    # courses (0.3 m x 0.6 m blocks) under a lighter coping
    gap = fence & (_frac(s / 0.14) > 0.35) & (y < height - 0.1) & (y > 0.15)
    course = np.floor(y / 0.3)
    joint = ~fence & ((_frac(y / 0.3) < 0.1) | (_frac((s + 0.3 * (course % 2)) / 0.6) < 0.05))
    coping = ~fence & (y > height - 0.12)
    k = (1.0 - 0.6 * _paint_mix(gap, 0.05, g.foot) - 0.3 * _paint_mix(joint, 0.03, g.foot)
         + 0.25 * _paint_mix(coping, 0.06, g.foot))
    return base * _rgb3(k), None


# ------------------------------------------------------------------------------------------ objects
def _rect(s0: float, s1: float, y0: float, y1: float) -> np.ndarray:
    """Axis-aligned rectangle in a part's (s, height) plane coordinates."""
    return np.array(((s0, y0), (s1, y0), (s1, y1), (s0, y1)), np.float64)


_CIRCLES: dict[int, np.ndarray] = {}  # unit circles by vertex count: shapes are built per frame


def _unit_circle(n: int) -> np.ndarray:
    """Cached unit circle with n vertices [n, 2]."""
    if n not in _CIRCLES:
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        _CIRCLES[n] = np.stack((np.cos(a), np.sin(a)), 1)
    return _CIRCLES[n]


def _disc(cs: float, cy: float, r: float, n: int = 12, ry: float | None = None) -> np.ndarray:
    """Disc (ellipse when ry is given) as a polygon with n vertices."""
    return _unit_circle(n) * (r, ry or r) + (cs, cy)


def _blob(cs: float, cy: float, rx: float, ry: float, seed: float, n: int = 20) -> np.ndarray:
    """Irregular round outline (canopies, bushes): radius modulated by a few harmonics."""
    unit = _unit_circle(n)
    a = np.arctan2(unit[:, 1], unit[:, 0])
    k = 1 + 0.12 * np.sin(3 * a + seed) + 0.08 * np.sin(5 * a + 2.1 * seed) + 0.06 * np.sin(8 * a + seed * 0.7)
    return unit * k[:, None] * (rx, ry) + (cs, cy)


def _bar(p: tuple, q: tuple, w: float) -> np.ndarray:
    """Quad of width w along the segment p -> q (frames, limbs, arms of poles)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    d = q - p
    n = np.array((-d[1], d[0])) / max(np.hypot(*d), 1e-9) * (w / 2)
    return np.array((p + n, q + n, q - n, p - n))


def _poly(*pts) -> np.ndarray:
    """Polygon from (s, height) vertices."""
    return np.array(pts, np.float64)


@dataclass
class _Part:
    plane: tuple  # (x0, z0, dx, dz): camera-relative origin and unit direction of the plane
    contours: list  # [k, 2] arrays of (s along the plane, height); several = holes (even-odd)
    label: int
    rgba: tuple  # albedo rgb + emissive gain
    core: bool = False  # silhouette part, drawn even when the object is tiny


def _frontal(x: float, z: float) -> tuple:
    """Plane facing the camera (normal along Z) through camera-relative (x, z)."""
    return (x, z, 1.0, 0.0)


def _lateral(x: float, z: float) -> tuple:
    """Plane along the street (normal along X) starting at camera-relative (x, z)."""
    return (x, z, 0.0, 1.0)


_BLACK = (0.04, 0.04, 0.045, 0.0)
_GLASS = (0.08, 0.1, 0.13, 0.0)


def _car_parts(t: _Thing, view: "_View") -> list:
    """Car in its own frame: the face toward the camera (rear with tail lights, or front with head lights)
    and the visible flank."""
    W, H, L = t.width, t.height, t.length
    c = t.colour + (0.0,)
    lid = _ID["car"]
    zn = -L / 2
    parts = _vehicle_side(t, view.flank, lid, _car_profile(t))
    if view.front:
        pl = _frontal(0.0, zn)
        parts += [
            _Part(pl, [_rect(-W / 2 + 0.05, -W / 2 + 0.32, 0.0, 0.34), _rect(W / 2 - 0.32, W / 2 - 0.05, 0.0, 0.34)],
                  lid, _BLACK, True),
            _Part(pl, [_poly((-W / 2, 0.25), (W / 2, 0.25), (W / 2, 0.8), (W / 2 - 0.07, 0.9),
                             (-W / 2 + 0.07, 0.9), (-W / 2, 0.8))], lid, c, True),
            _Part(pl, [_poly((-W / 2 + 0.1, 0.9), (W / 2 - 0.1, 0.9), (W / 2 - 0.28, H), (-W / 2 + 0.28, H))],
                  lid, c, True),
            _Part(pl, [_poly((-W / 2 + 0.18, 0.95), (W / 2 - 0.18, 0.95), (W / 2 - 0.33, H - 0.06),
                             (-W / 2 + 0.33, H - 0.06))], lid, _GLASS),
            _Part(pl, [_rect(-W / 2, W / 2, 0.25, 0.38)], lid, (0.07, 0.07, 0.08, 0.0)),
            _Part(pl, [_rect(-0.26, 0.26, 0.42, 0.54)], lid, (0.85, 0.85, 0.82, 0.0)),
        ]
        if t.facing > 0:  # rear: red tail lights
            light = (0.75, 0.06, 0.05, 1.0)
            parts += [_Part(pl, [_rect(-W / 2 + 0.06, -W / 2 + 0.38, 0.62, 0.8),
                                 _rect(W / 2 - 0.38, W / 2 - 0.06, 0.62, 0.8)], lid, light)]
        else:  # front: grille and head lights
            parts += [_Part(pl, [_rect(-0.45, 0.45, 0.58, 0.76)], lid, (0.1, 0.1, 0.11, 0.0)),
                      _Part(pl, [_rect(-W / 2 + 0.08, -W / 2 + 0.4, 0.62, 0.76),
                                 _rect(W / 2 - 0.4, W / 2 - 0.08, 0.62, 0.76)], lid, (0.9, 0.9, 0.82, 1.5))]
    return parts


def _car_profile(t: _Thing) -> list:
    """Side view of a car, q measured from its front bumper: [(contours, rgba, core)]."""
    L, H, c = t.length, t.height, t.colour + (0.0,)
    if t.variant:  # SUV / van: square cabin
        cabin = _poly((1.1, 0.92), (L - 0.15, 0.92), (L - 0.25, H), (1.7, H))
        window = _poly((1.25, 0.98), (L - 0.3, 0.98), (L - 0.35, H - 0.07), (1.75, H - 0.07))
    else:
        cabin = _poly((1.3, 0.9), (L - 0.7, 0.9), (L - 1.3, H), (2.2, H))
        window = _poly((1.45, 0.96), (L - 0.85, 0.96), (L - 1.35, H - 0.06), (2.25, H - 0.06))
    mid = (1.45 + L - 0.85) / 2
    return [
        ([_poly((0, 0.32), (L, 0.32), (L, 0.92), (0.9, 0.95), (0, 0.8))], c, True),
        ([cabin], c, True),
        ([window], _GLASS, False),
        ([_rect(mid - 0.05, mid + 0.05, 0.92, H - 0.05)], c, False),
        ([_disc(0.85, 0.32, 0.32), _disc(L - 0.9, 0.32, 0.32)], _BLACK, True),
        ([_disc(0.85, 0.32, 0.15, 8), _disc(L - 0.9, 0.32, 0.15, 8)], (0.45, 0.45, 0.47, 0.0), False),
    ]


def _vehicle_side(t: _Thing, flank: int, lid: int, profile: list) -> list:
    """The flank the camera sees: +1 the left one (vehicle right of the camera), -1 the right one."""
    W, L = t.width, t.length
    if flank == 0:
        return []
    pl = _lateral(-W / 2 if flank > 0 else W / 2, -L / 2)
    parts = []
    for contours, rgba, core in profile:
        if t.facing > 0:  # the front is the far end: s = L - q
            contours = [np.column_stack((L - q[:, 0], q[:, 1])) for q in contours]
        parts.append(_Part(pl, contours, lid, rgba, core))
    return parts


def _truck_parts(t: _Thing, view: "_View") -> list:
    """Truck: cab and cargo box; rear doors, or the cab's front with the box rising behind it."""
    W, H, L, cab = t.width, t.height, t.length, t.extra
    box = t.colour + (0.0,)
    cabc = t.colour2 + (0.0,)
    lid = _ID["truck"]
    x, zn = 0.0, -L / 2
    wheels = [_disc(1.2, 0.5, 0.5), _disc(L - 1.6, 0.5, 0.5)] + ([_disc(L - 2.7, 0.5, 0.5)] if L > 8 else [])
    profile = [
        ([_rect(0, L, 0.45, 0.95)], (0.1, 0.1, 0.1, 0.0), True),
        ([_rect(0, 2.2, 0.5, cab)], cabc, True),
        ([_poly((0.45, 1.6), (1.9, 1.6), (1.9, cab - 0.2), (0.6, cab - 0.2))], _GLASS, False),
        ([_rect(2.35, L, 0.95, H)], box, True),
        (wheels, _BLACK, True),
    ]
    parts = _vehicle_side(t, view.flank, lid, profile)
    if not view.front:
        return parts
    pl = _frontal(x, zn)
    if t.facing > 0:
        parts += [
            _Part(pl, [_rect(-W / 2 + 0.1, -W / 2 + 0.6, 0, 0.55), _rect(W / 2 - 0.6, W / 2 - 0.1, 0, 0.55)],
                  lid, _BLACK, True),
            _Part(pl, [_rect(-W / 2 + 0.1, W / 2 - 0.1, 0.45, 0.95)], lid, (0.1, 0.1, 0.1, 0.0), True),
            _Part(pl, [_rect(-W / 2, W / 2, 0.95, H)], lid, box, True),
            _Part(pl, [_rect(-0.03, 0.03, 1.0, H - 0.1)], lid, (0.2, 0.2, 0.2, 0.0)),
            _Part(pl, [_rect(-W / 2 + 0.1, -W / 2 + 0.35, 0.6, 0.8), _rect(W / 2 - 0.35, W / 2 - 0.1, 0.6, 0.8)],
                  lid, (0.75, 0.06, 0.05, 1.0)),
        ]
    else:
        if H > cab:  # the cargo box rises behind the cab
            parts.append(_Part(_frontal(x, zn + 2.3), [_rect(-W / 2, W / 2, cab, H)], lid, box, True))
        parts += [
            _Part(pl, [_rect(-W / 2 + 0.1, -W / 2 + 0.6, 0, 0.55), _rect(W / 2 - 0.6, W / 2 - 0.1, 0, 0.55)],
                  lid, _BLACK, True),
            _Part(pl, [_rect(-W / 2, W / 2, 0.5, cab)], lid, cabc, True),
            _Part(pl, [_poly((-W / 2 + 0.12, 1.55), (W / 2 - 0.12, 1.55), (W / 2 - 0.18, cab - 0.15),
                             (-W / 2 + 0.18, cab - 0.15))], lid, _GLASS),
            _Part(pl, [_rect(-0.7, 0.7, 0.65, 1.3)], lid, (0.12, 0.12, 0.12, 0.0)),
            _Part(pl, [_rect(-W / 2 + 0.1, -W / 2 + 0.45, 0.75, 0.95), _rect(W / 2 - 0.45, W / 2 - 0.1, 0.75, 0.95)],
                  lid, (0.9, 0.9, 0.82, 1.5)),
        ]
    return parts


def _bus_parts(t: _Thing, view: "_View") -> list:
    """Bus: tall body with a band of windows; rear window or windscreen and destination display."""
    W, H, L = t.width, t.height, t.length
    c = t.colour + (0.0,)
    lid = _ID["bus"]
    x, zn = 0.0, -L / 2
    windows = [_rect(q, q + 1.25, 1.15, H - 0.4) for q in np.arange(2.0, L - 1.6, 1.45)]
    profile = [
        ([_rect(0, L, 0.3, H)], c, True),
        ([_rect(0, L, 0.3, 0.5)], (0.12, 0.12, 0.12, 0.0), False),
        ([_rect(0.4, 1.5, 0.4, H - 0.4)] + windows, _GLASS, False),
        ([_disc(2.6, 0.5, 0.5), _disc(L - 3.0, 0.5, 0.5)], _BLACK, True),
    ]
    parts = _vehicle_side(t, view.flank, lid, profile)
    if not view.front:
        return parts
    pl = _frontal(x, zn)
    parts += [
        _Part(pl, [_rect(-W / 2 + 0.1, -W / 2 + 0.45, 0, 0.35), _rect(W / 2 - 0.45, W / 2 - 0.1, 0, 0.35)],
              lid, _BLACK, True),
        _Part(pl, [_rect(-W / 2, W / 2, 0.3, H)], lid, c, True),
        _Part(pl, [_rect(-W / 2, W / 2, 0.3, 0.5)], lid, (0.12, 0.12, 0.12, 0.0)),
    ]
    if t.facing > 0:
        parts += [_Part(pl, [_rect(-W / 2 + 0.2, W / 2 - 0.2, 1.9, H - 0.35)], lid, _GLASS),
                  _Part(pl, [_rect(-W / 2 + 0.1, -W / 2 + 0.35, 0.6, 0.95),
                             _rect(W / 2 - 0.35, W / 2 - 0.1, 0.6, 0.95)],
                        lid, (0.75, 0.06, 0.05, 1.0))]
    else:
        parts += [_Part(pl, [_rect(-W / 2 + 0.1, W / 2 - 0.1, 1.0, H - 0.45)], lid, _GLASS),
                  _Part(pl, [_rect(-W / 2 + 0.3, W / 2 - 0.3, H - 0.4, H - 0.12)], lid, (0.9, 0.55, 0.1, 1.2)),
                  _Part(pl, [_rect(-W / 2 + 0.1, -W / 2 + 0.4, 0.55, 0.75),
                             _rect(W / 2 - 0.4, W / 2 - 0.1, 0.55, 0.75)],
                        lid, (0.9, 0.9, 0.82, 1.5))]
    return parts


def _hair_colour(t: _Thing) -> tuple:
    """Hair colour picked by the person's `extra` draw."""
    return ((0.05, 0.04, 0.03), (0.25, 0.15, 0.08), (0.65, 0.55, 0.3), (0.5, 0.5, 0.5))[int(t.extra * 4) % 4]


def _walker_parts(t: _Thing, view: "_View") -> list:
    """A pedestrian in a frontal plane: from front/back (variant 0) or in profile (variant 1)."""
    u = t.height / 1.75
    lid = _ID["person"]
    ph = view.pose
    top, legs = t.colour + (0.0,), t.colour2 + (0.0,)
    skin = t.colour3 + (0.0,)
    hair = _hair_colour(t) + (0.0,)
    pl = _frontal(0.0, 0.0)
    if t.variant == 1:
        d = 1.0 if t.vx >= 0 else -1.0
        sw = 0.3 * math.sin(ph)
        P = [
            ([_bar((0, 0.92), (d * sw, 0.03), 0.14), _bar((0, 0.92), (-d * sw, 0.03), 0.14)], legs, True),
            ([_poly((-0.12, 0.88), (0.12, 0.88), (0.13, 1.45), (-0.11, 1.47))], top, True),
            ([_bar((0, 1.42), (-d * 0.7 * sw, 0.88), 0.08)], top, False),
            ([_disc(d * 0.02, 1.63, 0.105, 10)], skin, True),
            ([_disc(-d * 0.015, 1.66, 0.1, 8)], hair, False),
        ]
    else:
        ll, lr = 0.06 * max(0.0, math.sin(ph)), 0.06 * max(0.0, -math.sin(ph))
        face = skin if t.facing < 0 else hair
        P = [
            ([_poly((-0.16, ll), (-0.03, ll), (-0.02, 0.93), (-0.17, 0.93)),
              _poly((0.03, lr), (0.16, lr), (0.17, 0.93), (0.02, 0.93))], legs, True),
            ([_rect(-0.17, -0.03, ll, ll + 0.06), _rect(0.03, 0.16, lr, lr + 0.06)], (0.06, 0.06, 0.06, 0.0), False),
            ([_poly((-0.2, 0.88), (0.2, 0.88), (0.23, 1.42), (0.17, 1.5), (-0.17, 1.5), (-0.23, 1.42))], top, True),
            ([_poly((-0.3, 0.86), (-0.22, 0.86), (-0.22, 1.42), (-0.3, 1.38)),
              _poly((0.22, 0.86), (0.3, 0.86), (0.3, 1.38), (0.22, 1.42))], top, True),
            ([_disc(-0.26, 0.84, 0.045, 6), _disc(0.26, 0.84, 0.045, 6)], skin, False),
            ([_rect(-0.05, 0.05, 1.47, 1.55)], skin, False),
            ([_disc(0, 1.63, 0.105, 10)], face, True),
        ]
        if t.facing < 0:
            P.append(([_poly(*[(0.11 * math.cos(a), 1.65 + 0.11 * math.sin(a)) for a in np.linspace(0, np.pi, 7)])],
                      hair, False))
        if t.extra > 0.75:  # a bag
            P.append(([_rect(0.2, 0.36, 0.95, 1.3)], legs, False))
    return [_Part(pl, [c * u for c in cs], lid, rgba, core) for cs, rgba, core in P]


def _rider_parts(t: _Thing, view: "_View") -> list:
    """Cyclist or motorcyclist: the two-wheeler in its own plane, the rider seated on it."""
    u = t.height / 1.75
    moto = t.kind == "motorcyclist"
    ph = view.pose
    hip = 0.85 if moto else 0.95
    top, legs = t.colour + (0.0,), t.colour2 + (0.0,) if moto else t.colour + (0.0,)
    head = (t.colour3 if moto or t.extra > 0.5 else _hair_colour(t)) + (0.0,)
    lid = _ID["rider"]
    pedal = 0.0 if moto else 0.12 * math.sin(ph)
    foot_y = 0.45 if moto else 0.35
    foot_x = 0.3 if moto else 0.14
    body = [
        ([_bar((-0.1, hip), (-foot_x, foot_y + pedal), 0.13), _bar((0.1, hip), (foot_x, foot_y - pedal), 0.13)],
         legs, True),
        ([_poly((-0.19, hip), (0.19, hip), (0.22, hip + 0.55), (-0.22, hip + 0.55))], top, True),
        ([_bar((-0.22, hip + 0.5), (-0.3, hip + 0.15), 0.08), _bar((0.22, hip + 0.5), (0.3, hip + 0.15), 0.08)],
         top, False),
        ([_disc(0, hip + 0.74, 0.14 if moto else 0.11, 10)], head, True),
    ]
    rider = [_Part(_frontal(0.0, 0.0), [c * u for c in cs], lid, rgba, core) for cs, rgba, core in body]
    side = _two_wheeler_parts(t, _lateral(0.0, -t.length / 2), moto, mirror=t.facing < 0)
    far, near = _end_on_parts(t, moto)
    return side + far + rider + near  # painter's order within the group


def _end_on_parts(t: _Thing, moto: bool) -> tuple:
    """A ridden two-wheeler's ends as seen along the street: (far parts, near parts). Moving away,
    the rear wheel is near and the handlebar far; coming toward us, the other way round."""
    lid = _ID["motorcycle"] if moto else _ID["bicycle"]
    half = t.length / 2
    wheel = _rect(-0.08, 0.08, 0.0, 0.6) if moto else _rect(-0.03, 0.03, 0.0, 0.7)
    bar = _rect(-0.4, 0.4, 1.02, 1.08) if moto else _rect(-0.3, 0.3, 0.97, 1.03)
    rear = [_Part(_frontal(0.0, -half if t.facing > 0 else half), [wheel], lid, _BLACK)]
    front = [_Part(_frontal(0.0, half - 0.3 if t.facing > 0 else -half), [wheel, bar], lid, _BLACK)]
    if moto:  # tail light at the back, head light at the front
        rear.append(_Part(rear[0].plane, [_rect(-0.08, 0.08, 0.78, 0.86)], lid, (0.75, 0.06, 0.05, 1.0)))
        front.append(_Part(front[0].plane, [_disc(0.0, 0.9, 0.09, 8)], lid, (0.9, 0.9, 0.82, 1.5)))
    return (front, rear) if t.facing > 0 else (rear, front)


def _two_wheeler_parts(t: _Thing, plane: tuple, moto: bool, mirror: bool = False) -> list:
    """Bicycle or motorcycle in side view in `plane`, s from 0 (rear) to its length (front);
    mirrored when it travels toward -s."""
    lid = _ID["motorcycle"] if moto else _ID["bicycle"]
    frame = (t.colour2 if t.kind in ("cyclist", "motorcyclist") else t.colour) + (0.0,)
    if moto:
        side = [
            ([_disc(0.35, 0.31, 0.31), _disc(1.65, 0.31, 0.31)], _BLACK, True),
            ([_poly((0.35, 0.45), (1.6, 0.45), (1.75, 0.75), (1.3, 1.0), (0.5, 0.95), (0.2, 0.7))], frame, True),
            ([_rect(0.75, 1.2, 0.3, 0.6)], (0.15, 0.15, 0.15, 0.0), False),
        ]
    else:
        r, r_in = 0.35, 0.285
        rear, front, crank, seat, head = (0.32, 0.34), (1.38, 0.34), (0.78, 0.32), (0.62, 0.85), (1.2, 0.88)
        side = [
            ([_disc(*rear, r, 14), _disc(*rear, r_in, 14)], _BLACK, True),
            ([_disc(*front, r, 14), _disc(*front, r_in, 14)], _BLACK, True),
            ([_bar(rear, crank, 0.05), _bar(crank, seat, 0.055), _bar(seat, head, 0.05), _bar(head, front, 0.05),
              _bar(rear, seat, 0.045), _bar(head, (1.15, 1.02), 0.05), _rect(0.5, 0.74, 0.84, 0.91),
              _disc(*crank, 0.1, 8)], frame, True),
        ]
    if mirror:
        side = [([np.column_stack((t.length - c[:, 0], c[:, 1])) for c in cs], rgba, core) for cs, rgba, core in side]
    return [_Part(plane, cs, lid, rgba, core) for cs, rgba, core in side]


def _pole_parts(t: _Thing, view: "_View") -> list:
    """Street light: mast, arm over the road, lamp head (all `pole` in Cityscapes)."""
    H, w, arm = t.height, t.width, t.extra
    pl = _frontal(0.0, 0.0)
    c = t.colour + (0.0,)
    lid = _ID["pole"]
    end = -t.side * arm
    return [
        _Part(pl, [_poly((-w / 2, 0), (w / 2, 0), (w * 0.35, H), (-w * 0.35, H)), _rect(-w * 0.8, w * 0.8, 0, 0.5)],
              lid, c, True),
        _Part(pl, [_bar((0, H - 0.3), (end, H), 0.08)], lid, c, True),
        _Part(pl, [_rect(end - 0.3, end + 0.3, H - 0.12, H + 0.05)], lid, c, True),
        _Part(pl, [_rect(end - 0.22, end + 0.22, H - 0.16, H - 0.1)], lid, (0.85, 0.85, 0.75, 1.0)),
    ]


def _sign_parts(t: _Thing, view: "_View") -> list:
    """Sign pole (`pole`) and plate (`traffic sign`); the back of a plate is plain grey."""
    H, size = t.height, t.extra
    pl = _frontal(0.0, 0.0)
    lid = _ID["traffic sign"]
    parts = [_Part(pl, [_rect(-0.035, 0.035, 0, H + 0.1)], _ID["pole"], (0.55, 0.56, 0.57, 0.0), True)]
    cy, r = H + size / 2, size / 2
    shape = t.variant
    if shape == 0:
        outline = _disc(0, cy, r, 16)
    elif shape == 1:
        outline = _poly((-r * 1.1, cy - r * 0.8), (r * 1.1, cy - r * 0.8), (0, cy + r * 1.1))
    elif shape == 2:
        outline = _rect(-r, r, cy - r, cy + r)
    elif shape == 3:
        outline = _rect(-r * 1.4, r * 1.4, cy - r * 0.7, cy + r * 0.7)
    else:
        a = np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8
        outline = np.stack((r * np.cos(a), cy + r * np.sin(a)), 1)
    if t.facing > 0:  # the back of the plate (still `traffic sign` in Cityscapes)
        return parts + [_Part(pl, [outline], lid, (0.45, 0.46, 0.47, 0.0), True)]
    inner = (outline - np.array((0.0, cy))) * 0.72 + np.array((0.0, cy))
    white = (0.88, 0.88, 0.86, 0.0)
    colour = t.colour + (0.0,)
    if shape in (0, 1) and t.colour[0] > 0.6 and t.colour[1] < 0.3:  # red ring, white field
        return parts + [_Part(pl, [outline], lid, colour, True), _Part(pl, [inner], lid, white)]
    return parts + [_Part(pl, [outline], lid, colour, True),
                    _Part(pl, [_rect(-r * 0.5, r * 0.5, cy - r * 0.12, cy + r * 0.12)], lid, white)]


def _traffic_light_parts(t: _Thing, view: "_View") -> list:
    """Pole (`pole`), housing and lamps (`traffic light`), one lamp lit; overhead on an arm."""
    H = t.height
    pl = _frontal(0.0, 0.0)
    lid = _ID["traffic light"]
    pole = _ID["pole"]
    grey = (0.25, 0.26, 0.26, 0.0)
    parts = [_Part(pl, [_rect(-0.06, 0.06, 0, H)], pole, grey, True)]
    cx, y0 = 0.0, H
    if t.extra > 0:  # overhead: arm over the road, the head hangs at its end
        cx, y0 = -t.side * t.extra, H + 1.1
        parts += [_Part(pl, [_rect(-0.08, 0.08, H, H + 2.3)], pole, grey, True),
                  _Part(pl, [_bar((0, H + 2.2), (cx, H + 2.2), 0.12)], pole, grey, True)]
    parts.append(_Part(pl, [_rect(cx - 0.23, cx + 0.23, y0 - 0.05, y0 + 1.05)], lid, (0.06, 0.06, 0.06, 0.0), True))
    if t.facing < 0:
        lamps = ((0.95, 0.15, 0.1), (0.95, 0.65, 0.1), (0.2, 0.9, 0.4))
        for i, col in enumerate(lamps):
            on = i == t.variant
            rgba = col + (2.0,) if on else tuple(0.12 * np.array(col) + 0.04) + (0.0,)
            parts.append(_Part(pl, [_disc(cx, y0 + 0.83 - 0.31 * i, 0.1, 10)], lid, rgba))
    return parts


def _tree_parts(t: _Thing, view: "_View") -> list:
    """Trunk and three overlapping canopy blobs of slightly different greens."""
    r, trunk = t.width / 2, t.extra
    pl = _frontal(0.0, 0.0)
    lid = _ID["vegetation"]
    c = np.array(t.colour)
    return [
        _Part(pl, [_poly((-0.13, 0), (0.13, 0), (0.08, trunk + 0.5), (-0.08, trunk + 0.5))], lid,
              t.colour2 + (0.0,), True),
        _Part(pl, [_blob(0, trunk + r * 0.9, r, r * 0.9, t.phase)], lid, tuple(c * 0.85) + (0.0,), True),
        _Part(pl, [_blob(-r * 0.4, trunk + r * 0.7, r * 0.6, r * 0.55, t.phase + 1.3, 14)], lid,
              tuple(c * 1.1) + (0.0,)),
        _Part(pl, [_blob(r * 0.35, trunk + r * 1.15, r * 0.55, r * 0.5, t.phase + 2.7, 14)], lid,
              tuple(np.minimum(c * 1.25, 1)) + (0.0,)),
    ]


def _bush_parts(t: _Thing, view: "_View") -> list:
    """A low irregular blob."""
    r = t.width / 2
    return [_Part(_frontal(0.0, 0.0), [_blob(0, r * 0.65, r, r * 0.7, t.phase, 16)], _ID["vegetation"],
                  t.colour + (0.0,), True)]


def _furniture_parts(t: _Thing, view: "_View") -> list:
    """Bin, bollard or advertising column: void (`static`) clutter."""
    w, h = t.width, t.height
    pl = _frontal(0.0, 0.0)
    lid = _ID["static"]
    parts = [_Part(pl, [_rect(-w / 2, w / 2, 0, h)], lid, t.colour + (0.0,), True)]
    if t.variant == 2:  # advertising column: lit poster
        parts.append(_Part(pl, [_rect(-w / 2 + 0.08, w / 2 - 0.08, 0.9, h - 0.3)], lid,
                           tuple(np.clip(np.array(t.colour)[::-1] + 0.3, 0, 1)) + (0.8,)))
    return parts


@dataclass(frozen=True)
class _View:
    """What an object looks like from the camera this frame (the key of its cached shape)."""
    tiny: bool  # details would be sub-pixel: silhouette parts only
    flank: int  # vehicles: +1 left flank visible, -1 right flank, 0 none
    front: bool  # vehicles: the face toward the camera is in front of it
    pose: float  # walking / pedalling phase, quantised (rad)


_POSES = 12  # animation phases per stride: shapes can be cached, motion still shows


def _view_of(t: _Thing, x: float, z: float, time_s: float, size_px: float) -> _View:
    """The view key of a thing at camera-relative (x, z): visible flank, front, animation pose, detail
    level."""
    flank, front, pose = 0, False, 0.0
    if t.kind in ("car", "truck", "bus"):
        flank = 1 if x - t.width / 2 > 0 else (-1 if x + t.width / 2 < 0 else 0)
        front = z - t.length / 2 > _NEAR
    elif t.kind in ("person", "cyclist", "motorcyclist"):
        steps = 1.8 if t.kind == "person" else 1.2  # strides / pedal turns per second
        moving = abs(t.vx) + abs(t.vz) > 0.1 and t.kind != "motorcyclist"
        ph = t.phase + (2 * np.pi * steps * time_s if moving else 0.0)
        pose = (round(ph / (2 * np.pi) * _POSES) % _POSES) * 2 * np.pi / _POSES
    return _View(size_px < 10.0, flank, front, pose)


def _thing_parts(t: _Thing, view: _View) -> list:
    """Parts of a thing in its own frame: origin at the footprint centre, camera-aligned axes."""
    if t.kind == "car":
        return _car_parts(t, view)
    if t.kind == "truck":
        return _truck_parts(t, view)
    if t.kind == "bus":
        return _bus_parts(t, view)
    if t.kind == "person":
        return _walker_parts(t, view)
    if t.kind in ("cyclist", "motorcyclist"):
        return _rider_parts(t, view)
    if t.kind in ("bicycle", "motorcycle"):
        yaw = t.yaw
        plane = (-0.5 * t.length * math.sin(yaw), -0.5 * t.length * math.cos(yaw), math.sin(yaw), math.cos(yaw))
        return _two_wheeler_parts(t, plane, t.kind == "motorcycle")
    if t.kind == "streetlight":
        return _pole_parts(t, view)
    if t.kind == "sign":
        return _sign_parts(t, view)
    if t.kind == "traffic_light":
        return _traffic_light_parts(t, view)
    if t.kind == "tree":
        return _tree_parts(t, view)
    if t.kind == "bush":
        return _bush_parts(t, view)
    if t.kind == "furniture":
        return _furniture_parts(t, view)
    raise ValueError(f"unknown thing kind {t.kind!r}")


@dataclass
class _Shape:
    """A thing's parts flattened for drawing: all contour points in the thing's frame."""
    x: np.ndarray  # [n] lateral offset of every contour point (m)
    up: np.ndarray  # [n] height
    z: np.ndarray  # [n] forward offset
    contours: list  # per part: [(start, end)] ranges into the point arrays
    planes: np.ndarray  # [P, 4] per part (x0, z0, dx, dz) in the thing's frame
    labels: np.ndarray  # [P] labelIds
    rgba: np.ndarray  # [P, 4] albedo + emissive gain


def _make_shape(parts: list) -> _Shape:
    """Flatten parts into one point array with per-part contour ranges."""
    xs, ups, zs, contours = [], [], [], []
    n = 0
    for part in parts:
        x0, z0, dx, dz = part.plane
        ranges = []
        for c in part.contours:
            xs.append(x0 + c[:, 0] * dx)
            zs.append(z0 + c[:, 0] * dz)
            ups.append(c[:, 1])
            ranges.append((n, n + len(c)))
            n += len(c)
        contours.append(ranges)
    return _Shape(np.concatenate(xs), np.concatenate(ups), np.concatenate(zs), contours,
                  np.array([p.plane for p in parts], np.float64), np.array([p.label for p in parts], np.uint8),
                  np.array([p.rgba for p in parts], np.float32))


def _shape_of(t: _Thing, view: _View) -> _Shape:
    """A thing's shape for a view, built once and cached on the thing."""
    if view not in t.cache:
        parts = _thing_parts(t, view)
        if view.tiny:
            parts = [p for p in parts if p.core]
        t.cache[view] = _make_shape(parts)
    return t.cache[view]


def _clip_near(cam: Camera, pts: np.ndarray) -> np.ndarray:
    """Clip a polygon of camera-relative (x, up, z) points to camera depth >= _NEAR
    (Sutherland-Hodgman against one plane; depth is linear in the point)."""
    cp, sp = math.cos(cam.pitch), math.sin(cam.pitch)
    zc = pts[:, 2] * cp + (cam.mount_height - pts[:, 1]) * sp - _NEAR
    out = []
    n = len(pts)
    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        da, db = zc[i], zc[(i + 1) % n]
        if da >= 0:
            out.append(a)
        if (da >= 0) != (db >= 0):
            out.append(a + (b - a) * (da / (da - db)))
    return np.array(out) if len(out) >= 3 else np.zeros((0, 3))


def _fixed_point(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> int32 with 4 fractional bits (cv2 shift=4): sub-pixel motion shows.
    Points behind the camera are replaced by clipping, but must not overflow meanwhile."""
    return np.clip(np.round(np.stack((u, v), 1) * 16.0), -2 ** 30, 2 ** 30).astype(np.int32)


def _ground_shadows(t: _Thing, sun: tuple | None) -> list:
    """Shadow polygons on the ground in the thing's frame (cached): [(points [k, (x, z)], value)].
    A contact shadow under vehicles in any weather (ambient occlusion, value 0.45 of the ambient
    light) and, in sunshine, the cast shadow (no direct sun: 0)."""
    if "shadows" in t.cache:
        return t.cache["shadows"]
    hw, hl = (0.2, 0.2) if t.kind in ("tree", "bush") else (t.width / 2, t.length / 2)
    foot = np.array(((-hw, -hl), (hw, -hl), (hw, hl), (-hw, hl)))
    polys = []
    if t.kind in ("car", "truck", "bus"):
        polys.append((foot * (1 + 0.2 / hw, 1 + 0.4 / hl), "ao"))
    if sun is not None:
        elev, az = sun
        away = -np.array((math.sin(az), math.cos(az))) / max(math.tan(elev), 0.08)  # per metre of height
        if t.kind == "tree":  # the canopy's shadow, offset from the trunk
            top = t.extra + t.width * 0.9
            pts = _disc(0, 0, t.width / 2, 12) + away * top
        else:
            top = t.height + (t.extra if t.kind == "traffic_light" and t.extra > 0 else 0.0)
            pts = np.vstack((foot, foot + away * top))
        polys.append((cv2.convexHull(pts.astype(np.float32))[:, 0].astype(np.float64), "sun"))
    t.cache["shadows"] = polys
    return polys


def _draw_shadows(cv: _Canvas, cam: Camera, placed: list, sun: tuple | None) -> None:
    """Fill the ground shadows of all placed things [(thing, x, z)] into cv.ao / cv.shadow."""
    for t, x, z in placed:
        for pts, kind in _ground_shadows(t, sun):
            gx, gz = pts[:, 0] + x, pts[:, 1] + z
            if gz.max() < 1.0:
                continue
            ground = np.column_stack((gx, np.zeros(len(gx)), gz))
            if gz.min() < 1.0:  # beside the camera: keep the part in front of it
                ground = _clip_near(cam, ground)
                if not len(ground):
                    continue
            u, v, _ = _project(cam, ground[:, 0], ground[:, 1], ground[:, 2])
            target, value = (cv.ao, 0.45) if kind == "ao" else (cv.shadow, 0.0)
            cv2.fillPoly(target, [_fixed_point(u, v)], value, cv2.LINE_8, 4)


def _position(t: _Thing, time_s: float, cam_x: float, cam_z: float) -> tuple:
    """Camera-relative footprint centre of a thing at time_s."""
    return t.x + t.vx * time_s - cam_x, t.z + t.vz * time_s - cam_z


def _visible_things(world: _World, cam: Camera, cam_x: float, cam_z: float, time_s: float) -> list:
    """[(thing, x, z, size_px)] in view and bigger than a pixel, sorted far to near."""
    visible = []
    for t in world.things:
        x, z = _position(t, time_s, cam_x, cam_z)
        near = z - t.length / 2
        if z + t.length / 2 < _NEAR or near > 220.0:
            continue
        depth = max(near, _NEAR)
        size_px = cam.fy * t.height / depth
        if size_px < 1.5:  # would cover a pixel or less
            continue
        reach = t.extra if t.kind in ("streetlight", "traffic_light") else 0.0  # arms over the road
        if max(abs(x) - t.width / 2 - reach, 0.0) / depth * cam.fx > cam.width * 1.5:
            continue  # far outside the field of view
        visible.append((near, t, x, z, size_px))
    visible.sort(key=lambda e: -e[0])
    return [(t, x, z, size_px) for _, t, x, z, size_px in visible]


def _draw_things(world: _World, cam: Camera, cv: _Canvas, cam_x: float, cam_z: float, time_s: float,
                 sun: tuple | None) -> None:
    """Painter's algorithm: visible things far to near, each part filled with its own id into
    cv.part_id; then label, albedo and plane (n_x, n_z, c, sun cosine) are looked up per pixel.
    Projection and the part table are computed for all things of the frame at once."""
    visible = _visible_things(world, cam, cam_x, cam_z, time_s)
    if not visible:
        return
    _draw_shadows(cv, cam, [(t, x, z) for t, x, z, _ in visible], sun)
    shapes = [_shape_of(t, _view_of(t, x, z, time_s, size_px)) for t, x, z, size_px in visible]
    xs = np.array([x for _, x, _, _ in visible])
    zs = np.array([z for _, _, z, _ in visible])
    n_points = [len(sh.x) for sh in shapes]
    n_parts = [len(sh.labels) for sh in shapes]
    px = np.concatenate([sh.x for sh in shapes]) + np.repeat(xs, n_points)  # [n] camera-relative
    pz = np.concatenate([sh.z for sh in shapes]) + np.repeat(zs, n_points)
    up = np.concatenate([sh.up for sh in shapes])
    u, v, zc = _project(cam, px, up, pz)
    fixed = _fixed_point(u, v)
    starts = np.cumsum([0] + n_points[:-1])
    behind = np.maximum.reduceat(zc < _NEAR, starts)  # [things] some point behind the near plane

    part = 1  # part ids start at 1: 0 is the static scene
    for k, sh in enumerate(shapes):
        base = starts[k]
        for ranges in sh.contours:
            polys = []
            for i, j in ranges:
                i, j = base + i, base + j
                if behind[k] and zc[i:j].min() < _NEAR:
                    kept = _clip_near(cam, np.column_stack((px[i:j], up[i:j], pz[i:j])))
                    if len(kept):
                        polys.append(_fixed_point(*_project(cam, kept[:, 0], kept[:, 1], kept[:, 2])[:2]))
                else:
                    polys.append(fixed[i:j])
            if polys:
                cv2.fillPoly(cv.part_id, polys, part, cv2.LINE_8, 4)
            part += 1
    planes = np.concatenate([sh.planes for sh in shapes])  # [parts, (x0, z0, dx, dz)] in own frames
    _resolve_parts(cv, np.concatenate([sh.labels for sh in shapes]), np.concatenate([sh.rgba for sh in shapes]),
                   planes, np.repeat(xs, n_parts), np.repeat(zs, n_parts), world.sun)


def _resolve_parts(cv: _Canvas, labels: np.ndarray, rgba: np.ndarray, planes: np.ndarray,
                   x: np.ndarray, z: np.ndarray, sun: tuple) -> None:
    """Label, albedo and plane (n_x, n_z, c, sun cosine) of every object pixel from its part id."""
    x0, z0, dx, dz = planes[:, 0] + x, planes[:, 1] + z, planes[:, 2], planes[:, 3]
    nx, nz = dz, -dx  # plane: nx * X + nz * Z = c (camera-relative)
    c = nx * x0 + nz * z0
    toward = np.where(c > 0, -1.0, 1.0)  # the normal oriented toward the camera, for the sun cosine
    sun_cos = math.cos(sun[0]) * toward * (nx * math.sin(sun[1]) + nz * math.cos(sun[1]))
    ids = cv.part_id.reshape(-1)
    obj = np.flatnonzero(ids)
    if not obj.size:
        return
    sel = ids[obj] - 1
    cv.label.reshape(-1)[obj] = labels[sel]
    cv.albedo.reshape(-1, 3)[obj] = rgba[sel, :3]
    cv.emissive.reshape(-1)[obj] = rgba[sel, 3]
    cv.plane.reshape(-1, 4)[obj] = np.stack((nx, nz, c, sun_cos), 1).astype(np.float32)[sel]


# ----------------------------------------------------------------------------- light and weather
@dataclass(frozen=True)
class _Light:
    ambient: tuple  # sky light on every surface
    sun: tuple  # direct sun colour; (0, 0, 0) = no cast shadows (overcast, rain, fog, night)
    emissive_gain: float  # how much lamps, lit windows and car lights glow
    lamps: float  # street-light intensity
    headlights: float  # ego headlights on the road ahead
    sky_horizon: tuple
    sky_zenith: tuple
    clouds: tuple
    fog_colour: tuple
    haze_m: float  # visibility of clear-air haze (aerial perspective)
    exposure: float  # auto-exposure target (mean brightness)


def _lighting(world: _World) -> _Light:
    """Light, sky and fog colours for the drive log's weather and time of day."""
    tod, w = world.time_of_day, world.weather
    if tod == "night":
        return _Light((0.03, 0.035, 0.05), (0, 0, 0), 1.6, 1.4, 1.2, (0.1, 0.08, 0.07), (0.01, 0.015, 0.03),
                      (0.07, 0.07, 0.08), (0.06, 0.06, 0.065), 900.0, 0.2)
    dim = {"clear": 1.0, "overcast": 0.9, "rain": 0.7, "fog": 0.85}[w]
    if tod == "dusk":
        sun = (0.85, 0.55, 0.3) if w == "clear" else (0, 0, 0)
        amb = tuple(np.array((0.3, 0.28, 0.34) if w == "clear" else (0.42, 0.41, 0.46)) * dim)
        if w == "clear":
            return _Light(amb, sun, 0.9, 0.35, 0.3, (0.95, 0.62, 0.38), (0.25, 0.3, 0.55), (0.85, 0.55, 0.45),
                          (0.5, 0.45, 0.45), 1500.0, 0.3)
        grey = tuple(np.array((0.62, 0.52, 0.5)) * dim)
        return _Light(amb, sun, 0.9, 0.35, 0.3, grey, tuple(np.array((0.36, 0.36, 0.42)) * dim), grey,
                      (0.5, 0.45, 0.45), 900.0, 0.3)
    if w == "clear":
        return _Light((0.42, 0.45, 0.52), (0.82, 0.78, 0.7), 0.3, 0.0, 0.0, (0.78, 0.84, 0.92), (0.3, 0.5, 0.85),
                      (0.95, 0.95, 0.97), (0.78, 0.8, 0.84), 2500.0, 0.42)
    amb = tuple(np.array((0.86, 0.87, 0.9)) * dim)
    grey = tuple(np.array((0.82, 0.83, 0.85)) * dim)
    return _Light(amb, (0, 0, 0), 0.4, 0.0, 0.15 if w == "rain" else 0.0, grey,
                  tuple(np.array((0.64, 0.66, 0.7)) * dim), grey, (0.76, 0.77, 0.8), 900.0, 0.4)


def _sky_image(world: _World, rays: _Rays, tex: _Textures, light: _Light) -> np.ndarray:
    """Sky at infinity (fixed per drive log: the camera does not rotate), float32 [H, W, 3]."""
    norm = np.sqrt(rays.fwd ** 2 + rays.down ** 2)
    elev = np.clip(-rays.down / norm, 0.0, 1.0)  # [H] sine of the elevation
    t = (np.clip(elev / 0.45, 0, 1) ** 0.7)[:, None, None]
    grad = np.array(light.sky_horizon, np.float32) * (1 - t) + np.array(light.sky_zenith, np.float32) * t
    k = 1.0 / np.maximum(-rays.down, 0.02)  # distance to a cloud layer per unit height
    cx = rays.xd[None, :] * k[:, None] * 30.0 + world.tex_offset[0]
    cz = np.broadcast_to((rays.fwd * k * 30.0)[:, None], cx.shape) + world.tex_offset[1]
    c = tex.sample(tex.coarse, cx.ravel(), cz.ravel()).reshape(cx.shape)
    if world.weather == "clear":
        cover = np.clip((c - 0.3) / 0.9, 0, 1) * 0.85
    else:
        cover = 0.55 + 0.12 * c
    cover = (cover * np.clip(elev / 0.02, 0, 1)[:, None])[..., None]
    return (grad * (1 - cover) + np.array(light.clouds, np.float32) * cover).astype(np.float32)


def _facade_sun_visibility(world: _World, cam_x: float, cam_z: float, xw, up, zw) -> np.ndarray:
    """1 where the sun reaches a point, 0 where the facades / tree lines on the sun's side block it.
    Points march toward the sun until they reach each line on that side and compare heights."""
    elev, az = world.sun
    sx, sz = math.sin(az), math.cos(az)
    if abs(sx) < 0.05:
        return np.ones(xw.shape, np.float32)
    side = world.sides[1] if sx > 0 else world.sides[0]
    tan_e = math.tan(elev)
    tb = world.blocks
    shadow = np.zeros(xw.shape, bool)
    for line, front in ((side.front, True), (side.back, False)):
        p = side.sign * line.dist - cam_x
        reach = (p - xw) / sx  # horizontal distance toward the sun until the line
        ok = (reach > 0.05) & np.isfinite(reach)
        zhit = np.where(ok, zw + cam_z + reach * sz, 0.0)
        blk = line.blocks(zhit)
        top = tb["top"][blk]
        if front:
            top = np.where((tb["kind"][blk] == _BUILDING) | (tb["kind"][blk] == _HEDGE), top, 0.0)
        shadow |= ok & (top > up + reach * tan_e)
    return (~shadow).astype(np.float32)


def _light_map(world: _World, cam: Camera, rays: _Rays, cv: _Canvas, light: _Light, depth: np.ndarray,
               sky: np.ndarray, cam_x: float, cam_z: float) -> np.ndarray:
    """Irradiance [H, W, 3]: ambient (with contact shadows), sun with cast shadows, street lights,
    ego headlights."""
    lm = _tint(cv.ao, light.ambient)
    if not (any(light.sun) or light.lamps > 0 or light.headlights > 0):
        return lm
    d = np.where(sky, np.float32(1e4), depth)
    xw = rays.xd32[None, :] * d  # camera-relative world position of every pixel
    zw = rays.fwd32[:, None] * d
    up = np.float32(cam.mount_height) - rays.down32[:, None] * d
    if any(light.sun):
        ground = (cv.part_id == 0) & (cv.surf >= _M_ROAD) & (cv.surf <= _M_TERRAIN)
        soft = cv2.GaussianBlur(cv.shadow, (0, 0), max(0.6, cam.width / 700))  # penumbra
        vis = _facade_sun_visibility(world, cam_x, cam_z, xw, up, zw) * np.where(ground, soft, 1.0)
        lm += _tint(vis * np.maximum(cv.plane[..., 3], 0), light.sun)
    if light.lamps > 0:
        acc = np.zeros(d.shape, np.float32)
        for lx, ly, lz in world.lamps:
            lx, lz = lx - cam_x, lz - cam_z
            if not -15.0 < lz < 90.0:
                continue
            d2 = (xw - lx) ** 2 + (up - ly) ** 2 + (zw - lz) ** 2
            acc += 40.0 / (40.0 + d2)  # inverse-square falloff, finite at the lamp
        lm += _tint(acc * np.float32(light.lamps), (1.0, 0.78, 0.5))
    if light.headlights > 0:
        beam = np.exp(-(xw / (1.0 + 0.15 * np.maximum(zw, 0))) ** 2) / (1.0 + (zw / 18.0) ** 2)
        beam = np.where((zw > 1.5) & (up < 2.0), beam, 0.0).astype(np.float32)
        lm += _tint(beam * np.float32(light.headlights), (1.0, 0.97, 0.9))
    return lm


def _rain_streaks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Motion-blurred rain drops: many short slanted lines, float32 [H, W] in [0, 1]."""
    n = int(0.004 * h * w)
    slant = rng.uniform(-0.3, 0.3)
    length = rng.uniform(0.03, 0.08, n) * h
    x0 = rng.uniform(-0.1 * w, 1.1 * w, n)
    y0 = rng.uniform(-0.1 * h, h, n)
    segs = np.stack((np.stack((x0, y0), 1), np.stack((x0 + slant * length, y0 + length), 1)), 1)
    layer = np.zeros((h, w), np.float32)
    cv2.polylines(layer, list(np.round(segs * 16).astype(np.int32)), False, 1.0,
                  max(1, round(w / 700)), cv2.LINE_AA, 4)
    return cv2.GaussianBlur(layer, (0, 0), max(0.5, w / 1000))


def _depth_map(cv: _Canvas, rays: _Rays) -> np.ndarray:
    """Camera depth per pixel (inf on sky): static depth, or c / (n_x X + n_z Z) on object planes."""
    depth = cv.depth.copy()
    obj = np.flatnonzero(cv.part_id)
    if obj.size:
        w = cv.depth.shape[1]
        pl = cv.plane.reshape(-1, 4)[obj]
        den = pl[:, 0] * rays.xd32[obj % w] + pl[:, 1] * rays.fwd32[obj // w]
        den = np.where(np.abs(den) > 1e-6, den, np.float32(1e-6))
        depth.reshape(-1)[obj] = np.clip(pl[:, 2] / den, _NEAR * 0.5, 1e5)
    return depth


def _compose(world: _World, cam: Camera, rays: _Rays, cv: _Canvas, light: _Light, sky_img: np.ndarray,
             optics: "_Optics", cam_x: float, cam_z: float, rng: np.random.Generator, cfg: SynthConfig):
    """Buffers -> (RGB uint8 [H, W, 3], disparity float32 [H, W], 0 on sky)."""
    depth = _depth_map(cv, rays)
    sky = cv.label == _ID["sky"]
    disparity = (np.float32(cam.baseline * cam.fx) / depth).astype(np.float32)  # 0 where depth = inf
    # the Cityscapes encoding has steps of 1/256 px: keep pixels kilometres away valid (not sky)
    disparity = np.where(sky, np.float32(0), np.maximum(disparity, np.float32(1 / 256)))

    rgb = _light_map(world, cam, rays, cv, light, depth, sky, cam_x, cam_z)
    rgb *= cv.albedo
    lit = np.flatnonzero(cv.emissive)
    if lit.size:  # lamps, car lights, lit windows
        glow = cv.albedo.reshape(-1, 3)[lit] * (cv.emissive.reshape(-1)[lit, None] * np.float32(light.emissive_gain))
        rgb.reshape(-1, 3)[lit] += glow
        if light.emissive_gain > 0.5:  # bloom
            halo = np.zeros_like(rgb)
            halo.reshape(-1, 3)[lit] = glow
            rgb += 0.7 * cv2.GaussianBlur(halo, (0, 0), cam.width / 90)
    np.copyto(rgb, sky_img, where=sky[..., None])
    fog = world.weather == "fog"
    fog_colour = np.array(light.fog_colour if fog else light.sky_horizon, np.float32)
    through = np.where(sky, np.float32(np.inf if fog else 0.0), depth)
    trans = np.exp(through * np.float32(-3.0 / (world.fog_visibility if fog else light.haze_m)))
    rgb *= _rgb3(trans)
    rgb += _tint(1 - trans, fog_colour)
    if world.weather == "rain":
        rgb *= 0.92
        rgb += _rgb3(_rain_streaks(rng, cam.height, cam.width) * np.float32(0.12 + 0.25 * light.exposure))
    return _camera_response(rgb, world, rng, cfg, light, optics), disparity


@dataclass
class _Optics:
    """Per drive log camera properties: white balance x vignetting, and a noise pool."""
    gain: np.ndarray  # [H, W, 3]
    noise: np.ndarray | None  # [H + 64, W + 64, 3] standard normal; frames take shifted windows


_NOISE: dict[tuple, np.ndarray] = {}  # per process: (seed, H, W) -> noise pool


def _optics(world: _World, cam: Camera, cfg: SynthConfig) -> _Optics:
    """Per drive log optics: white balance x vignetting, and the shared noise pool."""
    h, w = cam.height, cam.width
    yy = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (h / 2)
    xx = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (w / 2)
    vignette = 1 - 0.06 * min(cfg.difficulty, 1.5) * (xx ** 2 + yy ** 2)
    noise = None
    if cfg.sensor_noise > 0 and cfg.difficulty > 0:
        key = (cfg.seed, h, w)
        if key not in _NOISE:
            _NOISE.clear()  # one size at a time: the pool is large at full resolution
            _NOISE[key] = _rng(cfg.seed, 2000).standard_normal((h + 64, w + 64, 3), dtype=np.float32)
        noise = _NOISE[key]
    return _Optics(vignette[..., None] * world.wb, noise)


def _camera_response(rgb: np.ndarray, world: _World, rng: np.random.Generator, cfg: SynthConfig,
                     light: _Light, optics: _Optics) -> np.ndarray:
    """Optics and sensor: white balance, vignetting, blur, noise, auto exposure, JPEG."""
    d = cfg.difficulty
    h, w = rgb.shape[:2]
    rgb *= optics.gain
    sigma = cfg.blur_sigma * (w / 512) * d * (1.4 if world.weather == "rain" else 1.0)
    if sigma > 0.05:
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
    gain = float(np.clip(light.exposure / max(float(rgb[::4, ::4].mean()), 1e-4), 0.7, 4.0))
    gain *= float(np.exp(rng.normal(0, 0.08 * d)))
    oy, ox = (int(v) for v in rng.integers(0, 64, 2))
    if optics.noise is not None:  # read noise + shot noise (grows with the signal), before the gain
        s = np.float32(cfg.sensor_noise * d)
        noise = rgb * (1.5 * s) + s
        noise *= optics.noise[oy:oy + h, ox:ox + w]
        rgb += noise
    rgb *= np.float32(gain * 255.0)
    rgb += 0.5
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if cfg.jpeg_quality > 0 and d > 0:
        q = int(np.clip(cfg.jpeg_quality - 12 * (d - 1) + rng.integers(-8, 9), 20, 98))
        out = imageio.decode_image(imageio.encode_jpeg(out, quality=q), where="jpeg round trip")
    return out


# ---------------------------------------------------------------------------------------- frames
_TEXTURES: dict[int, _Textures] = {}  # per process and seed: the tiles take ~10 ms to make


def _textures(seed: int) -> _Textures:
    """The noise tiles of a seed, made once per process."""
    if seed not in _TEXTURES:
        _TEXTURES[seed] = _Textures(seed)
    return _TEXTURES[seed]


def _ego_pose(world: _World, time_s: float) -> tuple:
    """Camera (x, z) in the world at time_s: constant speed forward, slow lateral sway."""
    amp, period, phase = world.sway
    return amp * math.sin(2 * math.pi * time_s / period + phase), world.speed * time_s


def render_sequence(cfg: SynthConfig, split: str, index: int):
    """Render one drive log in memory (generate() writes these to disk).

    Yields, per frame: (frame index, RGB uint8 [H, W, 3], Cityscapes labelIds uint8 [H, W],
    disparity float32 [H, W] (0 on sky), camera dict in the Cityscapes camera JSON format plus a
    "synth" record of city, weather, time of day and ego pose). Deterministic in (cfg, split, index).

    Raises:
        InvalidInput: an invalid config, an unknown split or a negative index.
    """
    _validate(cfg)
    if split not in SPLITS or index < 0:
        raise InvalidInput(f"expected a split in {list(SPLITS)} and an index >= 0, got {split!r}, {index}")
    world = _build_world(cfg, split, index)
    cam = Camera.cityscapes_like(cfg.height, cfg.width)
    rays = _Rays(cam)
    tex = _textures(cfg.seed)
    light = _lighting(world)
    sky_img = _sky_image(world, rays, tex, light)
    optics = _optics(world, cam, cfg)
    sun = world.sun if any(light.sun) else None
    for k in range(cfg.frames_per_sequence):
        time_s = k * cfg.frame_interval_s
        cam_x, cam_z = _ego_pose(world, time_s)
        rng = _rng(cfg.seed, SPLITS.index(split), index, k + 1)
        cv = _Canvas(cam.height, cam.width)
        _ray_cast_ground(world, cam, rays, cam_x, cam_z, cv)
        _ray_cast_planes(world, cam, rays, cam_x, cam_z, cv)
        cv.label[:] = _SURF_LABEL[cv.surf]
        _draw_things(world, cam, cv, cam_x, cam_z, time_s, sun)  # objects first: shade only what they leave
        _shade_static(world, cam, rays, cv, tex, cfg.difficulty, cam_x, cam_z)
        rgb, disparity = _compose(world, cam, rays, cv, light, sky_img, optics, cam_x, cam_z, rng, cfg)
        meta = cam.to_json()
        meta["synth"] = {
            "city": world.city, "sequence": index, "frame": k, "time_s": round(time_s, 6),
            "weather": world.weather, "time_of_day": world.time_of_day,
            "fog_visibility_m": round(world.fog_visibility, 3) if math.isfinite(world.fog_visibility) else None,
            "sun_elevation_deg": round(math.degrees(world.sun[0]), 3),
            "ego_speed_mps": round(world.speed, 4),
            "ego_position_m": {"x": round(cam_x, 4), "z": round(cam_z, 4)},
        }
        yield k, rgb, cv.label, disparity, meta


def _write_sequence(job: tuple) -> tuple:
    """Render and write one drive log into `root`; returns (split, labelId pixel counts [256])."""
    cfg, root, split, index = job
    counts = np.zeros(256, np.int64)
    city = CITIES[split][index % len(CITIES[split])]
    dirs = {kind: Path(root) / kind / split / city for kind in ("leftImg8bit", "gtFine", "disparity", "camera")}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)
    for k, rgb, label, disparity, meta in render_sequence(cfg, split, index):
        stem = f"{city}_{index:06d}_{k:06d}"
        # Plain writes: the whole dataset is built in a temporary folder that is renamed at the end,
        # so per-file atomic writes (an fsync each) would only slow generation down.
        (dirs["leftImg8bit"] / f"{stem}_leftImg8bit.png").write_bytes(imageio.encode_png(rgb))
        (dirs["gtFine"] / f"{stem}_gtFine_labelIds.png").write_bytes(imageio.encode_png(label))
        (dirs["gtFine"] / f"{stem}_gtFine_labelTrainIds.png").write_bytes(
            imageio.encode_png(label_ids_to_train_ids(label, where=stem)))
        (dirs["disparity"] / f"{stem}_disparity.png").write_bytes(
            imageio.encode_png(imageio.encode_disparity(disparity)))
        (dirs["camera"] / f"{stem}_camera.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        counts += np.bincount(label.ravel(), minlength=256)
    return split, counts


# ------------------------------------------------------------------------------------ dataset API
def _validate(cfg: SynthConfig) -> None:
    """Raise InvalidInput for a config that cannot be generated, before anything is written."""
    if not (32 <= cfg.height <= 8192 and 32 <= cfg.width <= 8192):
        raise InvalidInput(f"image size must be 32..8192 pixels per side, got {cfg.height}x{cfg.width}")
    counts = (cfg.train_sequences, cfg.val_sequences, cfg.test_sequences)
    if min(counts) < 0 or sum(counts) == 0:
        raise InvalidInput(f"sequence counts must be >= 0 with at least one sequence, got {counts}")
    if cfg.frames_per_sequence < 1:
        raise InvalidInput(f"frames per sequence must be >= 1, got {cfg.frames_per_sequence}")
    if not 0.0 <= cfg.difficulty <= 2.0:
        raise InvalidInput(f"difficulty must be in [0, 2], got {cfg.difficulty}")
    if cfg.frame_interval_s < 0 or cfg.traffic_density < 0 or cfg.sensor_noise < 0 or cfg.blur_sigma < 0:
        raise InvalidInput("frame interval, traffic density, sensor noise and blur must be >= 0")
    if not 0 <= cfg.jpeg_quality <= 100:
        raise InvalidInput(f"jpeg quality must be in 0..100 (0 = off), got {cfg.jpeg_quality}")
    for name, weights, allowed in (("weather", cfg.weather_weights, WEATHERS),
                                   ("time of day", cfg.time_weights, TIMES_OF_DAY)):
        unknown = set(weights) - set(allowed)
        if unknown:
            raise InvalidInput(f"unknown {name} {sorted(unknown)}; expected some of {list(allowed)}")
        if any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
            raise InvalidInput(f"{name} weights must be >= 0 with a positive sum, got {weights}")


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an existing `out` that is a file, or not empty without overwrite, or not ours."""
    if not out.exists():
        return
    if not out.is_dir():
        raise InvalidInput(f"{out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise InvalidInput(f"{out}: exists and is not empty; pass --overwrite to replace it")
    if not (out / SIDECAR).is_file():
        raise InvalidInput(f"{out}: refusing to overwrite a folder that is not a synthetic dataset "
                           f"(no {SIDECAR}); remove it yourself or choose another --out")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to `out`, replacing what _check_destination allowed."""
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "data")
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / "data", out)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _quiet_worker() -> None:
    """Pool workers leave Ctrl-C to the parent (which terminates them) and die on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def generate(cfg: SynthConfig, out: Path, *, overwrite: bool = False, workers: int = 1) -> Path:
    """Write a synthetic dataset in the Cityscapes layout to `out`.

    Everything is written into a temporary folder beside `out`, which is renamed to `out` only when
    complete; on any error or interrupt it is removed, so `out` is either absent, untouched or whole.

    Args:
        cfg: what to generate; the files depend on nothing else (byte-identical for one cfg).
        out: destination folder; must be absent or empty unless `overwrite`.
        overwrite: replace an existing dataset that this generator wrote (it holds synth.json).
        workers: processes rendering sequences in parallel (output does not depend on it).

    Returns:
        `out`.

    Raises:
        InvalidInput: an invalid config, or `out` exists and may not be replaced.
    """
    _validate(cfg)
    if workers < 1:
        raise InvalidInput(f"workers must be >= 1, got {workers}")
    out = Path(out)
    _check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    start = time.perf_counter()
    try:
        n = {"train": cfg.train_sequences, "val": cfg.val_sequences, "test": cfg.test_sequences}
        jobs = [(cfg, str(tmp), split, i) for split in SPLITS for i in range(n[split])]
        counts = {split: np.zeros(256, np.int64) for split in SPLITS}
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("fork").Pool(min(workers, len(jobs)), _quiet_worker) as pool:
                results = list(pool.imap(_write_sequence, jobs))
        else:
            results = map(_write_sequence, jobs)
        for split, c in results:
            counts[split] += c
        _write_sidecar(tmp, cfg, counts)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    frames = sum(n.values()) * cfg.frames_per_sequence
    took = time.perf_counter() - start
    log.info("wrote %d frames (%dx%d) to %s in %.1f s (%.1f frames/s)", frames, cfg.height, cfg.width,
             out, took, frames / max(took, 1e-9))
    return out


def _write_sidecar(root: Path, cfg: SynthConfig, counts: dict) -> None:
    """synth.json: generator, config, camera, cities and labelId pixel counts per split."""
    names = {i: label.name for i, label in id2label.items() if i >= 0}
    record = {
        "generator": "segxal.data.synth", "format_version": FORMAT_VERSION, "config": asdict(cfg),
        "camera": Camera.cityscapes_like(cfg.height, cfg.width).to_json(),
        "cities": {s: list(CITIES[s]) for s in SPLITS},
        "label_pixel_counts": {s: {names[i]: int(c[i]) for i in np.nonzero(c)[0]} for s, c in counts.items()},
    }
    (root / SIDECAR).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------- CLI
def _parse_weights(text: str, allowed: tuple, what: str) -> dict[str, float]:
    """'clear=1,fog=0.5' -> {'clear': 1.0, 'fog': 0.5}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise InvalidInput(f"--{what}: expected name=weight items, got {item!r}") from None
        if name.strip() not in allowed:
            raise InvalidInput(f"--{what}: unknown {name.strip()!r}; expected some of {list(allowed)}")
    if not out:
        raise InvalidInput(f"--{what}: no weights given")
    return out


def _format_weights(weights: dict[str, float]) -> str:
    return ",".join(f"{name}={value:g}" for name, value in weights.items())


def _cmd_synth(args: argparse.Namespace) -> int:
    """`segxal data synth`: build the config from the flags, generate, print the folder."""
    cfg = SynthConfig(
        height=args.height, width=args.width, train_sequences=args.train_sequences,
        val_sequences=args.val_sequences, test_sequences=args.test_sequences,
        frames_per_sequence=args.frames_per_sequence, seed=args.seed, frame_interval_s=args.frame_interval,
        difficulty=args.difficulty, traffic_density=args.traffic_density,
        weather_weights=_parse_weights(args.weather, WEATHERS, "weather"),
        time_weights=_parse_weights(args.time_of_day, TIMES_OF_DAY, "time-of-day"),
        sensor_noise=args.sensor_noise, blur_sigma=args.blur_sigma, jpeg_quality=args.jpeg_quality)
    # SIGTERM (a CI timeout, `kill`) should clean up like Ctrl-C: raise, so that generate() removes
    # its temporary folder
    def _terminate(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        out = generate(cfg, args.out, overwrite=args.overwrite, workers=args.workers)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(out)
    return 0


def register_cli(subparsers) -> None:
    """Add `segxal data synth`."""
    data = subparsers.add_parser("data", help="datasets", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    d = SynthConfig()
    p = data_sub.add_parser(
        "synth", help="generate a synthetic driving-scene dataset (Cityscapes layout)",
        description="Generate procedural driving scenes with labels, disparity and camera files in the "
                    "Cityscapes layout (leftImg8bit/, gtFine/, disparity/, camera/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="destination folder (absent or empty)")
    p.add_argument("--height", type=int, default=d.height, help="image height (px)")
    p.add_argument("--width", type=int, default=d.width, help="image width (px)")
    p.add_argument("--train-sequences", type=int, default=d.train_sequences, help="drive logs in train")
    p.add_argument("--val-sequences", type=int, default=d.val_sequences, help="drive logs in val")
    p.add_argument("--test-sequences", type=int, default=d.test_sequences, help="drive logs in test")
    p.add_argument("--frames-per-sequence", type=int, default=d.frames_per_sequence, help="frames per drive log")
    p.add_argument("--frame-interval", type=float, default=d.frame_interval_s, help="seconds between frames")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same bytes")
    p.add_argument("--difficulty", type=float, default=d.difficulty,
                   help="0 = clean renders, 1 = default realism, 2 = harsh camera")
    p.add_argument("--traffic-density", type=float, default=d.traffic_density, help="scales road users")
    p.add_argument("--weather", default=_format_weights(d.weather_weights),
                   help=f"relative weights of {', '.join(WEATHERS)} per sequence")
    p.add_argument("--time-of-day", default=_format_weights(d.time_weights),
                   help=f"relative weights of {', '.join(TIMES_OF_DAY)} per sequence")
    p.add_argument("--sensor-noise", type=float, default=d.sensor_noise, help="read noise std at difficulty 1")
    p.add_argument("--blur-sigma", type=float, default=d.blur_sigma, help="optical blur (px at 512 wide)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="0 = no JPEG artefacts")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (same output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset at --out")
    p.set_defaults(func=_cmd_synth)
