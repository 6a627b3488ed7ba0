"""Paired comparisons to CE, the papers' claims with verdicts, the vocabulary trend, Markdown and
the plots.

Margins are declared here, before any run: a difference smaller than the margin counts as no
difference (EXPERIMENTS.md section 2). Log-perplexities (mean NLL, nats) use ±0.01 (±1 % of
perplexity); KLs ±0.005 nats; TV ±0.005; EMO cost ±0.002 and its debiased form ±0.001. The
vocabulary trend (slope of the paired EMO+CE - CE difference per doubling of ``V``) uses the
metric's own margin per doubling. The entropy gap ``H(Q) - H(P)`` along ``Q``'s prefixes is a
diagnostic (its ideal is 0, not "lower"): reported with intervals, no verdict.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from benchmarks.lm.stats import Margin, format_difference, paired_comparison, t_interval, t_quantile
from benchmarks.lm.stats import verdict as interval_verdict
from benchmarks.machine import machine_summary

MARGINS = {m.metric: m for m in (
    Margin("log_ppl_test", 0.01, False),
    Margin("log_ppl_oracle", 0.01, False),
    Margin("forward_kl", 0.005, False),
    Margin("reverse_kl", 0.005, False),
    Margin("tv_oracle_prefixes", 0.005, False),
    Margin("tv_student_prefixes", 0.005, False),
    Margin("emo_cost_oracle_prefixes", 0.002, False),
    Margin("emo_gap_oracle_prefixes", 0.001, False),
)}
TABLE = (("ppl_test", "PPL_test", 2), ("ppl_oracle", "PPL_oracle", 2),
         ("forward_kl", "KL(P‖Q)", 3), ("reverse_kl", "KL(Q‖P)", 3),
         ("tv_oracle_prefixes", "TV (P prefixes)", 3), ("tv_student_prefixes", "TV (Q prefixes)", 3),
         ("emo_cost_oracle_prefixes", "EMO cost (P prefixes)", 4),
         ("emo_gap_oracle_prefixes", "EMO gap (P prefixes)", 4),
         ("entropy_gap", "H(Q)−H(P) (Q prefixes)", 3), ("steps", "steps", 0))
TREND_METRICS = ("reverse_kl", "forward_kl", "log_ppl_oracle")
TREND_PRIMARY = ("emo", "reverse_kl")  # the verdict on "EMO's advantage grows with V"


class Claim(NamedTuple):
  """One paper claim tested on one objective and metric (``claim``: better / not worse)."""
  objective: str
  metric: str
  claim: str
  statement: str


CLAIMS = (
    Claim("tailr_open", "log_ppl_oracle", "better",
          "TaiLr (synthetic recipe γ=1e-7, min weight 0.2) lowers PPL_oracle below MLE's (Ji et "
          "al. 2023, synthetic experiment: sample quality under the oracle)"),
    Claim("tailr_open", "log_ppl_test", "not worse",
          "... while keeping PPL_test (coverage of the oracle's data) at MLE's level"),
    Claim("emo", "reverse_kl", "better",
          "EMO+CE (paper's uncapped mix) is more precision-oriented than MLE (Ren et al. 2024 §3: "
          "MLE is recall-prioritised): lower KL(Q‖P)"),
    Claim("emo", "forward_kl", "not worse",
          "... while balancing recall: KL(P‖Q) not worse than MLE's"),
    Claim("emo_cap3", "reverse_kl", "better", "the same with the packaged cap 3: lower KL(Q‖P)"),
    Claim("emo_cap3", "forward_kl", "not worse", "... and KL(P‖Q) not worse than MLE's"),
)

# Claims tested only in the fine-tuning regimes (``ft_*``), where the paper makes them.
FINETUNE_CLAIMS = (
    Claim("mixce", "reverse_kl", "better",
          "MixCE (Zhang et al. 2023: mixing reverse cross-entropy into MLE counters its "
          "over-generalisation) is more precise than MLE: lower KL(Q‖P)"),
    Claim("mixce", "forward_kl", "not worse", "... with KL(P‖Q) not worse than MLE's"),
)
FINETUNE_PREFIX = "ft_"
CONTINUED_METRICS = ("reverse_kl", "forward_kl")
TEMPERATURE_METRICS = ("reverse_kl", "forward_kl", "log_ppl_oracle", "log_ppl_test")


def _stable(per_seed: list[dict], name: str) -> bool:
  return all(seed[name].get("finite", True) and "forward_kl" in seed[name]
             for seed in per_seed if name in seed)


def _seeds_with(per_seed: list[dict], name: str) -> list[dict]:
  return [s for s in per_seed if name in s]


def paired_difference(method: list[float], baseline: list[float]) -> dict:
  """Mean paired difference ``method - baseline`` and its 95% t-interval (no verdict)."""
  differences = np.asarray(method, np.float64) - np.asarray(baseline, np.float64)
  mean, low, high = t_interval(differences)
  return {"n": int(differences.size), "mean": mean, "low": low, "high": high,
          "improved": int(np.sum(differences < 0))}


def compare(per_regime: dict, objectives: list[str]) -> dict:
  """``{regime: {objective: {metric: paired_comparison to CE}}}`` for every margin's metric (over
  the seeds that ran the objective), plus the entropy gap's paired difference; objectives with
  a non-finite run in some seed get ``{"unstable": True}``."""
  out = {}
  for regime, per_seed in per_regime.items():
    out[regime] = {}
    baseline = per_seed and _stable(per_seed, "ce")
    for name in objectives:
      seeds = _seeds_with(per_seed, name)
      if name == "ce" or not baseline or not seeds:
        continue
      if not _stable(per_seed, name):
        out[regime][name] = {"unstable": True}
        continue
      out[regime][name] = {
          metric: paired_comparison([s[name][metric] for s in seeds],
                                    [s["ce"][metric] for s in seeds], margin)
          for metric, margin in MARGINS.items()}
      out[regime][name]["entropy_gap"] = paired_difference(
          [s[name]["entropy_gap"] for s in seeds], [s["ce"]["entropy_gap"] for s in seeds])
  return out


def _mean(values) -> float:
  return float(np.mean(np.asarray(list(values), np.float64)))


def convergence(results: dict) -> dict:
  """``{regime: {V: {oracle_ppl_test, ce_ppl_test, ratio, steps, steps_by_objective}}}``:
  means over seeds at each objective's selected checkpoint (``steps`` is CE's)."""
  out: dict = {}
  main_vocab = str(results["config"]["vocab_size"])
  for regime in results.get("continued", {}):
    if regime.startswith(FINETUNE_PREFIX):
      out.setdefault(regime, {})[main_vocab] = _finetune_convergence(results, regime)
  for vocab, sweep in results["vocab_sweep"].items():
    for regime, per_seed in sweep["per_regime"].items():
      oracle_ppl = sweep["oracle"]["self"]["ppl_test"]
      ce_ppl = _mean(s["ce"]["ppl_test"] for s in per_seed if "ppl_test" in s["ce"])
      names = [n for n in per_seed[0] if n != "untrained"]
      out.setdefault(regime, {})[vocab] = {
          "oracle_ppl_test": oracle_ppl, "ce_ppl_test": ce_ppl, "ratio": ce_ppl / oracle_ppl,
          "steps": _mean(s["ce"]["steps"] for s in per_seed),
          "steps_by_objective": {n: _mean(s[n]["steps"] for s in _seeds_with(per_seed, n))
                                 for n in names},
          "steps_run_by_objective": {n: _mean(s[n]["steps_run"] for s in _seeds_with(per_seed, n))
                                     for n in names},
          "stopped_early": any(s[n].get("stopped_early", False) for n in names
                               for s in _seeds_with(per_seed, n)),
          "selected_in_last_quarter": _late_fraction(per_seed, names),
      }
      if vocab == main_vocab and regime in results.get("continued", {}):
        row = out[regime][vocab]
        row["paired_steps"] = {n: [s[n]["steps"] for s in _seeds_with(per_seed, n)]
                               for n in names}
        row.update(continued_check(per_seed, results["continued"][regime]))
  return out


def _late_fraction(per_seed: list[dict], names: list[str]) -> float:
  """The fraction of runs (every objective and seed) whose selected checkpoint lies in the last
  quarter of the steps run: near 1, the budget still paid at its end."""
  late = [s[n]["steps"] >= 0.75 * s[n]["steps_run"] for n in names
          for s in _seeds_with(per_seed, n)]
  return sum(late) / len(late) if late else float("nan")


def continued_check(per_seed: list[dict], continued: list[dict]) -> dict:
  """``continued_{metric}_drop`` for each of :data:`CONTINUED_METRICS`: per seed, the selected CE
  student's metric minus that of CE trained for twice its selected steps (positive: continuing
  lowers it), its mean with a 95% t-interval, and ``converged``: ``"yes"`` if the interval lies
  below the metric's margin, ``"no"`` if above, else ``"inconclusive"``; plus the step counts."""
  pairs = [(s["ce"], c) for s, c in zip(per_seed, continued) if c and "forward_kl" in c]
  out: dict = {"continued_steps": [c["steps_run"] for _, c in pairs],
               "selected_steps": [s["steps"] for s, _ in pairs]}
  for metric in CONTINUED_METRICS:
    drops = [s[metric] - c[metric] for s, c in pairs]
    margin = MARGINS[metric].margin
    if not drops:
      out[f"continued_{metric}_drop"] = {"n": 0, "converged": "not measured"}
      continue
    mean, low, high = t_interval(drops)
    converged = ("yes" if len(drops) > 1 and high < margin else
                 "no" if len(drops) > 1 and low > margin else "inconclusive")
    out[f"continued_{metric}_drop"] = {"n": len(drops), "mean": mean, "low": low, "high": high,
                                       "margin": margin, "per_seed": drops,
                                       "converged": converged}
  return out


