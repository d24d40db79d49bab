"""Objects as planar polygon parts, their shapes per pose, shadows, and drawing far to near into the canvas."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segxal.data.synth.config import _ID
from segxal.data.synth.camera import Camera, _NEAR, _project
from segxal.data.synth.world import _Thing, _World
from segxal.data.synth.static import _Canvas


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
    index = {id(t): i for i, t in enumerate(world.things)}
    things = np.repeat([index[id(t)] for t, _, _, _ in visible], n_parts)  # [parts] the object of each part
    _resolve_parts(cv, np.concatenate([sh.labels for sh in shapes]), np.concatenate([sh.rgba for sh in shapes]),
                   planes, np.repeat(xs, n_parts), np.repeat(zs, n_parts), world.sun, things)


def _resolve_parts(cv: _Canvas, labels: np.ndarray, rgba: np.ndarray, planes: np.ndarray,
                   x: np.ndarray, z: np.ndarray, sun: tuple, things: np.ndarray) -> None:
    """Label, albedo, plane (n_x, n_z, c, sun cosine) and object (index in world.things, for the
    instance ids) of every object pixel from its part id."""
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
    cv.thing.reshape(-1)[obj] = things[sel]
    cv.albedo.reshape(-1, 3)[obj] = rgba[sel, :3]
    cv.emissive.reshape(-1)[obj] = rgba[sel, 3]
    cv.plane.reshape(-1, 4)[obj] = np.stack((nx, nz, c, sun_cos), 1).astype(np.float32)[sel]
