"""Light and weather (sun, sky, shadows on facades, street lights at night, rain, fog) and the camera's response."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segxal import imageio
from segxal.data.synth.config import SynthConfig, _ID
from segxal.data.synth.camera import Camera, _NEAR, _Rays
from segxal.data.synth.textures import _Textures
from segxal.data.synth.world import _BUILDING, _HEDGE, _M_ROAD, _M_TERRAIN, _World, _rng
from segxal.data.synth.static import _Canvas, _rgb3, _tint


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
