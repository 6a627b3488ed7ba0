"""The LM fine-tuning experiment (benchmarks/lm, entry point benchmarks/lm_finetune.py) end to
end, in its --quick mode (second test lane: ``-m experiments``).

One quick run (module fixture) is checked for its files and for real properties: the pilot gate
of regime C (its decision recomputed from its record by the stated rule, the passing pilot being
the first seed's CE run), the base's bits per character over every test token next to xz,
CE lowering the base's held-out perplexity in every regime, the human ceiling above the base in
the domain shift, MAUVE on equal sample counts per side, the measured sampling noise, the
correlation of the selected step with MAUVE and the 80%-power detectable difference recomputed
independently, MixCE's eta the smallest within noise of the best, the temperature-matched CE
arms, the ablation arms' distances, each run's checkpoint its best by validation NLL, the
results summary for machines, the sample continuations in the Markdown, every metric finite;
and resuming (a rerun loads every phase; an interrupted fine-tuning run continues from its
checkpoint to the same curve). Bad command lines exit with a message and status 2. The sampler's own test (cached
logits equal the forward pass) is in tests/lm/test_model.py; the cost-ablation losses are
checked against independent formulas in tests/lm/test_objectives.py.
"""

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.lm import data as data_lib
from benchmarks.lm import gate as gate_lib
from benchmarks.lm import run as lm_run
from benchmarks.lm import stats
from benchmarks.lm.config import QUICK, Config
from benchmarks.lm.evaluation import MAIN_ORDER

pytestmark = pytest.mark.experiments  # end-to-end run: second test lane

QUICK_CONFIG = Config(**QUICK)


