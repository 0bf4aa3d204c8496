"""The equivalence statistics (TOST, t distribution, seeds needed) on constructed deltas."""

import math

import numpy as np
import pytest

from dsrl.analysis.equivalence import pooled_sd, seeds_needed, t_cdf, t_ppf, tost


@pytest.mark.parametrize(
    ("q", "df", "quantile"),
    # textbook t-table values
    [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.95, 5, 2.0150), (0.975, 10, 2.2281), (0.95, 30, 1.6973)],
)
def test_t_quantiles_match_the_table(q, df, quantile):
    assert t_ppf(q, df) == pytest.approx(quantile, abs=1e-4)
    assert t_cdf(quantile, df) == pytest.approx(q, abs=1e-5)
    assert t_cdf(-quantile, df) == pytest.approx(1 - q, abs=1e-5)


def test_t_cdf_closed_forms():
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy
    assert t_cdf(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)))
    assert t_cdf(0.0, 7) == 0.5
    assert t_cdf(math.inf, 3) == 1.0 and t_cdf(-math.inf, 4) == 0.0
    assert t_ppf(0.95, 5000) == pytest.approx(1.6449, abs=1e-3)  # the normal limit


def test_tight_small_deltas_are_equivalent():
    result = tost([0.004, -0.003, 0.001, 0.002, -0.001], threshold=0.02)
    assert result.verdict == "equivalent"
    assert result.p_value < 0.001
    assert -0.02 < result.ci90_low < result.mean < result.ci90_high < 0.02


def test_tight_large_deltas_are_different():
    result = tost([0.10, 0.11, 0.09], threshold=0.02)
    assert result.verdict == "different"
    assert result.p_value > 0.9 and result.p_difference < 0.01
    assert result.ci90_low > 0.02


def test_mean_inside_the_band_is_not_enough_with_seed_noise():
    """The old gate passes these (|mean| = 0.003 <= 0.02); the seed noise does not allow any conclusion."""
    deltas = [0.08, -0.07, 0.0]
    assert abs(np.mean(deltas)) <= 0.02
    result = tost(deltas, threshold=0.02)
    assert result.verdict == "inconclusive"
    assert result.p_value > 0.05 and result.ci90_low < -0.02 < 0.02 < result.ci90_high


def test_too_few_seeds_are_inconclusive():
    one = tost([0.001], threshold=0.02)
    assert one.verdict == "inconclusive" and one.n == 1 and math.isnan(one.p_value)
    two = tost([0.01, -0.012], threshold=0.02)  # small, but two seeds this far apart prove nothing
    assert two.verdict == "inconclusive"
    assert tost([], threshold=0.02).verdict == "inconclusive"


def test_identical_deltas_are_known_exactly():
    """Deterministic runs (CPU ZeRO-1 vs ZeRO-2) give the same delta on every seed: no noise to test against."""
    assert tost([0.0, 0.0, 0.0], threshold=0.02).verdict == "equivalent"
    assert tost([0.05, 0.05], threshold=0.02).verdict == "different"


def test_nan_deltas_are_left_out():
    assert tost([0.001, np.nan, -0.001, 0.0], threshold=0.02).n == 3


def test_verdict_agrees_with_the_interval():
    """TOST at alpha is equivalent iff the 1 - 2 alpha interval lies inside the band."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        result = tost(rng.normal(rng.uniform(-0.04, 0.04), rng.uniform(0.001, 0.03), size=rng.integers(2, 8)), 0.02)
        inside = result.ci90_low > -0.02 and result.ci90_high < 0.02
        assert (result.verdict == "equivalent") == inside


def test_seeds_needed_gives_the_stated_power():
    sd, threshold = 0.01, 0.02
    n = int(seeds_needed(sd, threshold))
    rng = np.random.default_rng(1)

    def power(seeds):
        draws = rng.normal(0, math.sqrt(2) * sd, size=(2000, seeds))
        return np.mean([tost(d, threshold).verdict == "equivalent" for d in draws])

    assert power(n) >= 0.78
    assert power(max(2, n // 2)) < 0.7


def test_seeds_needed_edges():
    assert seeds_needed(0.03, 0.02) > seeds_needed(0.01, 0.02) > 2
    assert seeds_needed(0.0, 0.02) == 2
    assert math.isnan(seeds_needed(math.nan, 0.02))
    assert seeds_needed(0.01, 0.0) == math.inf


def test_pooled_sd_is_within_groups():
    # group a: 1, 2, 3 (sum of squares 2, df 2); group b: 10, 12 (2, df 1); the 8-point gap between groups is ignored
    assert pooled_sd([1, 2, 3, 10, 12], ["a", "a", "a", "b", "b"]) == pytest.approx(math.sqrt(4 / 3))
    assert math.isnan(pooled_sd([1.0, 2.0], ["a", "b"]))
