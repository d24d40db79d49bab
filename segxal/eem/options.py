"""The EEM options: everything that makes a frame's score and regions what they are. Their one home,
used by the in-process loop, the EEM service (per request), the coordinator (per cycle), the fleet
worker and the Label Studio backend (docs/design.md, "EEM options and selection").

One rule for the two weights, wherever they come from (flags, the TOML file, the wire): both
unset -> the defaults; one given alone -> the other is 1 - it; both given -> they must sum to 1.
`resolve_weights` is that rule; `EEMOptions.validate` is the one check; `add_eem_arguments` /
`eem_options_from_args` are the one set of flags, so every command names and reads them alike.

Fusions (segxal.eem.fuse):
    additive        EEM = alpha * EBU + beta * PAE          (the paper's, arXiv 2408.04482)
    multiplicative  EEM = EBU * (alpha + beta * PAE)         (PAE re-weights where the model is unsure)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from segxal.eem.regions import DEFAULT_MIN_AREA
from segxal.errors import InvalidInput

WEIGHT_SUM_TOLERANCE = 1e-6  # alpha + beta may miss 1 by float rounding of client input
SCORE_MODES = ("mean", "topq")
THRESHOLD_MODES = ("otsu", "fixed")
FUSIONS = ("additive", "multiplicative")
DEFAULT_ALPHA = 0.5


def resolve_weights(alpha: float | None, beta: float | None) -> tuple[float, float]:
    """The one rule for the EEM weights: (alpha, beta) from what was given.

    Args:
        alpha: weight of EBU, or None when not given.
        beta: weight of PAE, or None when not given.

    Returns:
        both weights; not validated (EEMOptions.validate checks range and sum).
    """
    if alpha is None and beta is None:
        return DEFAULT_ALPHA, 1.0 - DEFAULT_ALPHA
    if beta is None:
        return float(alpha), 1.0 - float(alpha)
    if alpha is None:
        return 1.0 - float(beta), float(beta)
    return float(alpha), float(beta)


@dataclass(frozen=True)
class EEMOptions:
    """The EEM maths of a ranking (see the module docstring for the weight rule and fusions)."""
    alpha: float = DEFAULT_ALPHA
    beta: float = 1.0 - DEFAULT_ALPHA
    score_mode: str = "mean"  # "mean" | "topq"
    q: float = 0.05  # fraction of pixels averaged by "topq"
    threshold_mode: str = "otsu"  # "otsu" | "fixed"
    threshold: float = 0.5  # used when threshold_mode == "fixed"; in [0, 1], the EEM's range
    min_region_area: int = DEFAULT_MIN_AREA  # pixels at 256 x 512 (scaled to the map); 0 keeps all
    # "multiplicative" | "additive". Multiplicative by default: in the region protocol (labels on the
    # map's best cells) it beats the paper's additive fusion by +1.65 mIoU [+1.33, +1.97] over the
    # curve and is level with random cells, where the additive one loses 1.8 to them; for whole
    # frames the two do not differ (-0.03 [-0.41, +0.35]); 31 seeds, bench/results/al.md
    fusion: str = "multiplicative"

    @classmethod
    def from_weights(cls, alpha: float | None = None, beta: float | None = None, **rest) -> "EEMOptions":
        """Options with the weights resolved by the one rule (resolve_weights); not validated."""
        a, b = resolve_weights(alpha, beta)
        return cls(alpha=a, beta=b, **rest)

    @classmethod
    def from_dict(cls, d: dict) -> "EEMOptions":
        """From a stored dict (a cycle's row); keys this version does not know are refused, keys it
        added since take their defaults, but a cycle stored before `fusion` existed was additive."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidInput(f"unknown EEM option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{"fusion": "additive", **d})

    def validate(self) -> "EEMOptions":
        """The one check of EEM options, wherever they come from (flags, TOML, the wire).

        Raises:
            InvalidInput: weights outside [0, 1] or not summing to 1 (within WEIGHT_SUM_TOLERANCE),
                an unknown score mode, threshold mode or fusion, q outside (0, 1], a threshold
                outside [0, 1], a negative minimum region area, a NaN or infinite number.
        """
        # NaN would pass a comparison written the other way round (nan < 0 is False): name it first
        bad = {k: v for k, v in (("alpha", self.alpha), ("beta", self.beta), ("top_q", self.q),
                                 ("threshold", self.threshold)) if not math.isfinite(v)}
        if bad:
            raise InvalidInput(f"EEM options must be finite numbers, got {bad}")
        a, b = self.alpha, self.beta
        if not (0.0 <= a <= 1.0 and 0.0 <= b <= 1.0 and abs(a + b - 1.0) <= WEIGHT_SUM_TOLERANCE):
            raise InvalidInput(f"alpha and beta must lie in [0, 1] and sum to 1 (give one alone and the "
                               f"other is 1 - it), got alpha={a}, beta={b}")
        if self.score_mode not in SCORE_MODES:
            raise InvalidInput(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        if not 0.0 < self.q <= 1.0:
            raise InvalidInput(f"q must be in (0, 1], got {self.q}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise InvalidInput(f"threshold_mode must be one of {THRESHOLD_MODES}, got {self.threshold_mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput(f"threshold must lie in [0, 1] (the EEM's range), got {self.threshold}")
        if self.min_region_area < 0:
            raise InvalidInput(f"min_region_area must be >= 0, got {self.min_region_area}")
        if self.fusion not in FUSIONS:
            raise InvalidInput(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        return self

    def key(self) -> str:
        """A short stable hash of these options: scores are stored per (frame, model version, key),
        so a ranking with other options never reuses a score they did not make."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def uses_cam(self) -> bool:
        """False when the CAM cannot change the EEM (beta = 0): such a ranking needs no CAM."""
        return self.beta > 0.0


def add_eem_arguments(p: argparse.ArgumentParser, prefix: str = "", defaults: EEMOptions | None = None,
                      env: Callable[[str], str | None] | None = None) -> None:
    """The EEM flags, the same for every command: --alpha, --beta (one alone: the other is 1 - it),
    --fusion, --score-mode, --top-q, --threshold-mode, --threshold, --min-region-area.

    Args:
        p: the parser.
        prefix: put before each flag name ("eem-" gives --eem-alpha), for commands whose own flags
            would clash.
        defaults: the defaults shown (EEMOptions() when None); the weights default to "not given".
        env: for a service configured by its environment: env(NAME) gives a flag's default, NAME
            being the flag without dashes in upper case ("EEM_ALPHA" for --eem-alpha), None if unset.
    """
    d = defaults or EEMOptions()
    env = env or (lambda name: None)

    def default(flag: str, value, kind=str):
        got = env((prefix + flag).upper().replace("-", "_"))
        return value if got in (None, "") else kind(got)

    g = p.add_argument_group("EEM options (docs/design.md, 'EEM options and selection')")
    g.add_argument(f"--{prefix}alpha", type=float, default=default("alpha", None, float),
                   help=f"weight of the entropy map EBU, in [0, 1]; alone, beta = 1 - alpha (default {d.alpha})")
    g.add_argument(f"--{prefix}beta", type=float, default=default("beta", None, float),
                   help=f"weight of the proximity-aware CAM PAE, in [0, 1]; alone, alpha = 1 - beta "
                        f"(default {d.beta}); 0 skips the CAM")
    g.add_argument(f"--{prefix}fusion", default=default("fusion", d.fusion), choices=FUSIONS,
                   help="additive: a*EBU + b*PAE; multiplicative: EBU * (a + b*PAE)")
    g.add_argument(f"--{prefix}score-mode", default=default("score-mode", d.score_mode), choices=SCORE_MODES,
                   help="frame score: mean EEM, or the mean of its top q share of pixels")
    g.add_argument(f"--{prefix}top-q", type=float, default=default("top-q", d.q, float),
                   help="share of pixels for --score-mode topq")
    g.add_argument(f"--{prefix}threshold-mode", default=default("threshold-mode", d.threshold_mode),
                   choices=THRESHOLD_MODES,
                   help="region threshold: Otsu's on the EEM, or --threshold")
    g.add_argument(f"--{prefix}threshold", type=float, default=default("threshold", d.threshold, float),
                   help="fixed region threshold on the EEM, in [0, 1]")
    g.add_argument(f"--{prefix}min-region-area", type=int,
                   default=default("min-region-area", d.min_region_area, int),
                   help="smallest region kept, pixels at 256 x 512 (scaled to the map); 0 keeps all")


def eem_options_from_args(args: argparse.Namespace, prefix: str = "", validate: bool = True) -> EEMOptions:
    """EEMOptions from the flags of add_eem_arguments (same prefix), weights by the one rule.

    Args:
        validate: check them here (a command whose config has no validate of its own); False for a
            command whose config validation covers them (the loops' ALConfig.validate).

    Raises:
        InvalidInput: invalid options (EEMOptions.validate), naming the flag values.
    """
    a = prefix.replace("-", "_")
    opts = EEMOptions.from_weights(
        getattr(args, f"{a}alpha"), getattr(args, f"{a}beta"), fusion=getattr(args, f"{a}fusion"),
        score_mode=getattr(args, f"{a}score_mode"), q=getattr(args, f"{a}top_q"),
        threshold_mode=getattr(args, f"{a}threshold_mode"), threshold=getattr(args, f"{a}threshold"),
        min_region_area=getattr(args, f"{a}min_region_area"))
    return opts.validate() if validate else opts