def _quick_args(out: Path) -> list[str]:
  return ["--quick", "--out", str(out / "checkpoints"), "--json", str(out / "results.json"),
          "--no-progress"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """One ``--quick`` run: its folder, arguments, returned results and duration."""
  out = tmp_path_factory.mktemp("lm_quick")
  args = _quick_args(out)
  started = time.perf_counter()
  results = lm_run.main(args)
  return SimpleNamespace(out=out, args=args, results=results,
                         seconds=time.perf_counter() - started)


def test_quick_run_writes_json_markdown_plot_and_names_no_interpreter_path(quick):
  stored = json.loads((quick.out / "results.json").read_text())
  assert stored["claims"] == json.loads(json.dumps(quick.results["claims"]))
  png = (quick.out / "results.png").read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
  markdown = (quick.out / "results.md").read_text()
  assert "results.png" in markdown
  assert markdown.index("## Regime C") < markdown.index("## Regime B")  # the headline first
  assert "## Regime A" not in markdown  # --quick runs C and B
  for words in ("papers' regime", "competent", "plateaued"):
    assert words not in markdown
  for text in (markdown, json.dumps(stored)):
    for path in {sys.prefix, sys.base_prefix, os.path.dirname(sys.executable)}:
      assert path not in text
  assert stored["complete"] is True
  assert {c["verdict"] for c in stored["claims"]} <= set(stats.VERDICTS)


def test_results_summary_for_machines(quick):
  """A top-level "regimes" object with the sizes that make MAUVE comparable, and every claim
  carrying its regime."""
  regimes = quick.results["regimes"]
  assert list(regimes) == ["C", "B"]
  for key, summary in regimes.items():
    for field in ("base_test_ppl", "ce_test_ppl", "mauve_samples_per_side",
                  "human_ceiling_samples_per_side", "kmeans_seeds", "continuation_tokens",
                  "seeds", "ppl_ratio", "best_step_fraction", "base_bits_per_char",
                  "xz_bits_per_char", "primary_featuriser", "detectable_power"):
      assert field in summary, (key, field)
    assert summary["detectable_power"] == 0.8
    assert summary["primary_featuriser"].startswith("code-token TF-IDF")
    regime = quick.results["per_regime"][key]
    fraction = np.mean([s["records"]["ce"]["best_step"] for s in regime["seeds"]]) / regime[
        "steps"]
    assert summary["best_step_fraction"] == pytest.approx(fraction)
    assert summary["kmeans_seeds"] == QUICK["mauve_seeds"] >= 3
    assert summary["continuation_tokens"] == QUICK["new_tokens"]
    assert summary["human_ceiling_samples_per_side"] == summary["mauve_samples_per_side"]
  assert regimes["C"]["mauve_samples_per_side"] == QUICK["max_prompts"]
  assert regimes["C"]["seeds"] == list(QUICK_CONFIG.seed_values())
  assert {c["regime"] for c in quick.results["claims"]} == {"C", "B"}
  assert all(c["regime"] in regimes for c in quick.results["claims"])


def test_pilot_gate_of_regime_c_follows_its_rule(quick):
  """The recorded pilot decisions follow the stated gates and rule, the ratio is the base's
  test perplexity over CE's, and the passing pilot is the first seed's CE run (same test NLL)."""
  regime = quick.results["per_regime"]["C"]
  gate = regime["gate"]
  bounds = tuple(gate["bounds"])
  assert bounds == QUICK_CONFIG.gate_ratio == (1.15, 1.6)
  lr = QUICK["package_lr"]
  for attempt in gate["attempts"]:
    assert attempt["lr"] == pytest.approx(lr)
    assert attempt["failed"] == gate_lib.failed_gates(attempt["ratio"], attempt["best_step"],
                                                      attempt["steps"], bounds)
    if attempt["failed"] and attempt is not gate["attempts"][-1]:
      lr = gate_lib.adjust(lr, attempt["ratio"], attempt["failed"], bounds)[0]
  assert gate["passed"] == (not gate["attempts"][-1]["failed"])
  assert regime["lr"] == gate["lr"] == gate["attempts"][-1]["lr"]
  first = regime["seeds"][0]
  assert first["seed"] == gate["seed"]
  ce_nll = first["models"]["ce"]["test"]["nll"]
  assert gate["attempts"][-1]["ratio"] == pytest.approx(math.exp(gate["base_test_nll"] - ce_nll),
                                                        rel=1e-6)
  assert gate["base_test_nll"] == pytest.approx(regime["bases"][0]["test"]["nll"], rel=1e-6)
  summary = quick.results["regimes"]["C"]["gate"]
  assert summary["passed"] == gate["passed"] and summary["attempts"] == len(gate["attempts"])


def test_base_bits_per_char_covers_every_test_token_next_to_xz(quick):
  for key, regime in quick.results["per_regime"].items():
    bits = regime["bits_per_char"]
    split = regime["streams"][2]
    assert bits["split"] == split
    assert bits["tokens"] == quick.results["data"]["tokens"][split] - 1  # every target
    assert bits["chars"] == quick.results["data"]["chars"][split] + quick.results["data"][
        "documents"][split]  # the files and one separator each
    assert 0 < bits["base"] < 8 and 0 < bits["xz_9"] < 8 and 0 < bits["bz2_9"] < 8
    summary = quick.results["regimes"][key]
    assert summary["base_bits_per_char"] == bits["base"]
    assert summary["xz_bits_per_char"] == bits["xz_9"]


def test_regime_check_is_recomputed_from_the_runs(quick):
  """Ratio and convergence check from the stored curves (the last quarter's improvement of the
  best validation NLL), and CE lowering the base's perplexity in the headline regime."""
  for regime in quick.results["per_regime"].values():
    check = regime["check"]
    assert check["ppl_ratio"] == pytest.approx(check["base_test_ppl"] / check["ce_test_ppl"])
    assert check["adapts"] == (1.15 <= check["ppl_ratio"] <= 1.6)
    steps = regime["steps"]
    drops = []
    for seed in regime["seeds"]:
      for name in regime["objectives"]:
        curve = seed["records"][name]["curves"]["val"]
        nll = np.asarray(curve["nll"])
        late = np.asarray(curve["step"]) > 0.75 * steps
        drop = max(0.0, nll[~late].min() - nll.min())
        assert drop == pytest.approx(seed["records"][name]["plateau_drop"], abs=1e-9)
        drops.append(drop)
    assert check["converged"] == (max(drops) <= QUICK_CONFIG.plateau_tol)
  assert quick.results["regimes"]["C"]["ppl_ratio"] > 1.0


def test_ce_lowers_the_base_perplexity_in_every_regime(quick):
  for key, regime in quick.results["per_regime"].items():
    for seed in regime["seeds"]:
      models = seed["models"]
      assert models["ce"]["test"]["nll"] < models["pretrained"]["test"]["nll"], (key, seed)
    assert regime["check"]["ppl_ratio"] > 1.0


def test_human_ceiling_uses_equal_sets_and_exceeds_the_base_under_the_domain_shift(quick):
  """In regime B the base writes code after prose prompts, so two disjoint sets of human
  continuations must look more alike (MAUVE) than the base's samples and the human ones."""
  regime = quick.results["per_regime"]["B"]
  human = regime["human"]
  base = regime["bases"][0]["samples"]["unbiased"]
  assert human["ceiling_mauve_hidden"] > base["mauve_hidden"] + 0.2
  assert human["ceiling_mauve_tfidf"] > base["mauve_tfidf"]
  for regime in quick.results["per_regime"].values():
    assert len(regime["human"]["prompts"]) == len(regime["human"]["examples"]) == 3


def test_sampling_noise_is_the_spread_of_two_runs(quick):
  """The reported noise of one sampling run, recomputed as the standard deviation of the two
  CE runs pooled over seeds (each pair's variance estimate is (a - b)^2 / 2)."""
  regime = quick.results["per_regime"]["C"]
  for features in ("hidden", "tfidf"):
    runs = np.array([[r[f"mauve_{features}"] for r in s["models"]["ce"]["samples"]["unbiased"][
        "runs"]] for s in regime["seeds"]])
    assert runs.shape == (len(regime["seeds"]), 2)
    want = np.sqrt(np.mean(np.var(runs, axis=1, ddof=1)))
    assert regime["noise"][f"mauve_{features}"] == pytest.approx(want, rel=1e-9)
    # the reported unbiased MAUVE of CE is its first run (paired with the other models')
    for s, r in zip(regime["seeds"], runs):
      assert s["models"]["ce"]["samples"]["unbiased"][f"mauve_{features}"] == r[0]


def test_mixce_eta_is_the_smallest_within_noise_of_the_best_and_then_fixed(quick):
  regime = quick.results["per_regime"]["C"]
  selection = regime["mixce_selection"]
  scores = selection["scores"]
  assert {float(e) for e in scores} == set(QUICK["mixce_etas"])
  runs = np.array([v["runs"] for v in scores.values()])
  sigma = np.sqrt(np.mean(np.var(runs, axis=1, ddof=1)))
  assert selection["noise_one_run"] == pytest.approx(sigma, rel=1e-9)
  means = {float(e): np.mean(v["runs"]) for e, v in scores.items()}
  best = max(means.values())
  assert selection["eta"] == min(e for e, m in means.items() if m >= best - 2 * sigma - 1e-12)
  assert regime["labels"]["mixce"] == f"MixCE η={selection['eta']:g}"
  for seed in regime["seeds"]:
    assert seed["records"]["mixce"]["objective"] == f"mixce_{selection['eta']:g}"


def test_temperature_matched_ce_arms_have_their_own_verdicts(quick):
  """Per seed and EMO arm, the bisection's recorded CE entropies grow with the temperature
  (what the bisection assumes), the matched temperature lies between the last bracket, and
  each arm has a claim against the matched CE arm in the headline regime."""
  regime = quick.results["per_regime"]["C"]
  assert regime["matched_arms"] == ["emo", "emo_cap3"]
  for seed in regime["seeds"]:
    for arm, match in seed["matched"].items():
      history = sorted(match["history"])
      entropies = [h[1] for h in history]
      assert entropies == sorted(entropies), (seed["seed"], arm)
      assert 0.5 <= match["temperature"] <= 1.5
      assert match["samples"]["temperature"] == match["temperature"]
      assert match["target_entropy"] > 0 and match["ce_entropy"] > 0
  claims = [c for c in quick.results["claims"] if c.get("baseline") == "ce_matched"]
  assert {c["objective"] for c in claims} == {"emo", "emo_cap3"}
  assert all(c["regime"] == "C" and c["n"] == QUICK["seeds"] for c in claims)
  markdown = (quick.out / "results.md").read_text()
  assert "better than CE at matched T" in markdown


def test_detectable_difference_and_step_correlation_recomputed(quick):
  from scipy import stats as scipy_stats
  regime = quick.results["per_regime"]["C"]
  flat = regime["flat"]
  n = len(flat)
  t = scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1)
  for name, metrics_of in regime["comparisons"].items():
    for key, summary in metrics_of.items():
      differences = np.array([f[name][key] - f["ce"][key] for f in flat])
      se = differences.std(ddof=1) / np.sqrt(n)
      assert summary["detectable"] == pytest.approx(summary["margin"] + t * se, rel=1e-9)
  for features in ("hidden", "tfidf"):
    steps, values, groups = [], [], []
    for seed, f in zip(regime["seeds"], flat):
      for name in regime["objectives"]:
        steps.append(seed["records"][name]["best_step"])
        values.append(f[name][f"mauve_{features}/unbiased"])
        groups.append(seed["seed"])
    steps, values, groups = map(np.asarray, (steps, values, groups))
    rs = steps - np.array([steps[groups == g].mean() for g in groups])
    rv = values - np.array([values[groups == g].mean() for g in groups])
    want = (np.corrcoef(rs, rv)[0, 1] if rs.std() > 0 and rv.std() > 0 else float("nan"))
    got = regime["step_correlation"][f"mauve_{features}"]
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, rel=1e-9)


