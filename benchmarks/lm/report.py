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


class Claim(NamedTuple):
  objective: str
  metric: str          # a MARGINS key, with "/decoding" for sample metrics
  claim: str           # "better" | "not worse"
  source: str
  baseline: str = "ce"  # "ce" | "ce_matched" (CE at the temperature matching the objective)


_EMO = "EMO paper (Ren et al., ICLR 2024) Table 1: higher MAUVE of unbiased samples than MLE"
_EMO_PPL = ("Su Jianlin's article on the EMO paper (kexue.fm/archives/9797): EMO-trained models "
            "even have lower test perplexity than MLE")
_MIXCE = ("MixCE paper (Zhang et al., ACL 2023) and EMO Table 1: higher MAUVE of unbiased "
          "samples than MLE")
_TAILR = ("TaiLr paper (Ji et al., ICLR 2023): fewer degenerate (repetitive) samples "
          "without losing diversity")
_MATCHED = ("the same EMO claim against CE sampled at the temperature matching the EMO arm's "
            "sample entropy (is the gain more than sharpening?)")
CLAIMS = (
    *(c for o in ("emo", "emo_cap3") for c in (
        Claim(o, "mauve_tfidf/unbiased", "better", _EMO),
        Claim(o, "mauve_tfidf/unbiased", "better", _MATCHED, "ce_matched"),
        Claim(o, "mauve_hidden/unbiased", "better", _EMO),
        Claim(o, "test_nll", "better", _EMO_PPL))),
    *(Claim("mixce", f"{m}/unbiased", "better", _MIXCE) for m in ("mauve_tfidf", "mauve_hidden")),
    *(c for o in ("tailr_open", "tailr") for c in (
        Claim(o, "rep2_gap/greedy", "better", _TAILR),
        Claim(o, "rep2_gap/unbiased", "better", _TAILR),
        Claim(o, "distinct2_gap/unbiased", "not worse", _TAILR))),
)
SAME_NLL = 1e-4  # test NLLs this close (nats) are the same model up to float error
PRIMARY = "mauve_tfidf"
FEATURISERS = {"mauve_tfidf": "code-token TF-IDF (primary)",
               "mauve_hidden": "base hidden states: closeness to the base (secondary)"}
WORD_FEATURISERS = dict(FEATURISERS, mauve_tfidf="word TF-IDF (primary)")
"""Labels of results made before the TF-IDF featuriser split code tokens (it split words)."""


def featuriser_labels(config: dict) -> dict:
  """The featurisers' labels for results made with ``config``."""
  return FEATURISERS if "primary_featuriser" in config else WORD_FEATURISERS
EQUALS_CE = {"tailr_open": "equals CE at this scale: its weight p/(γ + (1-γ)p) with γ = 1e-7 is "
                           "below 0.99 only for targets with p < 1e-5"}
"""Objectives that are CE at this scale: their claims are not testable here."""
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
      if name in EQUALS_CE:
        summary["verdict"] = stats.NOT_TESTABLE
        summary["reason"] = EQUALS_CE[name]
      summary["regime"] = regime
      out[name][key] = summary
  return out


MATCHED_METRICS = ("mauve_tfidf/unbiased", "mauve_hidden/unbiased", "rep2_gap/unbiased",
                   "distinct2_gap/unbiased")


def matched_flat(seed: dict, arm: str, human: dict) -> dict:
  """The sample metrics of CE at the temperature matching ``arm`` in one seed."""
  samples = seed["matched"][arm]["samples"]
  return {"mauve_tfidf/unbiased": samples["mauve_tfidf"],
          "mauve_hidden/unbiased": samples["mauve_hidden"],
          "rep2_gap/unbiased": abs(samples["rep2"] - human["text"]["rep2"]),
          "distinct2_gap/unbiased": abs(samples["distinct2"] - human["text"]["distinct2"])}


