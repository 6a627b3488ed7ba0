"""Paired comparisons to CE, the papers' claims with verdicts, Markdown and the figure."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from benchmarks.lm import stats
from benchmarks.lm.objectives import BY_NAME
from benchmarks.machine import machine_summary

DECODINGS = ("unbiased", "top_p")
# Pre-declared margins (metric, margin, higher is better). Text statistics are compared as the
# absolute gap to the human continuations (closer to human is better).
MARGINS = {m.metric: m for m in (
    stats.Margin("mauve_hidden", 0.03, True),
    stats.Margin("mauve_tfidf", 0.03, True),
    stats.Margin("rep2_gap", 0.01, False),
    stats.Margin("rep3_gap", 0.01, False),
    stats.Margin("distinct2_gap", 0.01, False),
    stats.Margin("zipf_gap", 0.05, False),
    stats.Margin("test_nll", 0.01, False),          # ~1 % of perplexity
    stats.Margin("test_accuracy", 0.005, True),
    stats.Margin("ece", 0.005, False),
    stats.Margin("brier", 0.002, False),
    stats.Margin("entropy_gap", 0.01, False),      # |mean entropy - mean NLL|
    stats.Margin("forgetting_nll", 0.01, False),   # NLL on held-out pretraining-domain text
)}
SAMPLE_METRICS = ("mauve_hidden", "mauve_tfidf", "rep2_gap", "rep3_gap", "distinct2_gap",
                  "zipf_gap")
TOKEN_METRICS = ("test_nll", "test_accuracy", "ece", "brier", "entropy_gap", "forgetting_nll")


class Claim(NamedTuple):
  objective: str
  metric: str          # a MARGINS key, with "/decoding" for sample metrics
  claim: str           # "better" | "not worse"
  source: str


_EMO = "EMO paper (Ren et al., ICLR 2024) Table 1: higher MAUVE of unbiased samples than MLE"
_MIXCE = ("MixCE paper (Zhang et al., ACL 2023) and EMO Table 1: higher MAUVE of unbiased "
          "samples than MLE")
_TAILR = ("TaiLr paper (Ji et al., ICLR 2023): fewer degenerate (repetitive) samples "
          "without losing diversity")
CLAIMS = (
    *(Claim(o, f"{m}/unbiased", "better", _EMO) for o in ("emo", "emo_cap3")
      for m in ("mauve_hidden", "mauve_tfidf")),
    *(Claim("mixce", f"{m}/unbiased", "better", _MIXCE) for m in ("mauve_hidden", "mauve_tfidf")),
    *(c for o in ("tailr_open", "tailr") for c in (
        Claim(o, "rep2_gap/unbiased", "better", _TAILR),
        Claim(o, "distinct2_gap/unbiased", "not worse", _TAILR))),
)


def flat_metrics(model_result: dict, human: dict) -> dict:
  """The compared metrics of one model in one seed, by ``metric`` or ``metric/decoding``."""
  out = {
      "test_nll": model_result["test"]["nll"],
      "test_accuracy": model_result["test"]["accuracy"],
      "ece": model_result["test"]["ece"],
      "brier": model_result["test"]["brier"],
      "entropy_gap": abs(model_result["test"]["entropy_gap"]),
      "forgetting_nll": model_result["pretrain_val"]["nll"],
  }
  for decoding in DECODINGS:
    samples = model_result["samples"][decoding]
    out[f"mauve_hidden/{decoding}"] = samples["mauve_hidden"]
    out[f"mauve_tfidf/{decoding}"] = samples["mauve_tfidf"]
    for stat in ("rep2", "rep3", "distinct2", "zipf"):
      out[f"{stat}_gap/{decoding}"] = abs(samples[stat] - human["text"][stat])
  return out


def compare(per_seed: list[dict], objectives: list[str]) -> dict:
  """Paired comparison to CE of every metric of every objective (``per_seed``: one dict per
  seed, model name -> :func:`flat_metrics`)."""
  out = {}
  for name in objectives:
    if name == "ce":
      continue
    out[name] = {}
    for key in per_seed[0]["ce"]:
      margin = MARGINS[key.split("/")[0]]
      claim = next((c.claim for c in CLAIMS if c.objective == name and c.metric == key),
                   "better")
      out[name][key] = stats.paired_comparison([s[name][key] for s in per_seed],
                                               [s["ce"][key] for s in per_seed], margin, claim)
  return out


def _mean_sd(values) -> str:
  values = np.asarray(values, np.float64)
  return f"{values.mean():.3f} ± {values.std(ddof=1) if values.size > 1 else 0.0:.3f}"


def markdown(results: dict, plot_name: str) -> str:
  """The report: claims with verdicts, absolute metrics, paired differences, setup, machine."""
  comparisons = results["comparisons"]
  per_seed = results["flat"]
  names = [n for n in per_seed[0] if n not in ("untrained",)]
  n = len(per_seed)
  lines = [
      "# LM fine-tuning: CE vs EMO+CE vs TaiLr vs MixCE (paired seeds)", "",
      f"Command: `{results['command']}`", "",
      (f"{n} paired runs (pretrained base and fine-tuning seed). Differences are the objective "
      f"minus CE per seed: mean [95% t-interval] (seeds improving / {n}); verdicts against "
      "margins declared in `benchmarks/lm/report.py` before the run."), "",
      "## The papers' claims", "",
      "| objective | claim | metric (unbiased samples) | difference to CE | margin | verdict |",
      "|---|---|---|---|---:|---|",
  ]
  for c in CLAIMS:
    if c.objective not in comparisons:
      continue
    s = comparisons[c.objective][c.metric]
    kind = "better than CE" if c.claim == "better" else "not worse than CE"
    lines.append(f"| {BY_NAME[c.objective].label} | {kind} | {c.metric.split('/')[0]} | "
                 f"{stats.format_difference(s)} | {s['margin']:g} | **{s['verdict']}** |")
  lines += ["", "Claim sources: " + "; ".join(sorted({c.source for c in CLAIMS})) + ".", ""]
  human = results["human"]
  lines += [
      "## Metrics (mean ± sd over seeds, test split)", "",
      ("Human vs human (two halves of the reference continuations): MAUVE "
      f"{_mean_sd([h['mauve_hidden_halves'] for h in human])} (hidden-state features), "
      f"{_mean_sd([h['mauve_tfidf_halves'] for h in human])} (TF-IDF); human rep-2 "
      f"{_mean_sd([h['text']['rep2'] for h in human])}, distinct-2 "
      f"{_mean_sd([h['text']['distinct2'] for h in human])}, Zipf "
      f"{_mean_sd([h['text']['zipf'] for h in human])}."), "",
      ("| model | test ppl | accuracy | ECE | Brier | entropy − NLL | pretrain-domain ppl | "
      "MAUVE hidden (unbiased) | MAUVE TF-IDF (unbiased) | MAUVE hidden (top-p) | "
      "rep-2 (unbiased) | distinct-2 (unbiased) |"),
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name in ["untrained", *names]:
    rows = [r["models"][name] for r in results["seeds"]]
    label = {"untrained": "untrained (random init)", "pretrained": "pretrained base"}.get(
        name, BY_NAME[name].label if name in BY_NAME else name)
    cells = [
        _mean_sd([np.exp(r["test"]["nll"]) for r in rows]),
        _mean_sd([r["test"]["accuracy"] for r in rows]),
        _mean_sd([r["test"]["ece"] for r in rows]),
        _mean_sd([r["test"]["brier"] for r in rows]),
        _mean_sd([r["test"]["entropy_gap"] for r in rows]),
        _mean_sd([np.exp(r["pretrain_val"]["nll"]) for r in rows]),
        _mean_sd([r["samples"]["unbiased"]["mauve_hidden"] for r in rows]),
        _mean_sd([r["samples"]["unbiased"]["mauve_tfidf"] for r in rows]),
        _mean_sd([r["samples"]["top_p"]["mauve_hidden"] for r in rows]),
        _mean_sd([r["samples"]["unbiased"]["rep2"] for r in rows]),
        _mean_sd([r["samples"]["unbiased"]["distinct2"] for r in rows]),
    ]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  lines += ["", "## Paired differences to CE (all metrics)", "",
            "Text statistics are absolute gaps to the human continuations (lower = closer).",
            ""]
  keys = list(next(iter(comparisons.values())))
  lines.append("| metric | " + " | ".join(BY_NAME[o].label for o in comparisons) + " |")
  lines.append("|---|" + "---|" * len(comparisons))
  for key in keys:
    cells = [f"{stats.format_difference(comparisons[o][key])} {_short(comparisons[o][key])}"
             for o in comparisons]
    lines.append(f"| {key} | " + " | ".join(cells) + " |")
  lines += ["", f"![curves and paired differences]({plot_name})", "", "## Setup", ""]
  lines += [f"- {k}: {v}" for k, v in results["setup"].items()]
  load = results["load_average"]
  shared = ""
  if load["start"] is not None:
    shared = (f"; 1-minute load average {load['start']:.1f} at the start and {load['end']:.1f} "
              f"at the end of this invocation on {results['machine']['cpu_cores']} cores")
  lines += [f"- machine: {machine_summary(results['machine'])}",
            f"- wall time of this invocation: {results['wall_seconds']:.0f} s{shared}", ""]
  return "\n".join(lines)


def _short(summary: dict) -> str:
  return {stats.HOLDS: "✓", stats.DOES_NOT_HOLD: "✗", stats.INCONCLUSIVE: "?"}[
      summary["verdict"]]


def plot(path: str, results: dict) -> None:
  """Validation curves (mean over seeds) and paired differences with 95% intervals."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  comparisons = results["comparisons"]
  panels = ["mauve_hidden/unbiased", "mauve_tfidf/unbiased", "mauve_hidden/top_p",
            "rep2_gap/unbiased", "distinct2_gap/unbiased", "test_nll", "ece", "forgetting_nll"]
  fig, axes = plt.subplots(3, 3, figsize=(14, 11))
  ax = axes[0, 0]
  for name, curves in results["mean_curves"].items():
    ax.plot(curves["step"], curves["nll"], marker=".", label=BY_NAME[name].label)
  ax.set(xlabel="fine-tuning step", ylabel="nats")
  ax.set_title("validation NLL (mean over seeds)", fontsize=9)
  ax.legend(fontsize=7)
  names = list(comparisons)
  labels = [BY_NAME[o].label for o in names]
  for ax, key in zip(axes.flat[1:], panels):
    means = np.array([comparisons[o][key]["mean"] for o in names])
    lows = np.array([comparisons[o][key]["low"] for o in names])
    highs = np.array([comparisons[o][key]["high"] for o in names])
    y = np.arange(len(names))
    ax.errorbar(means, y, xerr=[means - lows, highs - means], fmt="o", capsize=3)
    margin = comparisons[names[0]][key]["margin"]
    ax.axvspan(-margin, margin, color="gray", alpha=0.2)
    ax.axvline(0, color="black", lw=0.8)
    better = "higher" if comparisons[names[0]][key]["higher_is_better"] else "lower"
    ax.set_title(f"{key} − CE ({better} is better)", fontsize=9)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
  fig.suptitle(f"{len(results['seeds'])} paired seeds; bars: 95% t-intervals of the paired "
               "difference to CE; grey: equivalence margin", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(json_path: str, results: dict, plot_fn: Callable[[str, dict], None],
                  markdown_fn: Callable[[dict, str], str]) -> str:
  """Writes ``results`` as JSON at ``json_path`` and, beside it, the PNG (``plot_fn(path,
  results)``) and the Markdown (``markdown_fn(results, png_name)``); returns the common stem.
  Shared by the experiments (LM fine-tuning, known oracle)."""
  os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
  with open(json_path, "w") as f:
    json.dump(results, f, indent=1)
  stem = os.path.splitext(json_path)[0]
  plot_fn(stem + ".png", results)
  with open(stem + ".md", "w") as f:
    f.write(markdown_fn(results, os.path.basename(stem) + ".png"))
  return stem
