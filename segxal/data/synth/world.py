"""The street of one drive log: lanes, markings, crossings, sidewalks and the lines of walls, facades and hedges."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np


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