def compare_matched(regime: dict, flat: list[dict]) -> dict:
  """Each matched EMO arm against CE at its matched temperature (paired over seeds), with the
  matched temperatures and entropies."""
  out = {}
  human = regime["human"]
  for arm in regime.get("matched_arms") or []:
    seeds = regime["seeds"]
    baseline = [matched_flat(s, arm, human) for s in seeds]
    out[arm] = {"temperatures": [s["matched"][arm]["temperature"] for s in seeds],
                "target_entropy": [s["matched"][arm]["target_entropy"] for s in seeds],
                "ce_entropy": [s["matched"][arm]["ce_entropy"] for s in seeds],
                "ce_entropy_at_1": [s["matched"][arm]["ce_entropy_at_1"] for s in seeds]}
    for key in MATCHED_METRICS:
      claim = next((c.claim for c in CLAIMS if c.objective == arm and c.metric == key
                    and c.baseline == "ce_matched"), "better")
      ce = [b[key] for b in baseline]
      summary = stats.paired_comparison([f[arm][key] for f in flat], ce,
                                        MARGINS[key.split("/")[0]], claim,
                                        room=room(key, ce, human))
      summary["regime"] = regime["key"]
      summary["baseline"] = "ce_matched"
      out[arm][key] = summary
  return out


def selected_step_correlation(regime: dict, flat: list[dict]) -> dict:
  """Within-seed correlation, over every fine-tuned model, of the selected checkpoint step
  with each featuriser's MAUVE (the hidden-state featuriser is the base: a model stopped
  earlier stays closer to it)."""
  from benchmarks.lm.metrics import within_group_correlation  # pylint: disable=import-outside-toplevel
  steps, groups, values = [], [], {k: [] for k in FEATURISERS}
  for seed, metrics_of in zip(regime["seeds"], flat):
    for name in regime["objectives"]:
      steps.append(seed["records"][name]["best_step"])
      groups.append(seed["seed"])
      for k in FEATURISERS:
        values[k].append(metrics_of[name][f"{k}/unbiased"])
  correlations = {k: within_group_correlation(steps, v, groups) for k, v in values.items()}
  # Undefined (None, not NaN in the JSON) where every run selected the same step.
  return {k: c if math.isfinite(c) else None for k, c in correlations.items()}


def ablation_summary(regime: dict) -> dict:
  """Per cost arm: per-seed relative parameter distance and sample agreement with the
  frozen-head arm, and in how many seeds it coincides with it (not independent evidence)."""
  out = {}
  for seed in regime["seeds"]:
    for arm, entry in (seed.get("ablation_distance") or {}).items():
      row = out.setdefault(arm, {"relative_distance": [], "token_agreement": [],
                                 "identical_samples": [], "coincides_seeds": 0})
      for k in ("relative_distance", "token_agreement", "identical_samples"):
        row[k].append(entry[k])
      row["coincides_seeds"] += int(entry["coincides"])
  for row in out.values():
    row["seeds"] = len(row["relative_distance"])
    row["independent"] = row["coincides_seeds"] == 0
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


def regime_check(regime: dict, tol: float, bounds: tuple[float, float] = (1.15, 1.6)) -> dict:
  """Does the adaptation adapt (base-to-CE test perplexity ratio within ``bounds``, CE's
  selected checkpoint in the second half of the run on average), and have the runs converged
  (:func:`benchmarks.lm.evaluation.plateau_drop`, the last quarter's improvement of the best
  validation NLL, at most ``tol`` for every run)?"""
  seeds = regime["seeds"]
  base_ppl = float(np.mean([math.exp(b["test"]["nll"]) for b in regime["bases"]]))
  ce_ppl = float(np.mean([math.exp(s["models"]["ce"]["test"]["nll"]) for s in seeds]))
  drops = {n: [s["records"][n]["plateau_drop"] for s in seeds] for n in regime["objectives"]}
  best_steps = [s["records"][n]["best_step"] for s in seeds for n in regime["objectives"]]
  best_at_end = {n: sum(s["records"][n]["best_step"] == regime["steps"] for s in seeds)
                 for n in regime["objectives"]}
  fraction = float(np.mean([s["records"]["ce"]["best_step"] for s in seeds])) / regime["steps"]
  ratio = base_ppl / ce_ppl
  return {
      "base_test_ppl": base_ppl, "ce_test_ppl": ce_ppl, "ppl_ratio": ratio,
      "ratio_bounds": list(bounds), "adapts": bool(bounds[0] <= ratio <= bounds[1]),
      "best_step_fraction": fraction, "best_in_second_half": fraction > 0.5,
      "plateau_tol": tol, "plateau_drop_max": {n: float(max(v)) for n, v in drops.items()},
      "converged": all(max(v) <= tol for v in drops.values()),
      "best_at_last_step": best_at_end,
      "best_step_range": [int(min(best_steps)), int(max(best_steps))],
  }


