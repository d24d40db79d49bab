"""Procedural synthetic driving scenes, written in the Cityscapes layout that
segxal.data.cityscapes reads (leftImg8bit/, gtFine/*_labelIds.png, disparity/, camera/), with the
*_instanceIds.png that cityscapesscripts' evaluators read (each car, person, rider, bicycle, ...
its own id, labelId * 1000 + k, as in Cityscapes).

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

The package, along the generator's seams: config (SynthConfig, validation), camera, textures, world
(the street), traffic (road users, and the world of a drive log built), static (the ray-cast static
scene), objects (parts, shapes, drawing), light (light, weather, the camera's response), frames
(render_sequence), dataset (generate) and cli (`segxal data synth`).
"""
from __future__ import annotations

from segxal.data.synth.camera import Camera
from segxal.data.synth.cli import register_cli
from segxal.data.synth.config import (CITIES, FORMAT_VERSION, SIDECAR, SPLITS, TIMES_OF_DAY, WEATHERS,
                                      SynthConfig)
from segxal.data.synth.dataset import _write_sequence, generate
from segxal.data.synth.frames import render_sequence

__all__ = ["CITIES", "FORMAT_VERSION", "SIDECAR", "SPLITS", "TIMES_OF_DAY", "WEATHERS", "Camera", "SynthConfig",
           "generate", "register_cli", "render_sequence"]