def _finetune_convergence(results: dict, regime: str) -> dict:
  """The fine-tuning regime's checks: CE's PPL_test against the target oracle's and the
  pretrained student's (fine-tuning helps modestly: a base/CE ratio above 1 and below 2),
  selected steps of every objective (paired, per seed), the pretraining's last-quarter gain, and
  the continued-training check."""
  per_seed = results["per_regime"][regime]
  target = results["finetune"]["target"]["self"]["ppl_test"]
  names = [n for n in per_seed[0] if n != "base"]
  ce_ppl = _mean(s["ce"]["ppl_test"] for s in per_seed if "ppl_test" in s["ce"])
  base_ppl = _mean(s["base"]["ppl_test"] for s in per_seed)
  gains = []
  for s in per_seed:
    curve = s["base"]["pretraining"]["val_curve"]
    quarter = curve[: max(1, (3 * len(curve)) // 4)]
    gains.append(min(quarter) - min(curve))
  row = {"oracle_ppl_test": target, "ce_ppl_test": ce_ppl, "ratio": ce_ppl / target,
         "base_ppl_test": base_ppl, "base_ce_ratio": base_ppl / ce_ppl,
         "pretraining_last_quarter_gain": max(gains),
         "steps": _mean(s["ce"]["steps"] for s in per_seed),
         "steps_by_objective": {n: _mean(s[n]["steps"] for s in _seeds_with(per_seed, n))
                                for n in names},
         "steps_run_by_objective": {n: _mean(s[n]["steps_run"]
                                             for s in _seeds_with(per_seed, n)) for n in names},
         "paired_steps": {n: [s[n]["steps"] for s in _seeds_with(per_seed, n)] for n in names},
         "stopped_early": False, "selected_in_last_quarter": _late_fraction(per_seed, names)}
  row.update(continued_check(per_seed, results["continued"][regime]))
  return row


def temperature_control(results: dict) -> dict:
  """Per fine-tuning regime and objective: the temperature ``T`` at which CE's entropy along its
  own prefixes matches the objective's (per seed), CE's exact metrics there, and the paired
  difference objective − CE at ``T`` with the verdict on "more precise than CE at matched
  entropy" (reverse KL lower) and on recall (forward KL not worse); plus CE's mean curve."""
  out: dict = {}
  for regime, curves in results.get("temperature_curves", {}).items():
    per_seed = results["per_regime"][regime]
    pairs = [(s, c) for s, c in zip(per_seed, curves) if c]
    if not pairs:
      continue
    grid = [p["temperature"] for p in pairs[0][1]["curve"]]
    block: dict = {"curve": {"temperature": grid, **{
        m: [_mean(c["curve"][i][m] for _, c in pairs) for i in range(len(grid))]
        for m in (*TEMPERATURE_METRICS, "entropy_gap")}}, "objectives": {}}
    for name in pairs[0][1]["matched"]:
      rows = [(s[name], c["matched"][name]) for s, c in pairs if name in c["matched"]]
      entry = {"temperature": _mean(m["temperature"] for _, m in rows),
               "temperatures": [m["temperature"] for _, m in rows],
               "inside_grid": all(m["inside_grid"] for _, m in rows),
               "ce_at_temperature": {k: _mean(m[k] for _, m in rows)
                                     for k in (*TEMPERATURE_METRICS, "entropy_gap")}}
      for metric in TEMPERATURE_METRICS:
        claim = "not worse" if metric in ("forward_kl", "log_ppl_test") else "better"
        entry[metric] = paired_comparison([o[metric] for o, _ in rows],
                                          [m[metric] for _, m in rows], MARGINS[metric], claim)
      entry["verdict"] = entry["reverse_kl"]["verdict"]
      entry["statement"] = (f"{name} is more precise than CE sampled at the temperature of equal "
                            "entropy: lower KL(Q‖P)")
      block["objectives"][name] = entry
    out[regime] = block
  return out


def oracle_differences(vocab_sweep: dict, name: str, metric: str) -> list[tuple[int, float]]:
  """``(data vocabulary size, mean over seeds of objective − CE)`` for every oracle of the sweep
  (the first one of each size and its ``replicates``)."""
  points = []
  for sweep in vocab_sweep.values():
    for runs in (sweep["per_regime"], *(r["per_regime"] for r in sweep.get("replicates", []))):
      seeds = [s for s in runs.get("same", []) if name in s and metric in s[name]
               and metric in s["ce"]]
      if seeds:
        points.append((int(sweep["data_vocab_size"]),
                       _mean(s[name][metric] - s["ce"][metric] for s in seeds)))
  return points


def oracle_slope(points: list[tuple[int, float]], margin: Margin) -> dict:
  """The least-squares slope of the per-oracle difference on ``log2 V`` with the oracle as the
  unit: ``n`` oracles, a 95% t-interval with ``n - 2`` degrees of freedom from the residuals
  (oracle-to-oracle and seed-to-seed variation both in them), and the verdict on "the advantage
  grows with V" (a slope below ``-margin``); fewer than 3 oracles or 2 sizes: not testable."""
  x = np.log2([v for v, _ in points]).astype(np.float64)
  y = np.asarray([d for _, d in points], np.float64)
  out = {"n": len(points), "points": [[int(v), float(d)] for v, d in points],
         "margin": margin.margin}
  if len(points) < 3 or np.ptp(x) == 0:
    return dict(out, slope=float("nan"), low=float("nan"), high=float("nan"),
                verdict="not testable here (fewer than 3 oracles or one vocabulary size)")
  slope, intercept = np.polyfit(x, y, 1)
  residuals = y - (slope * x + intercept)
  se = float(np.sqrt(np.sum(residuals ** 2) / (len(x) - 2) / np.sum((x - x.mean()) ** 2)))
  half = t_quantile(len(x) - 1) * se  # t_quantile(n) has n - 1 degrees of freedom
  low, high = float(slope - half), float(slope + half)
  return dict(out, slope=float(slope), low=low, high=high, se=se,
              verdict=interval_verdict(-high, -low, margin.margin, "better"))


def trend_reading(trend: dict, sizes: list[int]) -> str:
  """What the oracle-unit interval supports, in words (for the report)."""
  span = f"V = {min(sizes)}–{max(sizes)}"
  interval = (f"{trend['slope']:+.4f} [{trend['low']:+.4f}, {trend['high']:+.4f}] nats per "
              f"doubling over {trend['n']} oracles")
  margin = trend["margin"]
  if not np.isfinite(trend["slope"]):
    return f"not testable at {span}: {trend['verdict']}"
  if trend["high"] < -margin:
    return f"support at {span}: EMO+CE's advantage over CE grows with V ({interval})"
  if trend["low"] > margin:
    return (f"no support at {span}: EMO+CE's gap to CE widens against it as V grows "
            f"({interval})")
  if trend["low"] >= -margin and trend["high"] <= margin:
    return f"no support at {span}: the gap to CE is flat within ±{margin} per doubling ({interval})"
  direction = "points the other way" if trend["slope"] > 0 else "points the claimed way"
  return (f"no support at {span}: the estimate {direction} but the interval is too wide to "
          f"decide ({interval})")


def swept_sizes(vocab_sweep: dict) -> list[str]:
  """The vocabulary sizes of the sweep that ran the ``same`` regime (the sweep's regime; a run
  of ``--regimes small`` has none), ascending."""
  return sorted((v for v, r in vocab_sweep.items() if "same" in r["per_regime"]), key=int)


def vocab_trend(vocab_sweep: dict, objectives: list[str]) -> dict:
  """The paired trend of ``objective - CE`` against ``log2 V`` over the sweep (``same`` regime).

  Per seed ``s``: the least-squares slope ``b_s`` of ``d_s(V) = m_objective(V) - m_CE(V)`` on
  ``log2 V`` (the change of the difference per doubling of ``V``); then the mean of ``b_s`` over
  seeds with its 95% t-interval and a verdict for "the advantage grows with V" (a negative slope
  for these lower-is-better metrics) against the metric's margin per doubling. Returns
  ``{objective: {metric: {...}}}`` and, at the top level, the primary test (:data:`TREND_PRIMARY`).
  """
  sizes = swept_sizes(vocab_sweep)
  if len(sizes) < 2:
    return {"objective": TREND_PRIMARY[0], "metric": TREND_PRIMARY[1], "slope": float("nan"),
            "low": float("nan"), "high": float("nan"), "n": 0,
            "verdict": "not testable here (fewer than two vocabulary sizes in the `same` "
                       "regime)"}
  x = np.log2([vocab_sweep[v]["data_vocab_size"] for v in sizes])
  out: dict = {"vocab_sizes": [int(v) for v in sizes], "per_objective": {},
               "oracles_per_vocab": {v: 1 + len(vocab_sweep[v].get("replicates", []))
                                     for v in sizes},
               "oracle_unit": {}}
  for name in objectives:
    seeds = min(len(_seeds_with(vocab_sweep[v]["per_regime"]["same"], name)) for v in sizes)
    for metric in TREND_METRICS:
      slopes = []
      for i in range(seeds):
        d = [vocab_sweep[v]["per_regime"]["same"][i][name][metric]
             - vocab_sweep[v]["per_regime"]["same"][i]["ce"][metric] for v in sizes]
        slopes.append(float(np.polyfit(x, d, 1)[0]))
      summary = paired_comparison(slopes, [0.0] * len(slopes), MARGINS[metric])
      summary["per_seed_slopes"] = slopes
      out["per_objective"].setdefault(name, {})[metric] = summary
      out["oracle_unit"].setdefault(name, {})[metric] = oracle_slope(
          oracle_differences(vocab_sweep, name, metric), MARGINS[metric])
  unit = out["oracle_unit"].get(TREND_PRIMARY[0], {}).get(TREND_PRIMARY[1])
  if unit is not None:
    out["reading"] = trend_reading(unit, [int(v) for v in sizes])
  if unit is not None and max(out["oracles_per_vocab"].values()) > 1:
    # several oracles per size: the test counts oracles, not seeds within one oracle
    out.update(objective=TREND_PRIMARY[0], metric=TREND_PRIMARY[1], slope=unit["slope"],
               low=unit["low"], high=unit["high"], n=unit["n"], unit="oracle",
               margin=unit["margin"], verdict=unit["verdict"],
               statement=("EMO's advantage grows with V: the slope over oracles of EMO+CE "
                          "(uncapped, realistic cost) − CE in reverse KL per doubling of V is "
                          f"below −{unit['margin']} nats"))
    return out
  primary = out["per_objective"].get(TREND_PRIMARY[0], {}).get(TREND_PRIMARY[1])
  if primary is None:
    out.update(objective=TREND_PRIMARY[0], metric=TREND_PRIMARY[1], slope=float("nan"),
               low=float("nan"), high=float("nan"), n=0,
               verdict="not testable here (EMO+CE not in the sweep)")
  else:
    out.update(objective=TREND_PRIMARY[0], metric=TREND_PRIMARY[1], slope=primary["mean"],
               low=primary["low"], high=primary["high"], n=primary["n"],
               margin=primary["margin"], verdict=primary["verdict"], unit="seed",
               statement=("EMO's advantage grows with V: the paired slope of EMO+CE (uncapped, "
                          "realistic cost) − CE in reverse KL per doubling of V is below "
                          f"−{primary['margin']} nats"))
  return out


def claims(comparisons: dict) -> list[dict]:
  """Each claim of :data:`CLAIMS` in each regime, with its comparison and verdict."""
  rows = []
  for regime, by_objective in comparisons.items():
    extra = FINETUNE_CLAIMS if regime.startswith(FINETUNE_PREFIX) else ()
    for c in (*CLAIMS, *extra):
      found = by_objective.get(c.objective)
      if found is None:
        continue
      if found.get("unstable"):
        rows.append(dict(c._asdict(), regime=regime, verdict="unstable (non-finite training)",
                         mean=float("nan"), low=float("nan"), high=float("nan"), improved=0, n=0))
        continue
      base = found[c.metric]  # verdict redone for the claim's kind (better / not worse)
      rows.append(dict(base, **c._asdict(), regime=regime,
                       verdict=_verdict(base, c.claim)))
  return rows


def _verdict(summary: dict, claim: str) -> str:
  sign = 1.0 if summary["higher_is_better"] else -1.0
  low, high = sorted((sign * summary["low"], sign * summary["high"]))
  return interval_verdict(low, high, summary["margin"], claim)


def _mean_interval(values: list[float]) -> tuple[float, float]:
  """Mean and 95% half-width (0 for one value: a point drawn without error bars)."""
  mean, low, high = t_interval(values)
  return mean, ((high - low) / 2 if len(values) > 1 else 0.0)


def _cell(values: list[float], digits: int) -> str:
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  mean, half = _mean_interval(values)
  return f"{mean:.{digits}f} ± {half:.{digits}f}"


def _column(per_seed: list[dict], name: str, key: str, digits: int) -> str:
  values = [s[name][key] for s in _seeds_with(per_seed, name) if key in s[name]]
  return _cell(values, digits) if values else "—"


def markdown(results: dict, png_name: str) -> str:
  """The report: setup, per-regime tables (mean ± 95% half-width), differences to CE, claims."""
  config, oracle = results["config"], results["oracle"]
  labels = {name: info["label"] for name, info in results["objectives"].items()}
  self_ = oracle["self"]
  lines = [
      "# Known-oracle experiment: exact precision and recall of each objective", "",
      (f"Command: `{results['command']}`. Machine: {machine_summary(results['machine'])} "
       f"({results['machine_note']}); wall time of the last invocation "
       f"{results['wall_seconds'] / 60:.1f} min (finished runs are cached)."), "",
      (f"Oracle P: transformer d={config['oracle_d_model']}, {config['oracle_layers']} layer(s), "
      f"vocabulary {results['data']['vocab_size']}, trained with CE on "
      f"{results['data']['chars']['pretrain_train']:,} characters of the Python standard "
      f"library (best validation NLL {oracle['training']['best_nll']:.3f} at step "
      f"{oracle['training']['best_step']}). Samples of {config['seq_len'] - 1} tokens after the "
      f"separator: {config['train_samples']} for training, {config['held_out_samples']} "
      f"held out, {config['student_samples']} per student. Students: `same` = the oracle's "
      f"architecture"
      + (f", `small` = d={config['small_d_model']}, {config['small_layers']} layer(s)"
         if "small" in config["regimes"] else "")
      + f"; batches of {config['batch_size']} sequences, the same initialisation and batches "
      f"for every objective of a seed."), "",
      (f"Training: AdamW, {config['warmup_steps']} warm-up steps to a peak of "
       f"{config['student_lr']:g}, then cosine decay to 10 % of it over "
       f"{config['student_steps']} steps"
       + (f" (`same`) or {config['small_student_steps']} (`small`)"
          if "small" in config["regimes"] else "")
       + f"; validation NLL on {config['val_samples']} fresh oracle samples (not the test "
       f"samples) every {config['eval_every']} steps; a run is evaluated at its best validation "
       f"checkpoint (the continued-training check below says whether the budget suffices). "
       f"`emo`, `emo_cap3` and EMO alone use the realistic cost (the head of the seed's CE "
       f"student at its selected checkpoint); `*_oracle` the oracle's own head (privileged). "
       f"Seeds: {config['seeds']} for the main objectives of `same`, {config['few_seeds']} for "
       f"EMO alone" + (", focal and the `small` regime" if "small" in config["regimes"]
                       else " and focal")
       + f"; {min(config['sweep_seeds'], config['seeds'])} per further oracle of the "
       f"vocabulary sweep."), "",
      (f"Oracle against itself: PPL_test {self_['ppl_test']:.3f}, PPL_oracle "
      f"{self_['ppl_oracle']:.3f} (log-PPL standard errors {self_['log_ppl_test_se']:.4f}, "
      f"{self_['log_ppl_oracle_se']:.4f}); every divergence 0."), "",
      f"![precision-recall]({png_name})", "",
  ]
  for regime, per_seed in results["per_regime"].items():
    names = list(per_seed[0])
    lines += [f"## Regime `{regime}`", "",
              "| objective | seeds | " + " | ".join(h for _, h, _ in TABLE) + " |",
              "|---" * (len(TABLE) + 2) + "|"]
    for name in names:
      label = labels.get(name, name)
      count = len(_seeds_with(per_seed, name))
      if not _stable(per_seed, name):
        lines.append(f"| {label} | {count} | " + " | ".join("unstable" for _ in TABLE) + " |")
        continue
      lines.append(f"| {label} | {count} | " + " | ".join(
          _column(per_seed, name, key, digits) for key, _, digits in TABLE) + " |")
    lines += ["", ("Difference to CE, mean [95% interval] (seeds improving); lower is better "
              "for all:"), "",
              "| objective | " + " | ".join(m for m in MARGINS) + " |",
              "|---" * (len(MARGINS) + 1) + "|"]
    for name, by_metric in results["comparisons"][regime].items():
      if by_metric.get("unstable"):
        lines.append(f"| {labels.get(name, name)} | unstable |" + " |" * (len(MARGINS) - 1))
        continue
      lines.append(f"| {labels.get(name, name)} | " + " | ".join(
          format_difference(by_metric[m], 4) for m in MARGINS) + " |")
    lines += ["", ("Sharpening diagnostic, paired difference to CE of H(Q) − H(P) along Q's own "
              "prefixes (negative: sharper than CE; log PPL_oracle = H(Q) + KL(Q‖P) there):"), "",
              "| objective | ΔH(Q)−H(P) |", "|---|---|"]
    for name, by_metric in results["comparisons"][regime].items():
      if not by_metric.get("unstable"):
        lines.append(f"| {labels.get(name, name)} | "
                     f"{format_difference(by_metric['entropy_gap'], 4)} |")
    lines.append("")
  lines += _convergence_lines(results) + _finetune_lines(results, labels)
  lines += _temperature_lines(results, labels) + _vocab_lines(results, labels)
  lines += ["## Claims", "",
            ("Regimes: `same` (the oracle's architecture, from scratch) is the well-specified "
             "control. There EMO's per-token loss Σ_i q_i c(i, y), linear in the student's "
             "distribution q, is not a proper scoring rule, so mixed into CE it is expected to "
             "cost both KLs and to sharpen Q; the measurement tests that expectation. The "
             "paper's claim is about fine-tuning a pretrained, misspecified model with a frozen "
             "copy of its head as the cost"
             + (", tested in the `ft_*` regimes. " if "finetune" in results else ". ")
             + "A regime counts as trained to convergence only where the continued-training "
             "check says so."), "",
            "| regime | claim | metric | difference to CE | margin | verdict |",
            "|---|---|---|---|---|---|"]
  for c in results["claims"]:
    value = format_difference(c, 4) if c["n"] else "—"
    lines.append(f"| {c['regime']} | {c['statement']} | {c['metric']} ({c['claim']}) | {value} "
                 f"| ±{MARGINS[c['metric']].margin} | **{c['verdict']}** |")
  return "\n".join(lines) + "\n"


def _convergence_lines(results: dict) -> list[str]:
  lines = ["## Convergence", "", ("Means over seeds at the selected checkpoints; target: CE's "
           "PPL_test within 1.25× the oracle's own in `same`."), "",
           ("| regime | V | oracle PPL_test | CE PPL_test | ratio | CE steps (selected) | "
           "steps run, mean over objectives | runs selected in the last quarter |"),
           "|---|---|---|---|---|---|---|---|"]
  for regime, by_vocab in results["convergence"].items():
    for vocab, c in sorted(by_vocab.items(), key=lambda kv: int(kv[0])):
      run = _mean(c["steps_run_by_objective"].values())
      lines.append(f"| {regime} | {vocab} | {c['oracle_ppl_test']:.2f} | {c['ce_ppl_test']:.2f} "
                   f"| {c['ratio']:.3f} | {c['steps']:.0f} | {run:.0f} | "
                   f"{c['selected_in_last_quarter']:.0%} |")
  return lines + [""]


def _drop(check: dict) -> str:
  if not check.get("n"):
    return "not measured"
  return (f"{check['mean']:+.4f} [{check['low']:+.4f}, {check['high']:+.4f}] "
          f"(converged: {check['converged']})")


def _continued_lines(results: dict) -> list[str]:
  if not any("continued_reverse_kl_drop" in row for by_vocab in results["convergence"].values()
             for row in by_vocab.values()):
    return []
  lines = ["### Continued-training check", "",
           ("Per seed, the selected CE student's KL minus that of CE trained for twice its "
            "selected steps (the same recipe and batches, the learning rate decaying over the "
            "longer run: cosine from scratch, linear when fine-tuning), evaluated at its last "
            "step, mean [95% interval] in nats; converged if the interval lies below the margin "
            "(±0.005)."), "",
           ("| regime | selected steps (CE, per seed) | continued steps | reverse KL drop | "
            "forward KL drop |"), "|---|---|---|---|---|"]
  for regime, by_vocab in results["convergence"].items():
    for row in by_vocab.values():
      if "continued_reverse_kl_drop" in row:
        lines.append(f"| {regime} | {row['selected_steps']} | {row['continued_steps']} | "
                     f"{_drop(row['continued_reverse_kl_drop'])} | "
                     f"{_drop(row['continued_forward_kl_drop'])} |")
  return lines + [""]


def _finetune_lines(results: dict, labels: dict) -> list[str]:
  if "finetune" not in results:
    return _continued_lines(results)
  target = results["finetune"]["target"]
  config = results["config"]
  lines = ["## Fine-tuning regime", "",
           (f"Target oracle P: the oracle P0 trained further with CE for {config['shift_steps']} "
            f"steps on the Python reference manual. KL(P‖P0) = {target['kl_p_p0']:.4f} ± "
            f"{target['kl_p_p0_se']:.4f} nats/token along P's samples, KL(P0‖P) = "
            f"{target['kl_p0_p']:.4f} along P0's; P on its own samples: PPL_test "
            f"{target['self']['ppl_test']:.2f}, PPL_oracle {target['self']['ppl_oracle']:.2f}."),
           "",
           (f"Students (smaller than P: misspecified) pretrained with CE on P0's "
            f"{config['train_samples']} samples for {config['pretrain_steps']} steps (cosine "
            f"decay, best by P0 validation NLL), then fine-tuned from that checkpoint on "
            f"{config['target_train_samples']} P samples for the epochs below "
            f"(AdamW, peak {config['finetune_lr']:g}, linear decay to 0, best checkpoint by the "
            f"NLL of {config['target_val_samples']} P validation samples). EMO cost: a frozen "
            "copy of the pretrained student's own head."), "",
           ("| regime | student | seeds | epochs | fine-tuning steps | PPL_test: base | CE | P | "
            "base/CE | pretraining gain, last quarter |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
  for regime, info in results["finetune"].items():
    if regime == "target":
      continue
    row = results["convergence"][regime][str(config["vocab_size"])]
    student = info["student"]
    lines.append(f"| {regime} | d={student['d_model']}, {student['layers']} layer(s) | "
                 f"{info['seeds']} | {info['epochs']} | {info['steps']} | "
                 f"{row['base_ppl_test']:.2f} | "
                 f"{row['ce_ppl_test']:.2f} | {row['oracle_ppl_test']:.2f} | "
                 f"{row['base_ce_ratio']:.3f} | {row['pretraining_last_quarter_gain']:.4f} |")
  return lines + [""] + _continued_lines(results)


def _temperature_lines(results: dict, labels: dict) -> list[str]:
  control = results.get("temperature_control")
  if not control:
    return []
  lines = ["## Temperature control (fine-tuning regimes)", "",
           ("Per seed, CE's fine-tuned student sampled at the temperature T whose entropy along "
            "its own prefixes equals the objective's; paired difference objective − CE at T, "
            "mean [95% interval] (seeds better), and the verdict on \"more precise than CE at "
            "matched entropy\" (reverse KL, margin ±0.005)."), "",
           ("| regime | objective | matched T (mean) | inside the grid | Δ reverse KL | "
            "Δ forward KL | verdict (precision at matched entropy) |"),
           "|---|---|---|---|---|---|---|"]
  for regime, block in control.items():
    for name, entry in block["objectives"].items():
      lines.append(f"| {regime} | {labels.get(name, name)} | {entry['temperature']:.3f} | "
                   f"{'yes' if entry['inside_grid'] else 'no'} | "
                   f"{format_difference(entry['reverse_kl'], 4)} | "
                   f"{format_difference(entry['forward_kl'], 4)} | **{entry['verdict']}** |")
  return lines + [""]


def _vocab_lines(results: dict, labels: dict) -> list[str]:
  lines = ["## Vocabulary sweep (`same` regime, realistic cost)", "",
           "Paired difference to CE, mean [95% interval] (seeds improving):", "",
           "| V | objective | reverse KL | forward KL | log PPL_oracle | ΔH(Q)−H(P) |",
           "|---|---|---|---|---|---|"]
  for vocab, by_objective in sorted(results["vocab_comparisons"].items(),
                                    key=lambda kv: int(kv[0])):
    for name, by_metric in by_objective.items():
      if by_metric.get("unstable"):
        lines.append(f"| {vocab} | {labels.get(name, name)} | unstable | | | |")
        continue
      lines.append(f"| {vocab} | {labels.get(name, name)} | " + " | ".join(
          format_difference(by_metric[m], 4) for m in (*TREND_METRICS, "entropy_gap")) + " |")
  trend = results["vocab_trend"]
  lines += ["", ("Trend: per seed, the least-squares slope of the difference on log2 V (per "
            "doubling of V); mean [95% interval] over seeds (seeds with a negative slope), "
            "margin = the metric's:"), "",
            "| objective | metric | slope per doubling | verdict (advantage grows with V) |",
            "|---|---|---|---|"]
  for name, by_metric in trend.get("per_objective", {}).items():
    for metric, t in by_metric.items():
      lines.append(f"| {labels.get(name, name)} | {metric} | {format_difference(t, 4)} | "
                   f"{t['verdict']} |")
  if "oracle_unit" not in trend:
    return lines + ["", (f"**Primary test** ({trend['objective']}, {trend['metric']}): slope "
                         f"{trend['slope']:+.4f} [{trend['low']:+.4f}, {trend['high']:+.4f}] → "
                         f"**{trend['verdict']}**."), ""]
  lines += ["", ("With the oracle as the unit (per oracle the mean over seeds of the difference; "
            "least-squares slope over oracles on log2 V, t-interval with n − 2 degrees of "
            f"freedom); oracles per V: {trend.get('oracles_per_vocab', {})}:"), "",
            "| objective | metric | oracles | slope per doubling [95% CI] | verdict |",
            "|---|---|---|---|---|"]
  for name, by_metric in trend.get("oracle_unit", {}).items():
    for metric, t in by_metric.items():
      lines.append(f"| {labels.get(name, name)} | {metric} | {t['n']} | {t['slope']:+.4f} "
                   f"[{t['low']:+.4f}, {t['high']:+.4f}] | {t['verdict']} |")
  lines += ["", (f"**Primary test** ({trend['objective']}, {trend['metric']}, unit: "
            f"{trend.get('unit', 'seed')}): slope {trend['slope']:+.4f} [{trend['low']:+.4f}, "
            f"{trend['high']:+.4f}] → **{trend['verdict']}**. "
            f"{trend.get('reading', '')}"), ""]
  return lines


def plot(path: str, results: dict) -> None:
  """Top row: precision–recall scatter per regime (x = KL(P‖Q), recall error; y = KL(Q‖P),
  precision error; a faint point per seed, the mean with 95% error bars per objective;
  logarithmic axes). Bottom row: the same scatter per vocabulary size (marker = V) for the
  sweep's objectives, and the paired EMO+CE − CE difference against V with 95% intervals."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  regimes = list(results["per_regime"])
  labels = {name: info["label"] for name, info in results["objectives"].items()}
  columns = max(len(regimes), 2)
  fig, axes = plt.subplots(2, columns, figsize=(6.5 * columns, 10), squeeze=False)
  colors = plt.get_cmap("tab10")
  order = {name: i for i, name in enumerate(results["objectives"])}
  for ax, regime in zip(axes[0], regimes):
    per_seed = results["per_regime"][regime]
    for name in (n for n in per_seed[0] if n not in ("untrained", "base")):
      seeds = _seeds_with(per_seed, name)
      if not _stable(per_seed, name):
        continue
      x = [s[name]["forward_kl"] for s in seeds]
      y = [s[name]["reverse_kl"] for s in seeds]
      (mx, hx), (my, hy) = _mean_interval(x), _mean_interval(y)
      ax.scatter(x, y, color=colors(order[name]), alpha=0.3, s=12)
      ax.errorbar(mx, my, xerr=hx, yerr=hy, fmt="o", color=colors(order[name]), capsize=3,
                  label=f"{labels.get(name, name)} ({len(seeds)})")
    curve = results.get("temperature_control", {}).get(regime, {}).get("curve")
    if curve:
      ax.plot(curve["forward_kl"], curve["reverse_kl"], "k.-", lw=1, ms=4,
              label="CE at temperature T (mean over seeds)")
      for t, fx, ry in zip(curve["temperature"], curve["forward_kl"], curve["reverse_kl"]):
        ax.annotate(f"T={t:g}", (fx, ry), fontsize=6, xytext=(3, 3), textcoords="offset points")
    _pr_axes(ax, f"student `{regime}` (seeds), mean ± 95% CI")
    ax.legend(fontsize=7, loc="best")
  for ax in axes[0][len(regimes):]:
    ax.axis("off")
  sweep = results["vocab_sweep"]
  sizes = swept_sizes(sweep)
  if not sizes:  # no `same` regime: no sweep to draw
    for ax in axes[1]:
      ax.axis("off")
    axes[1][0].text(0.5, 0.5, "no vocabulary sweep (it runs the `same` regime)",
                    ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return
  markers = "osD^v<>p"
  ax = axes[1][0]
  names = [n for n in results["objectives"] if n in results["config"]["sweep_objectives"]]
  for j, vocab in enumerate(sizes):
    per_seed = sweep[vocab]["per_regime"]["same"]
    for name in names:
      if not _stable(per_seed, name):
        continue
      seeds = _seeds_with(per_seed, name)
      (mx, hx) = _mean_interval([s[name]["forward_kl"] for s in seeds])
      (my, hy) = _mean_interval([s[name]["reverse_kl"] for s in seeds])
      ax.errorbar(mx, my, xerr=hx, yerr=hy, fmt=markers[j % len(markers)],
                  color=colors(order[name]), capsize=3,
                  label=f"{labels.get(name, name)}, V={vocab}")
  _pr_axes(ax, "`same` regime per vocabulary size (realistic EMO cost)")
  ax.legend(fontsize=7, loc="best", ncol=2)
  ax = axes[1][1]
  styles = {"reverse_kl": "-", "forward_kl": "--"}
  for name in (n for n in names if n != "ce"):
    for metric, style in styles.items():
      rows = [results["vocab_comparisons"].get(v, {}).get(name, {}).get(metric) for v in sizes]
      if any(r is None for r in rows):
        continue
      x = [sweep[v]["data_vocab_size"] for v in sizes]
      mean = np.asarray([r["mean"] for r in rows])
      err = np.nan_to_num(np.asarray([[r["mean"] - r["low"] for r in rows],
                                      [r["high"] - r["mean"] for r in rows]]))  # 1 seed: none
      ax.errorbar(x, mean, yerr=err, fmt="o" + style, color=colors(order[name]), capsize=3,
                  label=f"{labels.get(name, name)}: {metric}")
  ax.axhline(0.0, color="black", lw=0.8)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("vocabulary size V (log2 scale)")
  ax.set_ylabel("EMO+CE − CE, nats/token (below 0: EMO better)")
  ax.set_title("paired difference to CE against V, mean ± 95% CI")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  for ax in axes[1][2:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=100)  # a temporary name, renamed by the caller (write_results)
  plt.close(fig)


def _pr_axes(ax, title: str) -> None:
  ax.set_xscale("log", nonpositive="clip")  # EMO alone can sit an order of magnitude out
  ax.set_yscale("log", nonpositive="clip")
  ax.set_xlabel("forward KL(P‖Q), nats/token  (recall error →)")
  ax.set_ylabel("reverse KL(Q‖P), nats/token  (precision error →)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
