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

from benchmarks.lm.stats import Margin, format_difference, paired_comparison, t_interval
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
          "stopped_early": all(s[n].get("stopped_early", False) for n in names
                               for s in _seeds_with(per_seed, n)),
      }
  return out


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
  out: dict = {"vocab_sizes": [int(v) for v in sizes], "per_objective": {}}
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
  primary = out["per_objective"].get(TREND_PRIMARY[0], {}).get(TREND_PRIMARY[1])
  if primary is None:
    out.update(objective=TREND_PRIMARY[0], metric=TREND_PRIMARY[1], slope=float("nan"),
               low=float("nan"), high=float("nan"), n=0,
               verdict="not testable here (EMO+CE not in the sweep)")
  else:
    out.update(objective=TREND_PRIMARY[0], metric=TREND_PRIMARY[1], slope=primary["mean"],
               low=primary["low"], high=primary["high"], n=primary["n"],
               margin=primary["margin"], verdict=primary["verdict"],
               statement=("EMO's advantage grows with V: the paired slope of EMO+CE (uncapped, "
                          "realistic cost) − CE in reverse KL per doubling of V is below "
                          f"−{primary['margin']} nats"))
  return out


def claims(comparisons: dict) -> list[dict]:
  """Each claim of :data:`CLAIMS` in each regime, with its comparison and verdict."""
  rows = []
  for regime, by_objective in comparisons.items():
    for c in CLAIMS:
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
      f"architecture, `small` = d={config['small_d_model']}, {config['small_layers']} layer(s); "
      f"batches of {config['batch_size']} sequences, the same initialisation and batches for "
      f"every objective of a seed."), "",
      (f"Training to convergence: AdamW at a constant {config['student_lr']:g} after "
       f"{config['warmup_steps']} warm-up steps, validation NLL on {config['val_samples']} fresh "
       f"oracle samples (not the test samples) every {config['eval_every']} steps; a run stops "
       f"after {config['patience']} evaluations without a gain of {config['min_delta']:g} nats "
       f"(cap {config['student_steps']} steps) and is evaluated at its best validation "
       f"checkpoint. `emo`, `emo_cap3` and EMO alone use the realistic cost (the head of the "
       f"seed's CE student at its selected checkpoint); `*_oracle` the oracle's own head "
       f"(privileged). Seeds: {config['seeds']} for the main objectives of `same`, "
       f"{config['few_seeds']} for EMO alone, focal and the `small` regime."), "",
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
  lines += _convergence_lines(results) + _vocab_lines(results, labels)
  lines += ["## Claims", "", "| regime | claim | metric | difference to CE | margin | verdict |",
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
           "steps run, mean over objectives | every run stopped early |"),
           "|---|---|---|---|---|---|---|---|"]
  for regime, by_vocab in results["convergence"].items():
    for vocab, c in sorted(by_vocab.items(), key=lambda kv: int(kv[0])):
      run = _mean(c["steps_run_by_objective"].values())
      lines.append(f"| {regime} | {vocab} | {c['oracle_ppl_test']:.2f} | {c['ce_ppl_test']:.2f} "
                   f"| {c['ratio']:.3f} | {c['steps']:.0f} | {run:.0f} | "
                   f"{'yes' if c['stopped_early'] else 'no'} |")
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
  lines += ["", (f"**Primary test** ({trend['objective']}, {trend['metric']}): slope "
            f"{trend['slope']:+.4f} [{trend['low']:+.4f}, {trend['high']:+.4f}] → "
            f"**{trend['verdict']}**."), ""]
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
    for name in (n for n in per_seed[0] if n != "untrained"):
      seeds = _seeds_with(per_seed, name)
      if not _stable(per_seed, name):
        continue
      x = [s[name]["forward_kl"] for s in seeds]
      y = [s[name]["reverse_kl"] for s in seeds]
      (mx, hx), (my, hy) = _mean_interval(x), _mean_interval(y)
      ax.scatter(x, y, color=colors(order[name]), alpha=0.3, s=12)
      ax.errorbar(mx, my, xerr=hx, yerr=hy, fmt="o", color=colors(order[name]), capsize=3,
                  label=f"{labels.get(name, name)} ({len(seeds)})")
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
