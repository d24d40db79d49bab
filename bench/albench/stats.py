"""Statistics of the label-efficiency benchmark, fixed before the run.

The primary endpoint of each protocol is the paired whole-curve difference: for each seed, the arm's
test-split mIoU minus the reference's, averaged over the protocol's budget points (the area between
the two curves divided by the number of points), in mIoU points; then a paired analysis over seeds.
Where the reference is `random` and it has several draws per seed, its curve per seed is the mean of
the draws (the draws are replicates of one random policy; averaging them removes most of the
baseline's noise).

Per comparison: the mean paired difference, its 95 % confidence interval from Student's t (n - 1
degrees of freedom), the two-sided paired t-test p, the Wilcoxon signed-rank p as a check on the
t-test's normality assumption, and the power a two-sided paired t-test at alpha 0.05 has against a
true difference of EQUIVALENCE_MARGIN with the observed SD. p values are Holm-corrected across the
arms compared with one reference in one family (key arms; exploratory arms are their own family).

Verdicts (verdict): "better" / "worse" where the Holm-corrected p < 0.05; "no difference" only where
the whole 95 % CI lies inside +-EQUIVALENCE_MARGIN; otherwise "inconclusive".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
EQUIVALENCE_MARGIN = 0.5  # mIoU points: a smaller whole-curve difference is "no difference"
POWER_TARGET = 0.8
PRIMARY_ENDPOINT = {
    "frame": "paired whole-curve difference in test-split mIoU (mean over the frame budgets, per seed), "
             "arm minus reference, in mIoU points",
    "region": "paired whole-curve difference in test-split mIoU (mean over the pixel budgets, per seed), "
              "arm minus reference, in mIoU points",
}


def whole_curve_differences(arm: dict[int, list[list[float]]], ref: dict[int, list[list[float]]]) -> dict[int, float]:
    """Per seed, the arm's curve minus the reference's, averaged over the budget points.

    Args:
        arm: seed -> the arm's curves (metric at each budget point, in budget order), one per draw
            (one draw for a deterministic arm; several for random: averaged).
        ref: seed -> the reference's curves at the same points, likewise.

    Returns:
        seed -> mean over the budgets of (mean arm curve - mean reference curve), for the seeds both have.

    Raises:
        ValueError: curves of one seed with different numbers of points.
    """
    out = {}
    for seed in sorted(set(arm) & set(ref)):
        a = np.asarray(arm[seed], float)  # [draws, budgets]
        r = np.asarray(ref[seed], float)
        if a.ndim != 2 or r.ndim != 2 or a.shape[1] != r.shape[1]:
            raise ValueError(f"seed {seed}: curves of shapes {a.shape} and {r.shape} (draws x budget points)")
        out[seed] = float(np.mean(a.mean(axis=0) - r.mean(axis=0)))
    return out


def power(sd: float, n: int, delta: float = EQUIVALENCE_MARGIN, alpha: float = ALPHA) -> float:
    """Power of a two-sided paired t-test with n pairs against a true mean difference `delta` when
    the differences have standard deviation `sd` (noncentral t).

    Args:
        sd: standard deviation of the paired differences.
        n: pairs (seeds).
        delta: the true difference to detect.
        alpha: the test's level.

    Returns:
        the probability of rejecting, in [0, 1]; nan for n < 2 or sd not finite.
    """
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    if sd <= 0:
        return 1.0
    df = n - 1
    crit = sps.t.ppf(1 - alpha / 2, df)
    nc = delta / (sd / math.sqrt(n))
    return float(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc))


def seeds_for_power(sd: float, delta: float = EQUIVALENCE_MARGIN, target: float = POWER_TARGET,
                    alpha: float = ALPHA, max_n: int = 1000) -> int | None:
    """The fewest pairs with power >= target against `delta` at this SD (None: more than max_n)."""
    for n in range(2, max_n + 1):
        if power(sd, n, delta, alpha) >= target:
            return n
    return None


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p values (same order as given; nan stays nan).

    The k-th smallest of m p values is multiplied by m - k + 1, made non-decreasing in that order,
    and capped at 1.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for k, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        out[i] = running
    return out


@dataclass
class Comparison:
    """The paired analysis of one arm against one reference on the primary endpoint."""
    arm: str
    ref: str
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_t: float
    p_wilcoxon: float
    power: float  # against EQUIVALENCE_MARGIN at the observed SD with these n seeds
    seeds_needed: int | None  # for POWER_TARGET at EQUIVALENCE_MARGIN with this SD
    family: str = "key"  # "key" | "exploratory"
    p_holm: float = float("nan")
    verdict: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def paired_comparison(arm: str, ref: str, d: list[float], family: str = "key") -> Comparison:
    """Mean, 95 % t interval, paired t and Wilcoxon p, and power of paired differences d (one per seed).

    Args:
        arm, ref: names, for the record.
        d: the per-seed differences (whole_curve_differences' values).
        family: the Holm family the comparison belongs to.

    Returns:
        the Comparison, without p_holm and verdict (compare_family sets both).
    """
    x = np.asarray(d, float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return Comparison(arm, ref, n, mean, float("nan"), float("nan"), float("nan"), float("nan"),
                          float("nan"), float("nan"), None, family)
    sd = float(x.std(ddof=1))
    half = float(sps.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n))
    if sd > 0:
        p_t = float(sps.ttest_1samp(x, 0.0).pvalue)
    else:
        p_t = 0.0 if mean != 0 else 1.0
    nz = x[x != 0]
    p_w = float(sps.wilcoxon(nz).pvalue) if len(nz) else 1.0
    return Comparison(arm, ref, n, mean, sd, mean - half, mean + half, p_t, p_w, power(sd, n),
                      seeds_for_power(sd), family)


def verdict(c: Comparison, margin: float = EQUIVALENCE_MARGIN) -> str:
    """The one reading rule: better / worse (Holm p < ALPHA), no difference (95 % CI inside
    +-margin), else inconclusive; "n<2" with fewer than two seeds."""
    if c.n < 2 or not math.isfinite(c.ci_low):
        return "n<2"
    if math.isfinite(c.p_holm) and c.p_holm < ALPHA:
        return "better" if c.mean > 0 else "worse"
    if -margin < c.ci_low and c.ci_high < margin:
        return "no difference"
    return "inconclusive"


def compare_family(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm-correct the t-test p values of one family and set each verdict (in place; returned)."""
    for c, p in zip(comparisons, holm([c.p_t for c in comparisons])):
        c.p_holm = p
        c.verdict = verdict(c)
    return comparisons
