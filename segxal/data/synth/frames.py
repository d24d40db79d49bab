"""One drive log rendered frame by frame in memory."""
from __future__ import annotations

import math

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from segxal.errors import InvalidInput
from segxal.data.synth.config import SPLITS, SynthConfig, _validate
from segxal.data.synth.camera import Camera, _Rays
from segxal.data.synth.textures import _Textures
from segxal.data.synth.world import _World, _rng
from segxal.data.synth.traffic import _build_world
from segxal.data.synth.static import _Canvas, _SURF_LABEL, _ray_cast_ground, _ray_cast_planes, _shade_static
from segxal.data.synth.objects import _draw_things
from segxal.data.synth.light import _compose, _lighting, _optics, _sky_image


# ---------------------------------------------------------------------------------------- frames
# labelIds of the classes Cityscapes annotates per object (person, rider, car, truck, bus, ...).
_HAS_INSTANCES = np.zeros(256, bool)
_HAS_INSTANCES[[l.id for l in _CS_LABELS if l.hasInstances and l.id >= 0]] = True
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


def instance_ids(label: np.ndarray, thing: np.ndarray) -> np.ndarray:
    """Cityscapes instanceIds of a frame: labelId * 1000 + k on the pixels of each object of a class
    with instances (k numbers that class's objects in the frame from 0, in the world's object
    order), the labelId everywhere else.

    Args:
        label: labelIds uint8 [H, W].
        thing: the object drawn at each pixel (index in the world's objects, -1 = none) int32 [H, W].
    Returns:
        uint16 [H, W].
    """
    out = label.astype(np.uint16)  # [H, W]
    obj = _HAS_INSTANCES[label] & (thing >= 0)
    if obj.any():
        keys = label[obj].astype(np.int64) << 32 | thing[obj].astype(np.int64)  # (class, object), sorted by both
        uniq, inverse = np.unique(keys, return_inverse=True)
        cls = uniq >> 32
        first = np.searchsorted(cls, cls)  # where each class's objects start in the sorted keys
        k = np.arange(len(uniq)) - first  # the object's number within its class
        out[obj] = (cls * 1000 + k)[inverse].astype(np.uint16)
    return out


def render_sequence(cfg: SynthConfig, split: str, index: int):
    """Render one drive log in memory (generate() writes these to disk).

    Yields, per frame: (frame index, RGB uint8 [H, W, 3], Cityscapes labelIds uint8 [H, W],
    disparity float32 [H, W] (0 on sky), camera dict in the Cityscapes camera JSON format plus a
    "synth" record of city, weather, time of day and ego pose, Cityscapes instanceIds uint16
    [H, W] (instance_ids)). Deterministic in (cfg, split, index).

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
        yield k, rgb, cv.label, disparity, meta, instance_ids(cv.label, cv.thing)
