"""The early-stopping rule and the vocabulary trend of the known-oracle experiment, on made-up
numbers whose answer is known."""

import numpy as np

from benchmarks.oracle import report, run


def test_stopping_rule_waits_for_patience_evaluations_without_a_gain():
  curve = [3.0, 2.0, 1.5, 1.4, 1.41, 1.45, 1.50]
  stops = [i for i in range(1, len(curve) + 1) if run.stopped(curve[:i], 3, 1e-3)]
  assert stops[0] == 7  # best 1.4 at the 4th evaluation, then 3 without a gain
  assert run.stopped([3.0, 2.0, 1.9995, 1.9992, 1.9991], 3, 1e-2)  # gains below min_delta
  assert not run.stopped([3.0, 2.0, 1.0, 0.5], 3, 1e-3)  # still improving


def _sweep(slopes: dict[str, list[float]], sizes=(300, 600, 2400)) -> dict:
  """Per V and seed: CE with a random level, each objective CE + intercept + slope·log2 V."""
  rng = np.random.default_rng(0)
  seeds = len(next(iter(slopes.values())))
  out = {}
  for v in sizes:
    per_seed = []
    for i in range(seeds):
      base = {m: float(rng.uniform(0.5, 1.0)) for m in report.TREND_METRICS}
      models = {"ce": dict(base)}
      for name, by_seed in slopes.items():
        models[name] = {m: base[m] + 0.3 + by_seed[i] * np.log2(v) for m in base}
      per_seed.append(models)
    out[str(v)] = {"data_vocab_size": v, "per_regime": {"same": per_seed}}
  return out


def test_vocab_trend_recovers_the_slope_and_gives_the_verdict():
  grows = [-0.05, -0.06, -0.04, -0.05, -0.055]
  flat = [0.001, -0.001, 0.0005, -0.0005, 0.0]
  trend = report.vocab_trend(_sweep({"emo": grows, "emo_cap3": flat}), ["emo", "emo_cap3"])
  primary = trend["per_objective"]["emo"]["reverse_kl"]
  np.testing.assert_allclose(primary["per_seed_slopes"], grows, atol=1e-9)
  np.testing.assert_allclose(trend["slope"], np.mean(grows), atol=1e-9)
  sd = np.std(grows, ddof=1) / np.sqrt(5)
  np.testing.assert_allclose(trend["high"] - trend["slope"], 2.7764451 * sd, rtol=1e-5)
  assert trend["verdict"] == "holds"
  assert trend["per_objective"]["emo_cap3"]["reverse_kl"]["verdict"] == "does not hold"


def test_vocab_trend_needs_two_sizes():
  trend = report.vocab_trend(_sweep({"emo": [0.0] * 3}, sizes=(512,)), ["emo"])
  assert trend["verdict"].startswith("not testable here")
