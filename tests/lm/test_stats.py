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


def test_a_baseline_already_within_the_margin_of_the_ideal_is_not_testable():
  """A "better" claim cannot hold when the baseline's distance from the ideal is below the
  margin: the verdict says so instead of "does not hold", whatever the interval."""
  baseline = np.array([0.004, 0.005, 0.003, 0.004, 0.006])   # e.g. a rep-2 gap to human text
  method = baseline - 0.002
  margin = stats.Margin("rep2_gap", 0.01, False)
  room = float(baseline.mean())
  result = stats.paired_comparison(method, baseline, margin, room=room)
  assert result["verdict"] == stats.NOT_TESTABLE and result["room"] == room
  # the same interval with room to improve is judged on the interval
  assert stats.paired_comparison(method, baseline, margin, room=0.5)["verdict"] == (
      stats.DOES_NOT_HOLD)
  # non-inferiority claims are judged on the interval even without room
  assert stats.paired_comparison(method, baseline, margin, "not worse", room=room)[
      "verdict"] == stats.HOLDS
  assert set(stats.VERDICTS) == {stats.HOLDS, stats.DOES_NOT_HOLD, stats.INCONCLUSIVE,
                                 stats.NOT_TESTABLE}


def test_detectable_difference_has_the_stated_power():
  """A true paired difference equal to ``detectable`` is called "holds" in about 80% of
  simulated designs with the same spread (the formula uses the true standard error; the
  simulated intervals their own estimate, so the power is near, not exactly, 0.8)."""
  n, sd, margin = 5, 0.03, 0.04
  se = sd / np.sqrt(n)
  detectable = stats.detectable_difference(margin, se, n)
  want = margin + (scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1)) * se
  assert detectable == pytest.approx(want, rel=1e-12)
  rng = np.random.default_rng(0)
  draws = rng.normal(detectable, sd, size=(20_000, n))
  calls = [stats.verdict(*stats.t_interval(d)[1:], margin) == stats.HOLDS for d in draws]
  assert 0.72 < np.mean(calls) < 0.86
  # at 50% power it is margin + the half-width; "holds" about half the time
  half = stats.detectable_difference(margin, se, n, power=0.5)
  assert half == pytest.approx(margin + scipy_stats.t.ppf(0.975, n - 1) * se)
  assert np.isnan(stats.detectable_difference(margin, se, 1))


def test_paired_comparison_reports_the_standard_error_and_the_80_percent_detectable():
  baseline = np.zeros(5)
  method = np.array([0.01, 0.05, 0.02, 0.06, 0.03])
  result = stats.paired_comparison(method, baseline, stats.Margin("m", 0.04, True))
  assert result["se"] == pytest.approx(scipy_stats.sem(method))
  assert result["detectable_power"] == 0.8
  assert result["detectable"] > 0.04 + (result["high"] - result["low"]) / 2  # more than 50%


@pytest.mark.parametrize("claim,room", [("better", None), ("not worse", None),
                                        ("better", 0.001)])
def test_one_seed_gives_no_interval_and_an_inconclusive_verdict(claim, room):
  """One paired seed has no spread: no interval, and never a verdict other than inconclusive
  (a zero-width interval used to read 'does not hold' or 'holds')."""
  margin = stats.Margin("nll", 0.01, False)
  for method in ([1.0 - 0.3729], [1.0 + 0.3729], [1.0]):
    summary = stats.paired_comparison(method, [1.0], margin, claim, room=room)
    assert summary["n"] == 1 and np.isnan(summary["low"]) and np.isnan(summary["high"])
    assert summary["verdict"] == stats.INCONCLUSIVE
    assert summary["mean"] == pytest.approx(method[0] - 1.0)
    assert "[no interval]" in stats.format_difference(summary)
  mean, low, high = stats.t_interval([0.5])
  assert mean == 0.5 and np.isnan(low) and np.isnan(high)
  assert stats.verdict(float("nan"), float("nan"), 0.01, claim, room) == stats.INCONCLUSIVE


def test_two_seeds_still_give_an_interval_and_a_verdict():
  margin = stats.Margin("nll", 0.01, False)
  summary = stats.paired_comparison([0.5, 0.52], [1.0, 1.0], margin)
  assert summary["low"] < summary["mean"] < summary["high"]
  assert summary["verdict"] == stats.HOLDS


def test_every_comparison_in_the_benchmarks_gives_one_seed_an_inconclusive_verdict():
  """The other users of the comparison: the oracle's claims (verdict redone per claim kind) and
  its vocabulary trend, and the classification comparison."""
  from benchmarks.oracle import report as oracle_report

  per_seed = [{"ce": {m: 1.0 for m in (*oracle_report.MARGINS, "entropy_gap")},
               "emo": {m: 0.5 for m in (*oracle_report.MARGINS, "entropy_gap")}}]
  per_seed[0]["ce"]["forward_kl"] = per_seed[0]["emo"]["forward_kl"] = 1.0
  comparisons = oracle_report.compare({"same": per_seed}, ["ce", "emo"])
  claims = oracle_report.claims(comparisons)
  assert claims and {c["verdict"] for c in claims} == {stats.INCONCLUSIVE}
  sweep = {str(v): {"data_vocab_size": v, "per_regime": {"same": [
      {"ce": {m: 1.0 for m in oracle_report.TREND_METRICS},
       "emo": {m: 1.0 - 0.1 * i for m in oracle_report.TREND_METRICS}}]}}
      for i, v in enumerate((300, 600, 1200))}
  trend = oracle_report.vocab_trend(sweep, ["emo"])
  assert trend["n"] == 1 and trend["verdict"] == stats.INCONCLUSIVE
  from benchmarks.lm import report as lm_report

  lm = lm_report.compare([{"ce": {"test_nll": 1.0, "rep2_gap/greedy": 0.3},
                           "emo": {"test_nll": 0.6, "rep2_gap/greedy": 0.001}}],
                         ["ce", "emo"], {}, "A")
  assert {c["verdict"] for c in lm["emo"].values()} == {stats.INCONCLUSIVE}
