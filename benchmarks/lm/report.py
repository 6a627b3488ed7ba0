"""Paired comparisons to CE per regime, the claims with sources and verdicts, the regime check,
MAUVE's measured noise, Markdown (with sample continuations) and the figure."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from benchmarks import outputs
from benchmarks.lm import stats
from benchmarks.machine import machine_summary

DECODINGS = ("unbiased", "greedy")
# Pre-declared margins (metric, margin, higher is better), fixed before the default run. The
# MAUVE margin (0.04) is set above the noise of one sampling run expected at 1000 samples per
# side and 3 k-means seeds (the report measures that noise and flags a margin below it). Text
# statistics are compared as the absolute gap to the human continuations (closer is better).
MARGINS = {m.metric: m for m in (
    stats.Margin("mauve_hidden", 0.04, True),
    stats.Margin("mauve_tfidf", 0.04, True),
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
PLATEAU_NOTE = ("plateau: the last quarter of fine-tuning lowered the best validation NLL by at "
                "most {tol:g} nats")


class Claim(NamedTuple):
  objective: str
  metric: str          # a MARGINS key, with "/decoding" for sample metrics
  claim: str           # "better" | "not worse"
  source: str


_EMO = "EMO paper (Ren et al., ICLR 2024) Table 1: higher MAUVE of unbiased samples than MLE"
_EMO_PPL = ("Su Jianlin's article on the EMO paper (kexue.fm/archives/9797): EMO-trained models even have lower "
            "test perplexity than MLE")
_MIXCE = ("MixCE paper (Zhang et al., ACL 2023) and EMO Table 1: higher MAUVE of unbiased "
          "samples than MLE")
_TAILR = ("TaiLr paper (Ji et al., ICLR 2023): fewer degenerate (repetitive) samples "
          "without losing diversity")
CLAIMS = (
    *(c for o in ("emo", "emo_cap3") for c in (
        Claim(o, "mauve_hidden/unbiased", "better", _EMO),
        Claim(o, "mauve_tfidf/unbiased", "better", _EMO),
        Claim(o, "test_nll", "better", _EMO_PPL))),
    *(Claim("mixce", f"{m}/unbiased", "better", _MIXCE) for m in ("mauve_hidden", "mauve_tfidf")),
    *(c for o in ("tailr_open", "tailr") for c in (
        Claim(o, "rep2_gap/greedy", "better", _TAILR),
        Claim(o, "rep2_gap/unbiased", "better", _TAILR),
        Claim(o, "distinct2_gap/unbiased", "not worse", _TAILR))),
)
ABLATION = ("emo", "emo_own", "emo_cehead", "emo_random", "emo_identity")
ABLATION_LABELS = {"emo": "frozen pretrained head (the paper)",
                   "emo_own": "own current head, stop-gradient (adaptive_emo)",
                   "emo_cehead": "CE-fine-tuned head", "emo_random": "random Gaussian",
                   "emo_identity": "identity (EMO = 1 − p_y)"}


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
  for decoding, samples in model_result["samples"].items():
    if "mauve_hidden" in samples:
      out[f"mauve_hidden/{decoding}"] = samples["mauve_hidden"]
      out[f"mauve_tfidf/{decoding}"] = samples["mauve_tfidf"]
    for stat in ("rep2", "rep3", "distinct2", "zipf"):
      out[f"{stat}_gap/{decoding}"] = abs(samples[stat] - human["text"][stat])
  return out


def room(metric: str, ce_values, human: dict) -> float | None:
  """CE's mean distance from the ideal of ``metric``: the gap itself for a gap to human text,
  the human ceiling minus CE for MAUVE; ``None`` where there is no ideal (perplexity, ...)."""
  base = metric.split("/")[0]
  mean = float(np.mean(ce_values))
  if base.endswith("_gap") and base != "entropy_gap":
    return mean
  if base.startswith("mauve_"):
    return float(human[f"ceiling_{base}"]) - mean
  return None


def compare(per_seed: list[dict], objectives: list[str], human: dict, regime: str) -> dict:
  """Paired comparison to CE of every shared metric of every objective (``per_seed``: one
  dict per seed, model name -> :func:`flat_metrics`)."""
  out = {}
  for name in objectives:
    if name == "ce":
      continue
    out[name] = {}
    for key in per_seed[0]["ce"]:
      if key not in per_seed[0][name]:
        continue
      margin = MARGINS[key.split("/")[0]]
      claim = next((c.claim for c in CLAIMS if c.objective == name and c.metric == key),
                   "better")
      ce = [s["ce"][key] for s in per_seed]
      summary = stats.paired_comparison([s[name][key] for s in per_seed], ce, margin, claim,
                                        room=room(key, ce, human))
      summary["detectable"] = margin.margin + (summary["high"] - summary["low"]) / 2
      summary["regime"] = regime
      out[name][key] = summary
  return out


def sampling_noise(per_seed: list[dict]) -> dict:
  """The standard deviation of one sampling run's MAUVE (CE, two runs per seed with their own
  samples and k-means seeds): ``sqrt(mean((run1 - run2)^2) / 2)`` per featuriser."""
  out = {}
  for features in ("hidden", "tfidf"):
    pairs = [[r[f"mauve_{features}"] for r in s["models"]["ce"]["samples"]["unbiased"]["runs"]]
             for s in per_seed]
    pairs = [p for p in pairs if len(p) >= 2]
    if pairs:
      out[f"mauve_{features}"] = math.sqrt(np.mean([(p[0] - p[1]) ** 2 for p in pairs]) / 2)
  return out


def regime_check(regime: dict, tol: float) -> dict:
  """Is the base competent and the adaptation light (base-to-CE test perplexity ratio), and
  have the runs plateaued (:func:`benchmarks.lm.evaluation.plateau_drop` at most ``tol``)?"""
  seeds = regime["seeds"]
  base_ppl = float(np.mean([math.exp(b["test"]["nll"]) for b in regime["bases"]]))
  ce_ppl = float(np.mean([math.exp(s["models"]["ce"]["test"]["nll"]) for s in seeds]))
  drops = {n: [s["records"][n]["plateau_drop"] for s in seeds] for n in regime["objectives"]}
  best_steps = [s["records"][n]["best_step"] for s in seeds for n in regime["objectives"]]
  best_at_end = {n: sum(s["records"][n]["best_step"] == regime["steps"] for s in seeds)
                 for n in regime["objectives"]}
  return {
      "base_test_ppl": base_ppl, "ce_test_ppl": ce_ppl, "ppl_ratio": base_ppl / ce_ppl,
      "light_adaptation": base_ppl / ce_ppl <= 1.5,
      "plateau_tol": tol, "plateau_drop_max": {n: float(max(v)) for n, v in drops.items()},
      "plateaued": all(max(v) <= tol for v in drops.values()),
      "best_at_last_step": best_at_end,
      "best_step_range": [int(min(best_steps)), int(max(best_steps))],
  }


def summarise(results: dict) -> None:
  """Adds per regime the flat metrics, comparisons, regime check and noise, the top-level
  ``regimes`` summary and every claim (with its regime) to ``results``."""
  config = results["config"]
  results["regimes"], results["claims"] = {}, []
  for key, regime in results["per_regime"].items():
    human = regime["human"]
    names = ["pretrained", *regime["objectives"]]
    flat = [{n: flat_metrics(s["models"][n], human) for n in names} for s in regime["seeds"]]
    regime["flat"] = flat
    regime["comparisons"] = compare(flat, regime["objectives"], human, key)
    regime["noise"] = sampling_noise(regime["seeds"])
    regime["check"] = regime_check(regime, config["plateau_tol"])
    bases_ppl = [math.exp(b["test"]["nll"]) for b in regime["bases"]]
    results["regimes"][key] = {
        "title": regime["title"],
        "base_test_ppl": regime["check"]["base_test_ppl"],
        "ce_test_ppl": regime["check"]["ce_test_ppl"],
        "ppl_ratio": regime["check"]["ppl_ratio"],
        "plateaued": regime["check"]["plateaued"],
        "mauve_samples_per_side": human["samples_per_side"],
        "human_ceiling_samples_per_side": human["samples_per_side"],
        "human_ceiling": {k: human[f"ceiling_mauve_{k}"] for k in ("hidden", "tfidf")},
        "kmeans_seeds": config["mauve_seeds"],
        "continuation_tokens": config["new_tokens"],
        "seeds": [s["seed"] for s in regime["seeds"]],
        "bases": len(regime["bases"]),
        "base_test_ppl_spread": (float(np.std(bases_ppl, ddof=1)) if len(bases_ppl) > 1
                                 else None),
        "fine_tuning": {"steps": regime["steps"], "lr": regime["lr"],
                        "streams": regime["streams"]},
        "mauve_noise_one_run": regime["noise"],
        "mixce_eta": (regime["mixce_selection"] or {}).get("eta", 0.5),
    }
    for c in CLAIMS:
      if c.objective in regime["comparisons"] and c.metric in regime["comparisons"][c.objective]:
        results["claims"].append(dict(regime["comparisons"][c.objective][c.metric],
                                      **c._asdict(), label=regime["labels"][c.objective]))


# ----------------------------------------------------------------------------------------------
# Markdown


def _mean_sd(values, digits: int = 3) -> str:
  values = np.asarray(values, np.float64)
  sd = values.std(ddof=1) if values.size > 1 else 0.0
  return f"{values.mean():.{digits}f} ± {sd:.{digits}f}"


def _fence(text: str) -> list[str]:
  return ["```", text.replace("```", "'''").rstrip(), "```"]


def _regime_markdown(key: str, regime: dict, summary: dict, config: dict) -> list[str]:
  check, human, comparisons = regime["check"], regime["human"], regime["comparisons"]
  n = len(regime["seeds"])
  labels = {"pretrained": "pretrained base", **regime["labels"]}
  lines = [f"## Regime {key}: {regime['title']}", "",
           (f"{n} paired fine-tuning seeds from {summary['bases']} shared base(s); "
            f"{regime['steps']} fine-tuning steps at lr {regime['lr']:g} on `{regime['streams'][0]}`;"
            f" MAUVE on {human['samples_per_side']} model vs {human['samples_per_side']} human "
            f"continuations of {config['new_tokens']} tokens, {config['mauve_seeds']} k-means "
            "seeds."), "",
           "**Regime check.** "
           f"Base test perplexity {check['base_test_ppl']:.2f}, CE {check['ce_test_ppl']:.2f}: "
           f"ratio {check['ppl_ratio']:.3f} ({'≤' if check['light_adaptation'] else '>'} 1.5, "
           f"{'light adaptation' if check['light_adaptation'] else 'not a light adaptation'}). "
           + PLATEAU_NOTE.format(tol=check["plateau_tol"]) + ": "
           + ("every run plateaued" if check["plateaued"] else "**not every run plateaued**")
           + " (largest last-quarter drop per objective: "
           + ", ".join(f"{labels[o]} {v:.4f}" for o, v in check["plateau_drop_max"].items())
           + f"); chosen checkpoints at steps {check['best_step_range'][0]}–"
           f"{check['best_step_range'][1]} of {regime['steps']}.", ""]
  noise = regime["noise"]
  if noise:
    flags = [f for f, v in noise.items() if v >= MARGINS[f].margin]
    lines += [("**MAUVE noise.** One sampling run's standard deviation (CE, two runs per "
               "seed): " + ", ".join(f"{f.split('_')[1]} {v:.4f}" for f, v in noise.items())
               + f"; margin {MARGINS['mauve_hidden'].margin:g} "
               + ("(**below the measured noise** for " + ", ".join(flags) + ")" if flags
                  else "(above it)") + "."), ""]
  lines += [(f"**Human ceiling** (two disjoint human sets, {human['samples_per_side']} per side):"
             f" MAUVE {human['ceiling_mauve_hidden']:.3f} hidden, "
             f"{human['ceiling_mauve_tfidf']:.3f} TF-IDF; human rep-2 "
             f"{human['text']['rep2']:.3f}, distinct-2 {human['text']['distinct2']:.3f}."), ""]
  if regime.get("mixce_selection"):
    sel = regime["mixce_selection"]
    lines += [(f"**MixCE η** chosen on validation MAUVE (hidden, seed {sel['seed']}, "
               f"{sel['validation_prompts']} validation prompts): "
               + ", ".join(f"η={e}: {v['mauve_hidden']:.3f}" for e, v in sel["scores"].items())
               + f" → η = {sel['eta']:g}, then fixed for every seed."), ""]
  lines += ["### Claims", "",
            ("| objective | claim (vs CE) | metric | difference to CE | margin | detectable | "
             "verdict |"), "|---|---|---|---|---:|---:|---|"]
  for c in CLAIMS:
    if c.objective not in comparisons or c.metric not in comparisons[c.objective]:
      continue
    s = comparisons[c.objective][c.metric]
    kind = "better" if c.claim == "better" else "not worse"
    note = ""
    if s["verdict"] == stats.NOT_TESTABLE:
      note = f" (CE is {s['room']:.4f} from the ideal, inside the margin)"
    lines.append(f"| {labels[c.objective]} | {kind} | {c.metric} | "
                 f"{stats.format_difference(s)} | {s['margin']:g} | {s['detectable']:.3f} | "
                 f"**{s['verdict']}**{note} |")
  lines += ["", ("*detectable*: margin + the interval's half-width, the smallest true "
                 "difference whose interval would clear the margin at this spread. "
                 + ("TaiLr γ=1e-7 equals CE at this scale (its weight differs from 1 only for "
                    "targets with p near 1e-7). " if "tailr_open" in comparisons else "")
                 + ("EMO+CE (cap 3) is the packaged `EMOLoss` (mode 1, ratio capped at 3); the "
                    "authors' LLaMA script differs (it drops sg(p_y) from EMO's value)."
                    if "emo_cap3" in comparisons else "")), ""]
  lines += ["### Metrics (mean ± sd over seeds, test split; unbiased samples unless marked)", "",
            ("| model | test ppl | accuracy | ECE | MAUVE hidden | MAUVE TF-IDF | rep-2 | "
             "distinct-2 | rep-2 greedy | code ppl (forgetting) |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
  for name in ["pretrained", *regime["objectives"]]:
    rows = [s["models"][name] for s in regime["seeds"]]
    greedy = [r["samples"]["greedy"]["rep2"] for r in rows if "greedy" in r["samples"]]
    cells = [_mean_sd([math.exp(r["test"]["nll"]) for r in rows], 2),
             _mean_sd([r["test"]["accuracy"] for r in rows]),
             _mean_sd([r["test"]["ece"] for r in rows]),
             _mean_sd([r["samples"]["unbiased"]["mauve_hidden"] for r in rows]),
             _mean_sd([r["samples"]["unbiased"]["mauve_tfidf"] for r in rows]),
             _mean_sd([r["samples"]["unbiased"]["rep2"] for r in rows]),
             _mean_sd([r["samples"]["unbiased"]["distinct2"] for r in rows]),
             _mean_sd(greedy) if greedy else "",
             _mean_sd([math.exp(r["pretrain_val"]["nll"]) for r in rows], 1)]
    lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
  lines += [(f"| human | | | | {human['ceiling_mauve_hidden']:.3f} (ceiling) | "
             f"{human['ceiling_mauve_tfidf']:.3f} (ceiling) | {human['text']['rep2']:.3f} | "
             f"{human['text']['distinct2']:.3f} | | |"), ""]
  if any(o in comparisons for o in ABLATION[1:]):
    lines += ["### EMO's cost: ablation of the uncapped EMO+CE mix (same seeds)", "",
              "| cost embedding | MAUVE hidden − CE | MAUVE TF-IDF − CE | test NLL − CE |",
              "|---|---|---|---|"]
    for name in ABLATION:
      if name in comparisons:
        c = comparisons[name]
        lines.append(f"| {ABLATION_LABELS[name]} | "
                     f"{stats.format_difference(c['mauve_hidden/unbiased'])} | "
                     f"{stats.format_difference(c['mauve_tfidf/unbiased'])} | "
                     f"{stats.format_difference(c['test_nll'], 4)} |")
    lines.append("")
  lines += ["### Paired differences to CE (all metrics)", "",
            "| metric | " + " | ".join(labels[o] for o in comparisons) + " |",
            "|---|" + "---|" * len(comparisons)]
  keys = list(next(iter(comparisons.values()), {}))
  for k in keys:
    cells = [f"{stats.format_difference(comparisons[o][k])} {_short(comparisons[o][k])}"
             if k in comparisons[o] else "" for o in comparisons]
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  lines += ["", (f"### Samples (seed {regime['seeds'][0]['seed']}, unbiased, three random test "
                 "prompts; the prompt, then the human continuation, then each model's)"), ""]
  for i, prompt in enumerate(human["prompts"]):
    lines += [f"**Prompt {i + 1}**", "", *_fence(prompt), "", "human:", "",
              *_fence(human["examples"][i]), ""]
    for name in ["pretrained", *regime["objectives"]]:
      examples = regime["seeds"][0]["models"][name]["samples"]["unbiased"].get("examples")
      if examples:
        lines += [f"{labels[name]}:", "", *_fence(examples[i]), ""]
  return lines


def markdown(results: dict, plot_name: str) -> str:
  """The report: per regime the regime check, claims with verdicts, metrics, ablation,
  samples; then setup and machine."""
  lines = ["# LM fine-tuning: CE vs EMO+CE vs TaiLr vs MixCE (paired seeds, two regimes)", "",
           f"Command: `{results['command']}`", ""]
  if not results.get("complete", True):
    lines += [("**Partial results**: the run stopped before every regime was finished; the "
               "regimes below are complete."), ""]
  lines += [("Differences are the objective minus CE per seed: mean [95% t-interval] (seeds "
             "improving / n); verdicts against margins declared in `benchmarks/lm/report.py` "
             "before the run: holds, does not hold, inconclusive at this size, not testable "
             "here (CE already within the margin of the ideal)."), "",
            "Claim sources: " + "; ".join(sorted({c.source for c in CLAIMS})) + ".", ""]
  for key, regime in results["per_regime"].items():
    lines += _regime_markdown(key, regime, results["regimes"][key], results["config"])
  lines += [f"![curves and paired differences]({plot_name})", "", "## Setup", ""]
  lines += [f"- {k}: {v}" for k, v in results["setup"].items()]
  pre = results["pretraining"]
  nlls = ", ".join(f"{p['best_nll']:.3f}" for p in pre)
  seconds = ", ".join(f"{p['seconds']:.0f} s" for p in pre)
  lines += [f"- pretraining: best validation NLL {nlls} ({seconds} of training)"]
  load = results.get("load_average") or {}
  shared = ""
  if load.get("start") is not None:
    shared = (f"; 1-minute load average {load['start']:.1f} at the start and {load['end']:.1f} "
              f"at the end of this invocation on {results['machine']['cpu_cores']} cores "
              "(shared machine)")
  lines += [f"- machine: {machine_summary(results['machine'])}",
            f"- wall time of this invocation: {results.get('wall_seconds', 0):.0f} s{shared}",
            ""]
  return "\n".join(lines)


def _short(summary: dict) -> str:
  return {stats.HOLDS: "✓", stats.DOES_NOT_HOLD: "✗", stats.INCONCLUSIVE: "?",
          stats.NOT_TESTABLE: "–"}[summary["verdict"]]


def plot(path: str, results: dict) -> None:
  """Sized for a documentation column: per regime, one panel above the other, the validation
  curves (mean over seeds) and the paired MAUVE differences to CE (both featurisers, one row per
  objective)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  regimes = list(results["per_regime"].items())
  heights = [h for _, regime in regimes for h in (2.6, 0.8 + 0.32 * len(regime["comparisons"]))]
  fig, axes = plt.subplots(len(heights), 1, figsize=(8, sum(heights) + 0.6),
                           gridspec_kw={"height_ratios": heights})
  for (key, regime), ax, diff_ax in zip(regimes, axes[::2], axes[1::2]):
    labels = regime["labels"]
    for name, curves in regime["mean_curves"].items():
      ax.plot(curves["step"], curves["nll"], marker=".", label=labels[name])
    ax.set_xlabel("fine-tuning step", fontsize=9)
    ax.set_ylabel("nats", fontsize=9)
    ax.set_title(f"regime {key}: validation NLL (mean over seeds)", fontsize=10)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    comparisons = regime["comparisons"]
    names = list(comparisons)
    y = np.arange(len(names))
    for offset, marker, metric in ((-0.15, "o", "mauve_hidden/unbiased"),
                                   (0.15, "s", "mauve_tfidf/unbiased")):
      means = np.array([comparisons[o][metric]["mean"] for o in names])
      lows = np.array([comparisons[o][metric]["low"] for o in names])
      highs = np.array([comparisons[o][metric]["high"] for o in names])
      featuriser = "hidden states" if "hidden" in metric else "TF-IDF"
      diff_ax.errorbar(means, y + offset, xerr=np.nan_to_num([means - lows, highs - means]),
                       fmt=marker,
                       capsize=3, markersize=4, label=f"MAUVE, {featuriser}")
    margin = MARGINS["mauve_hidden"].margin
    diff_ax.axvspan(-margin, margin, color="gray", alpha=0.2, label="margin")
    diff_ax.axvline(0, color="black", lw=0.8)
    diff_ax.set_title(f"regime {key}: MAUVE − CE, paired over seeds (95% t-intervals)",
                      fontsize=10)
    diff_ax.set_xlabel("difference to CE (higher is better)", fontsize=9)
    diff_ax.set_yticks(y)
    diff_ax.set_yticklabels([labels[o] for o in names], fontsize=8.5)
    diff_ax.set_ylim(len(names) - 0.5, -0.5)
    diff_ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(json_path: str, results: dict, plot_fn: Callable[[str, dict], None],
                  markdown_fn: Callable[[dict, str], str]) -> str:
  """Writes ``results`` as JSON at ``json_path`` and, beside it, the PNG (``plot_fn(path,
  results)``) and the Markdown (``markdown_fn(results, png_name)``); returns the common stem.
  Shared by the experiments (LM fine-tuning, known oracle).

  The report and the figure are made before anything is written, and every file is written to a
  temporary name and renamed (:mod:`benchmarks.outputs`): a report that fails leaves the
  previous files whole, never a truncated or empty one beside a new JSON."""
  stem = os.path.splitext(json_path)[0]
  text = markdown_fn(results, os.path.basename(stem) + ".png")
  with outputs.atomic_path(stem + ".png") as png:
    plot_fn(png, results)
    outputs.write_json(json_path, results)
    outputs.write_text(stem + ".md", text)
  return stem
