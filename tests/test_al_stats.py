"""The benchmark's statistics on cases computed by hand (bench/albench/stats.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.albench.stats import (EQUIVALENCE_MARGIN, PRIMARY_ENDPOINT, compare_family, holm, paired_comparison,
                                 power, seeds_for_power, whole_curve_differences)


def test_t_interval_and_p_of_three_paired_differences_match_the_hand_computation():
    # d = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t(0.975, 2 df) = 4.302653 -> half width 2.484138.
    # t = 2 sqrt(3) = 3.4641; with 2 df, F(t) = 1/2 + t / (2 sqrt(2 + t^2)) -> p = 1 - t / sqrt(14).
    c = paired_comparison("a", "random", [1.0, 2.0, 3.0])
    assert c.n == 3 and c.mean == pytest.approx(2.0) and c.sd == pytest.approx(1.0)
    assert (c.ci_low, c.ci_high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-5)
    assert c.p_t == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-9)
    # Wilcoxon, exact: all 3 signs positive has probability 1/8, two-sided 1/4
    assert c.p_wilcoxon == pytest.approx(0.25)


def test_holm_multiplies_the_kth_smallest_by_m_minus_k_plus_one_and_keeps_the_order():
    # sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06 (step-down is monotone)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])  # a missing p is not counted in m


def test_a_family_is_holm_corrected_before_its_verdicts():
    # each alone is significant (p < 0.05); corrected for three comparisons only the first stays so
    strong = paired_comparison("a", "random", [1.0, 1.1, 0.9, 1.05, 0.95])
    weak = paired_comparison("b", "random", [0.3, 1.4, 0.2, 1.1, 0.6])
    none = paired_comparison("c", "random", [2.0, -2.1, 1.9, -1.8, 0.1])
    assert weak.p_t < 0.05
    compare_family([strong, weak, none])
    assert strong.verdict == "better"
    assert weak.p_holm == pytest.approx(min(1.0, 2 * weak.p_t)) and weak.p_holm > 0.05
    assert weak.verdict == "inconclusive"  # its CI reaches beyond the margin: not "no difference"
    assert none.verdict == "inconclusive"


def test_no_difference_only_where_the_interval_lies_inside_the_margin():
    tight = compare_family([paired_comparison("a", "random", [0.1, -0.1, 0.05, -0.05, 0.0, 0.02])])[0]
    assert -EQUIVALENCE_MARGIN < tight.ci_low and tight.ci_high < EQUIVALENCE_MARGIN
    assert tight.verdict == "no difference"
    wide = compare_family([paired_comparison("a", "random", [-0.01 + 1.0, -0.01 - 1.0, -0.01])])[0]
    assert wide.verdict == "inconclusive"  # mean ~0 but the interval spans +-2.5: not evidence of none
    assert compare_family([paired_comparison("a", "random", [0.3])])[0].verdict == "n<2"


def test_power_and_seeds_needed_agree_with_the_published_paired_t_table():
    # effect size 0.5 (delta 0.5, sd 1), two-sided alpha 0.05: n = 34 for 80 % power (Cohen 1988; G*Power)
    assert seeds_for_power(1.0, delta=0.5) == 34
    assert 0.80 <= power(1.0, 34, 0.5) < power(1.0, 35, 0.5)
    assert power(1.0, 33, 0.5) < 0.80
    # effect size 1 (sd 0.5): n = 10
    assert seeds_for_power(0.5, delta=0.5) == 10
    assert power(0.5, 2) < 0.2  # two seeds hardly ever detect it


def test_primary_endpoint_averages_each_seed_over_the_budgets_and_random_over_its_draws():
    arm = {0: [[0.30, 0.40, 0.50]], 1: [[0.32, 0.42, 0.52]], 2: [[0.3, 0.4]]}
    ref = {0: [[0.29, 0.38, 0.47], [0.31, 0.40, 0.49]],  # two random draws: mean 0.30, 0.39, 0.48
           1: [[0.30, 0.40, 0.50]]}
    d = whole_curve_differences(arm, ref)
    assert set(d) == {0, 1}  # seed 2 has no reference
    assert d[0] == pytest.approx(np.mean([0.0, 0.01, 0.02]))
    assert d[1] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="budget points"):
        whole_curve_differences({0: [[0.1, 0.2]]}, {0: [[0.1, 0.2, 0.3]]})
    assert set(PRIMARY_ENDPOINT) == {"frame", "region"}
    assert all("whole-curve" in v and "test-split mIoU" in v for v in PRIMARY_ENDPOINT.values())
