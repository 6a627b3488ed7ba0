"""Paired comparisons to CE, the papers' claims with verdicts, Markdown and the PR scatter plot.

Margins are declared here, before any run: a difference smaller than the margin counts as no
difference (EXPERIMENTS.md section 2). Log-perplexities (mean NLL, nats) use ±0.01 (±1 % of
perplexity); KLs ±0.005 nats; TV ±0.005; EMO cost ±0.002 and its debiased form ±0.001.
"""

from __future__ import annotations

from typing import NamedTuple

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
         ("emo_gap_oracle_prefixes", "EMO gap (P prefixes)", 4))


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
  return all(seed[name].get("finite", True) and "forward_kl" in seed[name] for seed in per_seed)


def compare(per_regime: dict, objectives: list[str]) -> dict:
  """``{regime: {objective: {metric: paired_comparison to CE}}}`` for every margin's metric;
  objectives with a non-finite run in some seed get ``{"unstable": True}``."""
  out = {}
  for regime, per_seed in per_regime.items():
    out[regime] = {}
    baseline = per_seed and _stable(per_seed, "ce")
    for name in objectives:
      if name == "ce" or not baseline:
        continue
      if not _stable(per_seed, name):
        out[regime][name] = {"unstable": True}
        continue
      out[regime][name] = {
          metric: paired_comparison([s[name][metric] for s in per_seed],
                                    [s["ce"][metric] for s in per_seed], margin)
          for metric, margin in MARGINS.items()}
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
  mean, low, high = t_interval(values)
  return mean, (high - low) / 2


def _cell(values: list[float], digits: int) -> str:
  mean, half = _mean_interval(values)
  return f"{mean:.{digits}f} ± {half:.{digits}f}"


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
      f"{config['student_steps']} steps of batch {config['batch_size']}, {config['seeds']} "
      f"seeds (same initialisation and batches for every objective of a seed)."), "",
      (f"Oracle against itself: PPL_test {self_['ppl_test']:.3f}, PPL_oracle "
      f"{self_['ppl_oracle']:.3f} (log-PPL standard errors {self_['log_ppl_test_se']:.4f}, "
      f"{self_['log_ppl_oracle_se']:.4f}); every divergence 0."), "",
      f"![precision-recall]({png_name})", "",
  ]
  for regime, per_seed in results["per_regime"].items():
    names = list(per_seed[0])
    lines += [f"## Regime `{regime}`", "",
              "| objective | " + " | ".join(h for _, h, _ in TABLE) + " |",
              "|---" * (len(TABLE) + 1) + "|"]
    for name in names:
      label = labels.get(name, name)
      if not _stable(per_seed, name):
        lines.append(f"| {label} | " + " | ".join("unstable" for _ in TABLE) + " |")
        continue
      lines.append(f"| {label} | " + " | ".join(
          _cell([s[name][key] for s in per_seed], digits) for key, _, digits in TABLE) + " |")
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
    lines.append("")
  lines += ["## Claims", "", "| regime | claim | metric | difference to CE | margin | verdict |",
            "|---|---|---|---|---|---|"]
  for c in results["claims"]:
    value = format_difference(c, 4) if c["n"] else "—"
    lines.append(f"| {c['regime']} | {c['statement']} | {c['metric']} ({c['claim']}) | {value} "
                 f"| ±{MARGINS[c['metric']].margin} | **{c['verdict']}** |")
  return "\n".join(lines) + "\n"


def plot(path: str, results: dict) -> None:
  """Precision–recall scatter: x = KL(P‖Q) (recall error), y = KL(Q‖P) (precision error), one
  faint point per seed and the mean with 95% error bars per objective; one panel per regime;
  logarithmic axes."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  regimes = list(results["per_regime"])
  labels = {name: info["label"] for name, info in results["objectives"].items()}
  fig, axes = plt.subplots(1, len(regimes), figsize=(6 * len(regimes), 4.8), squeeze=False)
  colors = plt.get_cmap("tab10")
  for ax, regime in zip(axes[0], regimes):
    per_seed = results["per_regime"][regime]
    for i, name in enumerate(n for n in per_seed[0] if n != "untrained"):
      if not _stable(per_seed, name):
        continue
      x = [s[name]["forward_kl"] for s in per_seed]
      y = [s[name]["reverse_kl"] for s in per_seed]
      (mx, hx), (my, hy) = _mean_interval(x), _mean_interval(y)
      ax.scatter(x, y, color=colors(i), alpha=0.3, s=12)
      ax.errorbar(mx, my, xerr=hx, yerr=hy, fmt="o", color=colors(i), capsize=3,
                  label=labels.get(name, name))
    ax.set_xscale("log", nonpositive="clip")  # EMO alone can sit an order of magnitude out
    ax.set_yscale("log", nonpositive="clip")
    ax.set_xlabel("forward KL(P‖Q), nats/token  (recall error →)")
    ax.set_ylabel("reverse KL(Q‖P), nats/token  (precision error →)")
    ax.set_title(f"student `{regime}`: {len(per_seed)} seeds, mean ± 95% CI")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)

