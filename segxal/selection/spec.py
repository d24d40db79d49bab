"""What a selection asks for: objectives with strengths, and constraints. The one home of the type,
carried by a cycle beside its EEM options (docs/design.md, "EEM options and selection").

Objectives (each a strength >= 0; 0 leaves it out):
    score      the frame's acquisition score (the cycle's EEM score: with alpha = 1 it is entropy)
    diversity  distance of the frame's embedding to everything already labelled and already picked
               (farthest-first / k-center greedy, Sener & Savarese, ICLR 2018)
    balance    how much the frame's predicted classes add to the classes labelled and picked so far
Constraints:
    log_cap       at most this many picks per drive log in one selection (0: no cap)
    min_distance  skip frames closer than this (L2 between unit embeddings, in [0, 2]) to anything
                  labelled or picked (0: no floor)
    min_score     skip frames whose score is below this (a threshold; -inf: none)
    shortlist     only the top shortlist * k frames by score enter the greedy pass (0: all)

The greedy pass maximises the product of the objectives raised to their strengths, one pick after
another (as Lightly's selection composes strategies), so strengths are exponents: doubling one
doubles its say against the others, whatever their units.

Text form (flags, the TOML file, `segxal loop --selection`): comma-separated name=value, e.g.
"score=1,diversity=1,log_cap=2". A name missing takes its default below; "score=1" alone is the
plain ranking by score.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

from segxal.errors import InvalidInput

# The product's default selection (segxal loop, a StartCycle without a selection): EEM score rank
# and farthest-first diversity at equal strength. Chosen by the label-efficiency benchmark's frame
# protocol (bench/results/al.md, 31 seeds, paired whole-curve test mIoU, the shipped CAM): +0.89
# [+0.61, +1.17] over random and +0.86 [+0.47, +1.26] over entropy, ahead of plain EEM (diversity
# adds +0.66 [+0.30, +1.02] to it) and no different from core-set (-0.03 [-0.31, +0.26]: the gain
# is diversity's; the EEM score keeps the regions it highlights for the labeler). SelectionSpec()
# itself stays the plain ranking by score.
DEFAULT_SELECTION = "score=1,diversity=1"


@dataclass(frozen=True)
class SelectionSpec:
    """A composed selection (see the module docstring). The default is the plain score ranking."""
    score: float = 1.0
    diversity: float = 0.0
    balance: float = 0.0
    log_cap: int = 0
    min_distance: float = 0.0
    min_score: float = -math.inf
    shortlist: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "SelectionSpec":
        """From the text form ("score=1,diversity=1,log_cap=2"); "" is the default.

        Raises:
            InvalidInput: an unknown name, a value that is not a number, a repeated name, or values
                SelectionSpec.validate refuses.
        """
        kinds = {f.name: (int if f.type in ("int", int) else float) for f in fields(cls)}
        values: dict[str, float | int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep:
                raise InvalidInput(f"selection: {part!r} is not name=value (e.g. 'score=1,diversity=1')")
            if name not in kinds:
                raise InvalidInput(f"selection: unknown name {name!r}; known: {', '.join(kinds)}")
            if name in values:
                raise InvalidInput(f"selection: {name!r} given twice")
            try:
                values[name] = kinds[name](value.strip())
            except ValueError:
                raise InvalidInput(f"selection: {name}={value.strip()!r} is not a{'n integer' if kinds[name] is int else ' number'}") from None
        return cls(**values).validate()

    @classmethod
    def from_dict(cls, d: dict) -> "SelectionSpec":
        """From a stored dict (a cycle's row).

        Raises:
            InvalidInput: unknown keys.
        """
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise InvalidInput(f"unknown selection key(s) {sorted(set(d) - known)}; known: {sorted(known)}")
        return cls(**{k: (-math.inf if k == "min_score" and v is None else v) for k, v in d.items()})

    def to_dict(self) -> dict:
        """JSON-safe (min_score -inf as None)."""
        d = asdict(self)
        if d["min_score"] == -math.inf:
            d["min_score"] = None
        return d

    def validate(self) -> "SelectionSpec":
        """The one check of a selection, wherever it comes from.

        Raises:
            InvalidInput: a negative or non-finite strength, all strengths 0, a negative cap,
                a minimum distance outside [0, 2], a NaN threshold, a shortlist in (0, 1).
        """
        for name in ("score", "diversity", "balance"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InvalidInput(f"selection: strength {name} must be a finite number >= 0, got {v}")
        if self.score == self.diversity == self.balance == 0:
            raise InvalidInput("selection: at least one of score, diversity, balance must be > 0")
        if self.log_cap < 0:
            raise InvalidInput(f"selection: log_cap must be >= 0 (0: no cap), got {self.log_cap}")
        if not 0.0 <= self.min_distance <= 2.0:
            raise InvalidInput(f"selection: min_distance must lie in [0, 2] (L2 between unit embeddings), "
                               f"got {self.min_distance}")
        if math.isnan(self.min_score):
            raise InvalidInput("selection: min_score must be a number")
        if not (self.shortlist == 0 or (math.isfinite(self.shortlist) and self.shortlist >= 1)):
            raise InvalidInput(f"selection: shortlist must be 0 (all frames) or >= 1 (times k), got {self.shortlist}")
        return self

    @property
    def needs_embeddings(self) -> bool:
        return self.diversity > 0 or self.min_distance > 0

    @property
    def needs_class_histograms(self) -> bool:
        return self.balance > 0

    def text(self) -> str:
        """The text form, only the fields that differ from the default ("score=1" for the default)."""
        d, out = SelectionSpec(), []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != getattr(d, f.name) or f.name == "score":
                out.append(f"{f.name}={v:g}" if isinstance(v, float) else f"{f.name}={v}")
        return ",".join(out)

    def key(self) -> str:
        """A short stable hash, for caches and reports."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
