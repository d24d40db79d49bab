"""What to generate: splits, cities, weathers, times of day, SynthConfig and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field

from segxal.errors import InvalidInput
from segxal.labels import NAME_TO_LABEL_ID


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
FORMAT_VERSION = 2  # 2: gtFine *_instanceIds.png (each object of a class with instances)

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
