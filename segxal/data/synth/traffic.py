"""Road users and street furniture placed in the world (vehicles, persons, riders, two-wheelers, lights, signs,
trees), and the world of one drive log built: its street, then its population."""
from __future__ import annotations

import math

import numpy as np

from segxal.data.synth.config import CITIES, SPLITS, SynthConfig, TIMES_OF_DAY, WEATHERS
from segxal.data.synth.world import (
    _CAR_COLOURS, _CLOTHES, _HEDGE, _Line, _NO_BARRIER, _OPEN, _SKIN, _Side, _Thing, _World, _city_style,
    _draw_crossings, _draw_lanes, _draw_line, _rng, _set_line_heights, _sidewalk_colour, _weighted)


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