def test_tailr_open_is_not_testable_because_it_equals_ce(quick):
  claims = [c for c in quick.results["claims"] if c["objective"] == "tailr_open"]
  assert claims and all(c["verdict"] == stats.NOT_TESTABLE for c in claims)
  assert "equals CE at this scale" in (quick.out / "results.md").read_text()


def test_cost_ablation_runs_over_the_same_seeds_with_distances_to_the_frozen_head(quick):
  regime = quick.results["per_regime"]["C"]
  arms = ("emo_own", "emo_cehead", "emo_random", "emo_identity")
  comparisons = regime["comparisons"]
  for arm in arms:
    assert comparisons[arm]["mauve_hidden/unbiased"]["n"] == QUICK["seeds"]
    for seed in regime["seeds"]:
      assert seed["records"][arm]["objective"] == arm
  for seed in regime["seeds"]:
    distances = seed["ablation_distance"]
    assert set(distances) == set(arms)
    for arm, entry in distances.items():
      assert entry["relative_distance"] >= 0 and 0 <= entry["token_agreement"] <= 1
      assert entry["coincides"] == (entry["relative_distance"] < 0.01
                                    or entry["identical_samples"] >= 0.99)
  summary = regime["ablation_summary"]
  assert {a: summary[a]["coincides_seeds"] for a in arms} == quick.results["regimes"]["C"][
      "ablation_coinciding"]
  assert not any("ablation_distance" in s for s in quick.results["per_regime"]["B"]["seeds"])
  markdown = (quick.out / "results.md").read_text()
  assert "ablation of the uncapped EMO+CE mix" in markdown and "identity (EMO = 1 − p_y)" in markdown
  assert "coincides with the frozen-head arm" in markdown


