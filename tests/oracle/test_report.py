"""The convergence summaries and the vocabulary trend of the known-oracle experiment, on made-up
numbers whose answer is known."""

import numpy as np

from benchmarks.oracle import report


def test_late_fraction_counts_runs_selected_in_the_last_quarter():
  per_seed = [{"ce": {"steps": 100, "steps_run": 100}, "emo": {"steps": 74, "steps_run": 100}},
              {"ce": {"steps": 75, "steps_run": 100}}]  # emo ran in one seed only
  assert report._late_fraction(per_seed, ["ce", "emo"]) == 2 / 3
  assert np.isnan(report._late_fraction(per_seed, []))


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


def _oracle_sweep(per_oracle: dict[int, list[float]], seeds: int = 3) -> dict:
  """``{V: [difference of each oracle]}``: CE at a random level per seed, EMO = CE + the
  oracle's difference + seed noise that averages to zero over the seeds of an oracle."""
  rng = np.random.default_rng(1)
  noise = np.linspace(-0.01, 0.01, seeds)
  out = {}
  for v, diffs in per_oracle.items():
    runs = []
    for d in diffs:
      per_seed = []
      for i in range(seeds):
        base = {m: float(rng.uniform(0.5, 1.0)) for m in report.TREND_METRICS}
        per_seed.append({"ce": base, "emo": {m: base[m] + d + noise[i] for m in base}})
      runs.append({"same": per_seed})
    out[str(v)] = {"data_vocab_size": v, "per_regime": runs[0],
                   "replicates": [{"per_regime": r} for r in runs[1:]]}
  return out


def test_oracle_unit_trend_counts_oracles_and_matches_a_regression():
  per_oracle = {300: [0.10, 0.11], 600: [0.14, 0.15], 1200: [0.18, 0.19]}
  trend = report.vocab_trend(_oracle_sweep(per_oracle), ["emo"])
  assert trend["oracles_per_vocab"] == {"300": 2, "600": 2, "1200": 2}
  assert trend["unit"] == "oracle" and trend["n"] == 6
  x = np.log2([v for v, ds in per_oracle.items() for _ in ds])
  y = np.asarray([d for ds in per_oracle.values() for d in ds])
  slope, intercept = np.polyfit(x, y, 1)
  residual_sd = np.sqrt(np.sum((y - slope * x - intercept) ** 2) / 4)
  half = 2.7764451 * residual_sd / np.sqrt(np.sum((x - x.mean()) ** 2))  # t(0.975, 4 df)
  np.testing.assert_allclose(trend["slope"], slope, atol=1e-9)
  np.testing.assert_allclose(trend["high"] - trend["slope"], half, rtol=1e-5)
  assert trend["verdict"] == "does not hold"  # the difference grows against EMO
  assert trend["reading"].startswith("no support at V = 300–1200: EMO+CE's gap to CE widens")


def test_oracle_unit_trend_with_one_oracle_per_size_keeps_the_seed_test():
  trend = report.vocab_trend(_sweep({"emo": [-0.05, -0.06, -0.04]}), ["emo"])
  assert trend["unit"] == "seed" and trend["oracle_unit"]["emo"]["reverse_kl"]["n"] == 3
  assert report.oracle_slope([(300, 0.1), (600, 0.2)], report.MARGINS["reverse_kl"])[
      "verdict"].startswith("not testable here")


def test_continued_check_signs_and_verdicts():
  """drop = selected − continued: positive when continuing lowers the KL; converged when the
  whole interval lies below the margin."""
  selected = [{"ce": {"reverse_kl": 0.10 + i * 1e-3, "forward_kl": 0.2, "steps": 100}}
              for i in range(4)]
  flat = [{"reverse_kl": s["ce"]["reverse_kl"] + 1e-3 * (-1) ** i, "forward_kl": 0.2,
           "steps_run": 200} for i, s in enumerate(selected)]
  lower = [{"reverse_kl": s["ce"]["reverse_kl"] - 0.03 - 1e-3 * i, "forward_kl": 0.15,
            "steps_run": 200} for i, s in enumerate(selected)]
  check = report.continued_check(selected, flat)
  assert check["continued_reverse_kl_drop"]["converged"] == "yes"
  assert check["continued_steps"] == [200] * 4 and check["selected_steps"] == [100] * 4
  check = report.continued_check(selected, lower)
  drop = check["continued_reverse_kl_drop"]
  np.testing.assert_allclose(drop["mean"], 0.03 + 1.5e-3)
  assert drop["converged"] == "no" and check["continued_forward_kl_drop"]["converged"] == "no"


def test_mixce_claims_are_tested_in_the_finetuning_regimes_only():
  summary = {"n": 5, "mean": -0.02, "low": -0.03, "high": -0.01, "improved": 5, "margin": 0.005,
             "higher_is_better": False}
  by_objective = {"mixce": {m: dict(summary, metric=m) for m in report.MARGINS}}
  rows = report.claims({"same": by_objective, "ft_d16": by_objective})
  found = {(r["regime"], r["objective"], r["metric"]): r["verdict"] for r in rows}
  assert ("same", "mixce", "reverse_kl") not in found
  assert found[("ft_d16", "mixce", "reverse_kl")] == "holds"
  assert found[("ft_d16", "mixce", "forward_kl")] == "holds"