def summarise(results: dict) -> None:
  """Adds per regime the flat metrics, comparisons, regime check and noise, the top-level
  ``regimes`` summary and every claim (with its regime) to ``results``."""
  from benchmarks.lm.evaluation import REGIME_TITLES  # pylint: disable=import-outside-toplevel
  config = results["config"]
  bounds = tuple(config.get("gate_ratio", (1.15, 1.6)))
  results["regimes"], results["claims"] = {}, []
  for key, regime in results["per_regime"].items():
    regime["title"] = REGIME_TITLES.get(key, regime["title"])
    regime["featurisers"] = featuriser_labels(config)
    human = regime["human"]
    names = ["pretrained", *regime["objectives"]]
    flat = [{n: flat_metrics(s["models"][n], human) for n in names} for s in regime["seeds"]]
    regime["flat"] = flat
    regime["comparisons"] = compare(flat, regime["objectives"], human, key)
    regime["matched_comparisons"] = compare_matched(regime, flat)
    regime["noise"] = sampling_noise(regime["seeds"])
    regime["check"] = regime_check(regime, config["plateau_tol"], bounds)
    regime["step_correlation"] = selected_step_correlation(regime, flat)
    regime["ablation_summary"] = ablation_summary(regime)
    bases_ppl = [math.exp(b["test"]["nll"]) for b in regime["bases"]]
    bits = regime.get("bits_per_char") or {}
    results["regimes"][key] = {
        "title": regime["title"],
        "base_test_ppl": regime["check"]["base_test_ppl"],
        "ce_test_ppl": regime["check"]["ce_test_ppl"],
        "ppl_ratio": regime["check"]["ppl_ratio"],
        "ppl_ratio_bounds": list(bounds),
        "adapts": regime["check"]["adapts"],
        "best_step_fraction": regime["check"]["best_step_fraction"],
        "converged": regime["check"]["converged"],
        "gate": _gate_summary(regime.get("gate")),
        "base_bits_per_char": bits.get("base"),
        "xz_bits_per_char": bits.get("xz_9"),
        "bz2_bits_per_char": bits.get("bz2_9"),
        "primary_featuriser": regime["featurisers"][PRIMARY],
        "secondary_featuriser": regime["featurisers"]["mauve_hidden"],
        "selected_step_correlation": regime["step_correlation"],
        "detectable_power": stats.POWER,
        "ablation_coinciding": {a: r["coincides_seeds"]
                                for a, r in regime["ablation_summary"].items()},
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
      source = regime["comparisons"] if c.baseline == "ce" else regime["matched_comparisons"]
      if c.objective in source and c.metric in source[c.objective]:
        results["claims"].append(dict(source[c.objective][c.metric], **c._asdict(),
                                      label=regime["labels"][c.objective]))


def _gate_summary(gate: dict | None) -> dict | None:
  if not gate:
    return None
  return {"passed": gate["passed"], "attempts": len(gate["attempts"]), "lr": gate["lr"],
          "steps": gate["steps"], "pilot_ratio": gate["attempts"][-1]["ratio"],
          "pilot_best_step_fraction": gate["attempts"][-1]["best_step_fraction"]}


# ----------------------------------------------------------------------------------------------
# Markdown


def _mean_sd(values, digits: int = 3) -> str:
  values = np.asarray(values, np.float64)
  sd = values.std(ddof=1) if values.size > 1 else 0.0
  return f"{values.mean():.{digits}f} ± {sd:.{digits}f}"


def _fence(text: str) -> list[str]:
  return ["```", text.replace("```", "'''").rstrip(), "```"]


def _check_markdown(regime: dict, labels: dict) -> list[str]:
  """The regime check in words that claim only what its numbers show."""
  check = regime["check"]
  low, high = check["ratio_bounds"]
  lines = []
  gate = regime.get("gate")
  if gate:
    tried = "; ".join(
        f"lr {a['lr']:g}: ratio {a['ratio']:.3f}, best step {a['best_step']} of {a['steps']}"
        + (f" -> missed {', '.join(a['failed'])}" + (f", rule: {a['rule']}" if a.get("rule")
                                                     else "") if a["failed"] else " -> passed")
        for a in gate["attempts"])
    verdict = ("**passed**" if gate["passed"] else
               "**failed** (recorded, not enforced: this run's results do not test the papers' "
               "claims in an adapting regime)" if not gate["enforced"] else "**failed**")
    lines += [(f"**Pilot gate** (one CE run, seed {gate['seed']}: base/CE test perplexity ratio in "
               f"[{low:g}, {high:g}] and the best validation checkpoint in the second half of "
               f"the run): {tried}. Gate {verdict}; the regime runs at lr {gate['lr']:g} for "
               f"{gate['steps']} steps."), ""]
  adapts = ("the adaptation adapts" if check["adapts"] else
            "**the adaptation does not adapt in this sense**" if check["ppl_ratio"] < low else
            "**more than a modest adaptation**")
  late = ("in the second half" if check["best_in_second_half"] else
          "**in the first half**")
  converged = ("the last quarter of every run lowered its best validation NLL by at most "
               f"{check['plateau_tol']:g} nats" if check["converged"] else
               "**some runs still improved by more than "
               f"{check['plateau_tol']:g} nats in their last quarter** (largest: "
               + ", ".join(f"{labels[o]} {v:.4f}" for o, v in check["plateau_drop_max"].items()
                           if v > check["plateau_tol"]) + ")")
  lines += [("**Regime check.** "
             f"Base test perplexity {check['base_test_ppl']:.2f}, CE {check['ce_test_ppl']:.2f}: "
             f"ratio {check['ppl_ratio']:.3f} (bounds [{low:g}, {high:g}]: {adapts}). CE's "
             f"selected checkpoint at {check['best_step_fraction']:.2f} of the run on average "
             f"({late}); all selected checkpoints at steps {check['best_step_range'][0]}–"
             f"{check['best_step_range'][1]} of {regime['steps']}. Convergence: {converged}."),
            ""]
  bits = regime.get("bits_per_char")
  if bits:
    margin = bits["xz_9"] - bits["base"]
    scope = bits.get("scope", "the test files")
    lines += [(f"**Base competence.** On the {bits['chars']:,} characters of {scope} the "
               f"base needs {bits['base']:.3f} bits per character, `xz -9` "
               f"{bits['xz_9']:.3f} and `bzip2 -9` {bits['bz2_9']:.3f} on the same text: "
               + (f"{margin:.3f} bits per character below xz." if margin > 0 else
                  f"**{-margin:.3f} above xz**: the base compresses this text worse than a "
                  "general-purpose compressor.")), ""]
  return lines


def _regime_markdown(key: str, regime: dict, summary: dict, config: dict) -> list[str]:
  human, comparisons = regime["human"], regime["comparisons"]
  matched = regime.get("matched_comparisons") or {}
  n = len(regime["seeds"])
  labels = {"pretrained": "pretrained base", **regime["labels"]}
  lines = [f"## Regime {key}: {regime['title']}", "",
           (f"{n} paired fine-tuning seeds from {summary['bases']} shared base(s); "
            f"{regime['steps']} fine-tuning steps at lr {regime['lr']:g} on `{regime['streams'][0]}`;"
            f" MAUVE on {human['samples_per_side']} model vs {human['samples_per_side']} human "
            f"continuations of {config['new_tokens']} tokens, {config['mauve_seeds']} k-means "
            "seeds."), ""]
  lines += _check_markdown(regime, labels)
  noise = regime["noise"]
  if noise:
    flags = [f for f, v in noise.items() if v >= MARGINS[f].margin]
    lines += [("**MAUVE noise.** One sampling run's standard deviation (CE, two runs per "
               "seed): " + ", ".join(f"{f.split('_')[1]} {v:.4f}" for f, v in noise.items())
               + f"; margin {MARGINS['mauve_hidden'].margin:g} "
               + ("(**below the measured noise** for " + ", ".join(flags) + ")" if flags
                  else "(above it)") + "."), ""]
  lines += [(f"**Human ceiling** (two disjoint human sets, {human['samples_per_side']} per side):"
             f" MAUVE {human['ceiling_mauve_tfidf']:.3f} "
             f"{regime['featurisers'][PRIMARY]}, "
             f"{human['ceiling_mauve_hidden']:.3f} base hidden states; human rep-2 "
             f"{human['text']['rep2']:.3f}, distinct-2 {human['text']['distinct2']:.3f}."), ""]
  corr = regime.get("step_correlation") or {}
  if corr:
    primary = regime["featurisers"][PRIMARY].replace(" (primary)", "")
    defined = all(corr.get(k) is not None and math.isfinite(corr[k])
                  for k in ("mauve_tfidf", "mauve_hidden"))
    lines += [(f"**Featurisers.** The primary MAUVE featuriser is {primary}, "
               "independent of every model; the secondary one is the base's own hidden "
               "states, so it measures *closeness to the base*. Within-seed correlation of "
               "the selected checkpoint step with MAUVE over the fine-tuned models: "
               + (f"TF-IDF {corr['mauve_tfidf']:+.2f}, hidden states {corr['mauve_hidden']:+.2f}."
                  if defined else "undefined (every run selected the same step).")),
              ""]
  if regime.get("mixce_selection"):
    sel = regime["mixce_selection"]
    if "noise_one_run" in sel:
      lines += [(f"**MixCE η** on validation MAUVE (seed {sel['seed']}, "
                 f"{sel['validation_prompts']} validation prompts, two sampling runs each): "
                 + ", ".join(f"η={e}: {v[PRIMARY]:.3f}" for e, v in sel["scores"].items())
                 + f"; one run's noise σ = {sel['noise_one_run']:.3f}; within 2σ of the best: "
                 + ", ".join(f"{e:g}" for e in sel["within_noise"])
                 + f" → the smallest, η = {sel['eta']:g}, then fixed for every seed."), ""]
    else:
      noise = regime["noise"].get("mauve_hidden", 0.0)
      best = max(v["mauve_hidden"] for v in sel["scores"].values())
      close = [e for e, v in sel["scores"].items() if v["mauve_hidden"] >= best - 2 * noise]
      lines += [(f"**MixCE η** chosen on validation MAUVE (hidden, seed {sel['seed']}, "
                 f"{sel['validation_prompts']} validation prompts, one sampling run each): "
                 + ", ".join(f"η={e}: {v['mauve_hidden']:.3f}" for e, v in sel["scores"].items())
                 + f" → η = {sel['eta']:g}, the largest single score. Within twice the measured "
                 f"noise of one test-split sampling run ({noise:.3f}; larger on fewer validation "
                 "prompts) of the best: η = " + ", ".join(close)
                 + ", so this choice is not a measured optimum."), ""]
  lines += ["### Claims", "",
            ("| objective | claim | metric | difference: mean [95% CI] (seeds better) | margin | "
             "detectable (80% power) | verdict |"), "|---|---|---|---|---:|---:|---|"]
  for c in CLAIMS:
    source = comparisons if c.baseline == "ce" else matched
    if c.objective not in source or c.metric not in source[c.objective]:
      continue
    s = source[c.objective][c.metric]
    kind = ("better than CE" if c.baseline == "ce" else
            "better than CE at matched T") if c.claim == "better" else "not worse than CE"
    note = ""
    if s.get("reason"):
      note = f" ({s['reason']})"
    elif s["verdict"] == stats.NOT_TESTABLE:
      note = f" (CE is {s['room']:.4f} from the ideal, inside the margin)"
    metric = c.metric
    if metric.startswith("mauve_"):
      metric = f"MAUVE {regime['featurisers'][metric.split('/')[0]]}"
    lines.append(f"| {labels[c.objective]} | {kind} | {metric} | "
                 f"{stats.format_difference(s)} | {s['margin']:g} | {_detectable(s)} | "
                 f"**{s['verdict']}**{note} |")
  lines += ["", ("*detectable*: margin + (t₀.₉₇₅ + t₀.₈₀) × the standard error of the paired "
                 "mean, the smallest true difference this design calls \"holds\" with 80% "
                 "power at the measured spread. "
                 + ("EMO+CE (cap 3) is the packaged `EMOLoss` (mode 1, ratio capped at 3); the "
                    "authors' LLaMA script differs (it drops sg(p_y) from EMO's value)."
                    if "emo_cap3" in comparisons else "")), ""]
  if matched:
    lines += ["**Temperature-matched CE.** Per seed, CE sampled at the temperature whose entropy "
              "along its own samples matches the EMO arm's (validation prompts): "
              + "; ".join(f"{labels[a]}: T = "
                          + ", ".join(f"{t:.3f}" for t in m["temperatures"])
                          + " (entropy " + ", ".join(f"{e:.3f}" for e in m["target_entropy"])
                          + " nats vs CE at T = 1: "
                          + ", ".join(f"{e:.3f}" for e in m["ce_entropy_at_1"]) + ")"
                          for a, m in matched.items()) + ".", ""]
  if regime.get("ablation_summary"):
    lines += _ablation_markdown(regime, labels)
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
    coinciding = regime.get("ablation_summary") or {}
    lines += ["### EMO's cost: ablation of the uncapped EMO+CE mix (same seeds)", "",
              ("| cost embedding | MAUVE TF-IDF − CE | MAUVE hidden − CE | test NLL − CE | "
               "coincides with the frozen-head arm |"), "|---|---|---|---|---|"]
    for name in ABLATION:
      if name in comparisons:
        c = comparisons[name]
        row = coinciding.get(name)
        if name == "emo":
          same = "(reference)"
        elif row is not None:
          same = f"{row['coincides_seeds']}/{row['seeds']} seeds"
        else:
          equal = sum(abs(s["models"][name]["test"]["nll"] - s["models"]["emo"]["test"]["nll"])
                      < SAME_NLL for s in regime["seeds"])
          same = (f"not measured; same test NLL (within {SAME_NLL:g} nats) in {equal}/"
                  f"{len(regime['seeds'])} seeds")
        lines.append(f"| {ABLATION_LABELS[name]} | "
                     f"{stats.format_difference(c['mauve_tfidf/unbiased'])} | "
                     f"{stats.format_difference(c['mauve_hidden/unbiased'])} | "
                     f"{stats.format_difference(c['test_nll'], 4)} | {same} |")
    lines += ["", ("An arm that coincides with the frozen-head arm in a seed (parameters within "
                   "1% of that arm's fine-tuning step, or 99% of its continuations identical) is "
                   "the same model there and not independent evidence."
                   if coinciding else
                   "Parameter distances and sample agreement between the arms were not "
                   "recorded by this run: arms with identical metrics may be the same model "
                   "and are not independent evidence."), ""]
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
  lines = ["# LM fine-tuning: CE vs EMO+CE vs TaiLr vs MixCE (paired seeds)", "",
           f"Command: `{results['command']}`", ""]
  if results.get("regenerated"):
    lines += [f"**Report regenerated.** {results['regenerated']}", ""]
  if not results.get("complete", True):
    lines += [("**Partial results**: the run stopped before every regime was finished; the "
               "regimes below are complete."), ""]
  lines += [("Differences are the objective minus CE per seed: mean [95% t-interval] (seeds "
             "improving / n); verdicts against margins declared in `benchmarks/lm/report.py` "
             "before the run: holds, does not hold, inconclusive at this size, not testable "
             "here (CE already within the margin of the ideal, or the objective equals CE at "
             "this scale)."), "",
            "Claim sources: " + "; ".join(sorted({c["source"] for c in results["claims"]}))
            + ".", ""]
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


def _detectable(summary: dict) -> str:
  value = summary.get("detectable")
  return "" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _ablation_markdown(regime: dict, labels: dict) -> list[str]:
  lines = ["### Ablation arms against the frozen-head arm (per seed)", "",
           ("| arm | relative parameter distance (per seed) | identical continuations (per seed) "
            "| coincides |"), "|---|---|---|---|"]
  for arm, row in regime["ablation_summary"].items():
    same = ", ".join("–" if v is None else f"{v:.2f}" for v in row["identical_samples"])
    lines.append(f"| {labels[arm]} | "
                 + ", ".join(f"{v:.3f}" for v in row["relative_distance"])
                 + f" | {same} | {row['coincides_seeds']}/{row['seeds']} seeds |")
  lines += ["", ("Relative distance: ‖θ_arm − θ_frozen-head‖ over the larger of the two arms' "
                 "distances from the base, at the selected checkpoints (0: the same model, "
                 "also when both selected the base itself; about 1 or more: as far apart as "
                 "fine-tuning moved them)."), ""]
  return lines


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
    for offset, marker, metric in ((-0.15, "s", "mauve_tfidf/unbiased"),
                                   (0.15, "o", "mauve_hidden/unbiased")):
      means = np.array([comparisons[o][metric]["mean"] for o in names])
      lows = np.array([comparisons[o][metric]["low"] for o in names])
      highs = np.array([comparisons[o][metric]["high"] for o in names])
      featuriser = regime["featurisers"][metric.split("/")[0]]
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


def stored_bits_per_char(results: dict) -> None:
  """For regimes of stored results without ``bits_per_char``: the base's bits per character
  on the text of the test tokens it was evaluated on (its stored test NLL over those tokens;
  the corpora and tokenizer rebuilt from the stored settings, which fix them), next to
  ``xz -9`` and ``bzip2 -9`` on the same text. No model is run."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import data as data_lib  # pylint: disable=import-outside-toplevel
  from benchmarks.lm.config import Config  # pylint: disable=import-outside-toplevel
  missing = [r for r in results["per_regime"].values() if not r.get("bits_per_char")]
  if not missing:
    return
  names = {f.name for f in dataclasses.fields(Config)}
  config = Config(**{k: tuple(v) if isinstance(v, list) else v
                     for k, v in results["config"].items() if k in names})
  texts, _ = data_lib.corpus_texts(config, package=False)
  tokenizer = data_lib.train_tokenizer(texts["pretrain_train"], config.vocab_size)
  for regime in missing:
    split = regime["streams"][2]
    stream = data_lib.encode_stream(tokenizer, texts[split])
    if stream.size != results["data"]["tokens"][split]:
      raise ValueError(f"the rebuilt {split} split does not match the stored one.")
    base = regime["bases"][0]["test"]
    text = data_lib.target_text(tokenizer, stream, base["tokens"])
    compressed = data_lib.text_compressed_bits(text)
    regime["bits_per_char"] = {
        "split": split, "chars": compressed["chars"], "tokens": base["tokens"],
        "base": data_lib.bits_per_char(base["nll"] * base["tokens"], compressed["chars"]),
        "xz_9": compressed["xz_9"], "bz2_9": compressed["bz2_9"],
        "scope": f"the text of the first {base['tokens']:,} test tokens"}


def regenerate(json_path: str, note: str) -> dict:
  """Re-summarises stored results with the current report code (claims, checks, detectable
  differences, words; the base's bits per character where missing, :func:`stored_bits_per_char`)
  and rewrites the JSON, Markdown and PNG beside it; ``note`` says at the top of the report
  what was regenerated. No model is trained or sampled."""
  results = outputs.read_json(json_path)
  results["regenerated"] = note
  stored_bits_per_char(results)
  summarise(results)
  write_results(json_path, results, plot, markdown)
  return results


def main(argv=None) -> None:
  """``python -m benchmarks.lm.report RESULTS.json "note"``: :func:`regenerate`."""
  import sys  # pylint: disable=import-outside-toplevel
  args = sys.argv[1:] if argv is None else list(argv)
  if len(args) != 2:
    sys.exit("usage: python -m benchmarks.lm.report RESULTS.json NOTE")
  regenerate(args[0], args[1])


if __name__ == "__main__":
  main()