def test_markdown_shows_three_continuations_per_objective(quick):
  markdown = (quick.out / "results.md").read_text()
  regime = quick.results["per_regime"]["C"]
  for name in ["pretrained", *MAIN_ORDER]:
    examples = regime["seeds"][0]["models"][name]["samples"]["unbiased"]["examples"]
    assert len(examples) == 3
    for text in examples:
      assert text.strip().replace("```", "\'\'\'")[:40] in markdown
  for text in regime["human"]["examples"]:
    assert text.strip()[:40] in markdown


def test_reported_checkpoint_is_the_best_by_validation_nll(quick):
  for regime in quick.results["per_regime"].values():
    steps = list(range(0, regime["steps"] + 1, QUICK["eval_every"]))
    for seed in regime["seeds"]:
      for name in regime["objectives"]:
        record = seed["records"][name]
        curve = record["curves"]["val"]
        assert curve["step"] == steps
        assert record["best_step"] == curve["step"][int(np.argmin(curve["nll"]))]
        assert record["best_nll"] == min(curve["nll"])


def _walk(value):
  if isinstance(value, dict):
    for item in value.values():
      yield from _walk(item)
  elif isinstance(value, list):
    for item in value:
      yield from _walk(item)
  elif isinstance(value, float):
    yield value


def test_every_metric_is_finite_and_in_range(quick):
  for regime in quick.results["per_regime"].values():
    for seed in regime["seeds"]:
      for model in seed["models"].values():
        values = list(_walk(model))
        assert values and all(math.isfinite(v) for v in values)
        assert 0 <= model["test"]["ece"] <= 1 and 0 <= model["test"]["accuracy"] <= 1
        samples = model["samples"]["unbiased"]
        assert 0 < samples["mauve_hidden"] <= 1 and 0 < samples["mauve_tfidf"] <= 1
        assert 0 <= samples["rep2"] <= 1 and 0 < samples["distinct2"] <= 1
    for comparison in regime["comparisons"].values():
      assert all(math.isfinite(v) for v in _walk(comparison))


def test_rerun_loads_every_phase_and_reports_the_same(quick, capsys):
  started = time.perf_counter()
  again = lm_run.main(quick.args)
  seconds = time.perf_counter() - started
  printed = capsys.readouterr()
  assert "resuming" not in printed.out
  for name in ("results.json", "results.md", "results.png"):  # the run says where its files went
    assert str(quick.out / name) in printed.out
  assert "WARNING clustering" not in printed.err  # faiss's notes are counted, not printed
  assert seconds < 0.5 * quick.seconds, (seconds, quick.seconds)
  for key in ("C", "B"):
    assert again["per_regime"][key]["flat"] == quick.results["per_regime"][key]["flat"]


