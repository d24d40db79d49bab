"""The static scene, ray cast per pixel (ground and vertical planes) and shaded (road, sidewalk, terrain, facades)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segxal.data.synth.config import _ID
from segxal.data.synth.camera import Camera, _Rays
from segxal.data.synth.textures import _Textures, _hash01
from segxal.data.synth.world import (
    _BUILDING, _CROSSING, _FENCE, _HEDGE, _Line, _M_FACADE, _M_FENCE, _M_HEDGE, _M_ROAD, _M_SIDEWALK, _M_SKY,
    _M_TERRAIN, _M_WALL, _NO_BARRIER, _WALL, _World)


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
        self.thing = np.full((h, w), -1, np.int32)  # index in world.things of that part's object (-1 = none)
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
