"""The LM fine-tuning experiment (benchmarks/lm, entry point benchmarks/lm_finetune.py) end to
end, in its --quick mode (second test lane: ``-m experiments``).

One quick run (module fixture) is checked for its files and for real properties: the regime
check of regime A (base-to-CE test perplexity ratio <= 1.5, every run's validation NLL on a
plateau before its checkpoint is chosen), CE lowering the base's held-out perplexity in both
regimes, the human ceiling above the base in the domain shift, MAUVE on equal sample counts per
side, the measured sampling noise recomputed independently, MixCE's eta the argmax of its
validation MAUVE, each run's checkpoint its best by validation NLL, the results summary for
machines, the sample continuations in the Markdown, every metric finite; and resuming (a rerun
loads every phase; an interrupted fine-tuning run continues from its checkpoint to the same
curve). Bad command lines exit with a message and status 2. The sampler's own test (cached
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
  assert "results.png" in markdown and "## Regime A" in markdown and "## Regime B" in markdown
  for text in (markdown, json.dumps(stored)):
    for path in {sys.prefix, sys.base_prefix, os.path.dirname(sys.executable)}:
      assert path not in text
  assert stored["complete"] is True
  assert {c["verdict"] for c in stored["claims"]} <= set(stats.VERDICTS)


def test_results_summary_for_machines(quick):
  """A top-level "regimes" object with the sizes that make MAUVE comparable, and every claim
  carrying its regime."""
  regimes = quick.results["regimes"]
  assert set(regimes) == {"A", "B"}
  for key, summary in regimes.items():
    for field in ("base_test_ppl", "ce_test_ppl", "mauve_samples_per_side",
                  "human_ceiling_samples_per_side", "kmeans_seeds", "continuation_tokens",
                  "seeds"):
      assert field in summary, (key, field)
    assert summary["kmeans_seeds"] == QUICK["mauve_seeds"] >= 3
    assert summary["continuation_tokens"] == QUICK["new_tokens"]
    assert summary["human_ceiling_samples_per_side"] == summary["mauve_samples_per_side"]
  assert regimes["A"]["mauve_samples_per_side"] == QUICK["max_prompts"]
  assert regimes["A"]["seeds"] == list(QUICK_CONFIG.seed_values())
  assert {c["regime"] for c in quick.results["claims"]} == {"A", "B"}
  assert all(c["regime"] in regimes for c in quick.results["claims"])


def test_regime_check_of_regime_a(quick):
  """Regime A is a light adaptation (base-to-CE test perplexity ratio <= 1.5, CE better than
  the base) and every run has plateaued: its last quarter lowered its best validation NLL by at
  most plateau_tol, recomputed here from the stored curves."""
  regime = quick.results["per_regime"]["A"]
  check = regime["check"]
  assert 1.0 < check["ppl_ratio"] <= 1.5
  assert check["ppl_ratio"] == pytest.approx(check["base_test_ppl"] / check["ce_test_ppl"])
  steps = QUICK["finetune_steps"]
  for seed in regime["seeds"]:
    for name in regime["objectives"]:
      curve = seed["records"][name]["curves"]["val"]
      nll = np.asarray(curve["nll"])
      late = np.asarray(curve["step"]) > 0.75 * steps
      drop = max(0.0, nll[~late].min() - nll.min())
      assert drop == pytest.approx(seed["records"][name]["plateau_drop"], abs=1e-9)
      assert drop <= QUICK_CONFIG.plateau_tol, (seed["seed"], name)
  assert check["plateaued"] is True
  assert quick.results["regimes"]["A"]["ppl_ratio"] <= 1.5


def test_ce_lowers_the_base_perplexity_in_both_regimes_and_the_shift_more(quick):
  ratios = {}
  for key, regime in quick.results["per_regime"].items():
    for seed in regime["seeds"]:
      models = seed["models"]
      assert models["ce"]["test"]["nll"] < models["pretrained"]["test"]["nll"], (key, seed)
    ratios[key] = regime["check"]["ppl_ratio"]
  assert ratios["B"] > ratios["A"]


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
  regime = quick.results["per_regime"]["A"]
  for features in ("hidden", "tfidf"):
    runs = np.array([[r[f"mauve_{features}"] for r in s["models"]["ce"]["samples"]["unbiased"][
        "runs"]] for s in regime["seeds"]])
    assert runs.shape == (len(regime["seeds"]), 2)
    want = np.sqrt(np.mean(np.var(runs, axis=1, ddof=1)))
    assert regime["noise"][f"mauve_{features}"] == pytest.approx(want, rel=1e-9)
    # the reported unbiased MAUVE of CE is its first run (paired with the other models')
    for s, r in zip(regime["seeds"], runs):
      assert s["models"]["ce"]["samples"]["unbiased"][f"mauve_{features}"] == r[0]


def test_mixce_eta_is_the_argmax_of_validation_mauve_and_then_fixed(quick):
  regime = quick.results["per_regime"]["A"]
  selection = regime["mixce_selection"]
  scores = {float(e): v["mauve_hidden"] for e, v in selection["scores"].items()}
  assert set(scores) == set(QUICK["mixce_etas"])
  assert selection["eta"] == max(scores, key=scores.get)
  assert regime["labels"]["mixce"] == f"MixCE η={selection['eta']:g}"
  for seed in regime["seeds"]:
    assert seed["records"]["mixce"]["objective"] == f"mixce_{selection['eta']:g}"


def test_cost_ablation_runs_over_the_same_seeds(quick):
  regime = quick.results["per_regime"]["A"]
  arms = ("emo_own", "emo_cehead", "emo_random", "emo_identity")
  comparisons = regime["comparisons"]
  for arm in arms:
    assert comparisons[arm]["mauve_hidden/unbiased"]["n"] == QUICK["seeds"]
    for seed in regime["seeds"]:
      assert seed["records"][arm]["objective"] == arm
  markdown = (quick.out / "results.md").read_text()
  assert "ablation of the uncapped EMO+CE mix" in markdown and "identity (EMO = 1 − p_y)" in markdown


def test_markdown_shows_three_continuations_per_objective(quick):
  markdown = (quick.out / "results.md").read_text()
  regime = quick.results["per_regime"]["A"]
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
  for key in ("A", "B"):
    assert again["per_regime"][key]["flat"] == quick.results["per_regime"][key]["flat"]


class _Interrupted(Exception):
  pass


def test_an_interrupted_run_continues_from_its_checkpoint(quick, tmp_path, monkeypatch):
  """CE fine-tuning of seed 0 (regime A) stopped after its first checkpoint, then rerun: same
  curve."""
  folder = tmp_path / "checkpoints"
  shutil.copytree(quick.out / "checkpoints", folder)
  for name in os.listdir(folder):  # CE and everything evaluated or trained after it
    if name.startswith(("ft_A_s0_", "eval_A_s0_")) and "mixce_" not in name:
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
  original = quick.results["per_regime"]["A"]["seeds"][0]["records"]["ce"]
  record = resumed["per_regime"]["A"]["seeds"][0]["records"]["ce"]
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
    (["--regimes", "A,C"], "--regimes must be"),
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
  """The README's run: the same regime check at the default size."""
  results = lm_run.main(["--out", str(tmp_path / "checkpoints"), "--json",
                         str(tmp_path / "results.json"), "--no-progress"])
  assert results["regimes"]["A"]["ppl_ratio"] <= 1.5 and results["regimes"]["A"]["plateaued"]
  assert results["regimes"]["A"]["mauve_samples_per_side"] >= 1000
