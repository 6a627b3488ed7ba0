"""Paired comparisons and verdicts (benchmarks/lm/stats.py)."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmarks.lm import stats


def test_t_interval_matches_scipy():
  values = np.array([0.3, -0.1, 0.5, 0.2, 0.05])
  mean, low, high = stats.t_interval(values)
  want = scipy_stats.t.interval(0.95, len(values) - 1, loc=values.mean(),
                                scale=scipy_stats.sem(values))
  np.testing.assert_allclose([low, high], want, rtol=1e-12)
  assert mean == pytest.approx(values.mean())
  assert stats.t_quantile(5) == pytest.approx(2.776, abs=1e-3)
  assert stats.t_quantile(10) == pytest.approx(2.262, abs=1e-3)


@pytest.mark.parametrize("low,high,claim,want", [
    (0.05, 0.2, "better", stats.HOLDS),
    (-0.2, -0.05, "better", stats.DOES_NOT_HOLD),
    (-0.01, 0.02, "better", stats.DOES_NOT_HOLD),     # inside the margin: no difference
    (-0.01, 0.2, "better", stats.INCONCLUSIVE),
    (-0.02, 0.2, "not worse", stats.HOLDS),
    (-0.2, -0.05, "not worse", stats.DOES_NOT_HOLD),
    (-0.1, 0.2, "not worse", stats.INCONCLUSIVE),
])
def test_verdicts(low, high, claim, want):
  assert stats.verdict(low, high, 0.03, claim) == want


def test_paired_comparison_flips_the_direction_for_lower_is_better():
  baseline = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  method = baseline - np.array([0.1, 0.12, 0.09, 0.11, 0.1])  # lower every seed
  lower = stats.paired_comparison(method, baseline, stats.Margin("nll", 0.01, False))
  assert lower["verdict"] == stats.HOLDS and lower["improved"] == 5 and lower["mean"] < 0
  higher = stats.paired_comparison(method, baseline, stats.Margin("acc", 0.01, True))
  assert higher["verdict"] == stats.DOES_NOT_HOLD and higher["improved"] == 0
  assert "(5/5)" in stats.format_difference(lower)
  with pytest.raises(ValueError, match="paired"):
    stats.paired_comparison(method[:4], baseline, stats.Margin("nll", 0.01, False))