class _Interrupted(Exception):
  pass


def test_an_interrupted_run_continues_from_its_checkpoint(quick, tmp_path, monkeypatch):
  """EMO+CE fine-tuning of seed 0 (regime C) stopped after its first checkpoint, then rerun:
  same curve. (The seed's CE run is the pilot's, copied again from the pilot checkpoint.)"""
  folder = tmp_path / "checkpoints"
  shutil.copytree(quick.out / "checkpoints", folder)
  for name in os.listdir(folder):  # seed 0's runs and everything evaluated after them
    if name.startswith(("ft_C_s0_", "eval_C_s0_", "tokens_C_s0_", "match_C_s0_")) and (
        "mixce_" not in name):
      (folder / name).unlink()
  batch_at = data_lib.batch_at

  def failing_batch_at(stream, seed, phase, step, *args):
    if phase == 1 and step == QUICK["eval_every"] + 5:
      raise _Interrupted
    return batch_at(stream, seed, phase, step, *args)

  args = ["--quick", "--out", str(folder), "--json", str(tmp_path / "r.json"), "--no-progress"]
  monkeypatch.setattr(data_lib, "batch_at", failing_batch_at)
  with pytest.raises(_Interrupted):
    lm_run.main(args)
  monkeypatch.setattr(data_lib, "batch_at", batch_at)
  resumed = lm_run.main(args)
  original = quick.results["per_regime"]["C"]["seeds"][0]["records"]["emo"]
  record = resumed["per_regime"]["C"]["seeds"][0]["records"]["emo"]
  np.testing.assert_allclose(record["curves"]["val"]["nll"], original["curves"]["val"]["nll"],
                             rtol=1e-5)
  np.testing.assert_allclose(record["train_loss"], original["train_loss"], rtol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--learning-rate", "1e-3"], "unrecognized arguments: --learning-rate"),
    (["--quic"], "unrecognized arguments: --quic"),
    (["--objectives", "ce,focal"], "--objectives must be"),
    (["--vocab-size", "100"], "smaller than the model needs"),
    (["--prefix-len", "100", "--new-tokens", "40"], "must fit in --seq-len"),
    (["--seeds", "0"], "--seeds must be positive"),
    (["--regimes", "A,D"], "--regimes must be"),
])
def test_bad_command_lines_exit_with_a_message(args, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    lm_run.main(args)
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert message in error and "usage: lm_finetune.py" in error


def test_bad_corpora_exit_with_a_message(tmp_path, capsys):
  empty_folder = tmp_path / "no_text"
  empty_folder.mkdir()
  binary = tmp_path / "weights.txt"
  binary.write_bytes(b"\x00\x01\x02" * 100)
  tiny = tmp_path / "tiny.txt"
  tiny.write_text("def f(x):\n  return x + 1\n" * 50)
  cases = [
      (["--finetune-corpus", str(tmp_path / "nowhere")], "no such file or folder"),
      (["--pretrain-corpus", str(empty_folder)], "holds no readable text"),
      (["--finetune-corpus", str(binary)], "binary file"),
      (["--quick", "--package", "no_such_package_here", "--out", str(tmp_path / "pkg")],
       "is not installed"),
      (["--quick", "--pretrain-corpus", str(tiny), "--out", str(tmp_path / "out")],
       "the pretraining corpus is too small"),
  ]
  for args, message in cases:
    with pytest.raises(SystemExit) as exit_info:
      lm_run.main(args)
    assert exit_info.value.code == 2, args
    assert message in capsys.readouterr().err, args


@pytest.mark.slow
def test_default_configuration(tmp_path):
  """The documented run: the headline regime passes its gate at the default size."""
  results = lm_run.main(["--out", str(tmp_path / "checkpoints"), "--json",
                         str(tmp_path / "results.json"), "--no-progress"])
  headline = results["regimes"]["C"]
  assert headline["gate"]["passed"] and 1.15 <= headline["ppl_ratio"] <= 1.6
  assert headline["best_step_fraction"] > 0.5
  assert headline["mauve_samples_per_side"] >= 1000 and len(headline["seeds"]) >= 5
  assert headline["base_bits_per_char"] < headline["xz_bits_per_char"]
