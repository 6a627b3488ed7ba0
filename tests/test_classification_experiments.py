"""The classification experiments of benchmarks/classification/ in their --quick mode.

Each test runs one script end to end (in-process, output to ``tmp_path``), checks that it wrote
its JSON and PNG and printed its table, and asserts the direction that the method's paper (or
the blog post it follows) predicts where that direction held in every seed we tried at this size (quick settings;
the comments say how many seeds; see docs/experiments/classification.md). Where a paper's
claim does not hold here the test asserts what does, and that page says so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.classification import accuracy_vs_ce, exact_toy, flooding, long_tail, rare_f1

pytestmark = pytest.mark.experiments  # end-to-end run: second test lane


def run_quick(module, tmp_path, capsys) -> dict:
  """Runs ``module.main`` with ``--quick`` into ``tmp_path``; checks its files and table."""
  results = module.main(["--quick", "--no-progress", "--out", str(tmp_path)])
  printed = capsys.readouterr().out
  assert results["table"] in printed
  saved = json.loads((tmp_path / f"cls_{module.NAME}.json").read_text())
  assert saved["experiment"] == module.NAME and saved["table"] == results["table"]
  assert saved["machine"]["cpu"]
  png = (tmp_path / f"cls_{module.NAME}.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  return results


def test_long_tail_logit_adjustment_helps_the_rare_classes(tmp_path, capsys):
  methods = run_quick(long_tail, tmp_path, capsys)["methods"]
  ce = methods["CE"]
  # Menon et al.: logit adjustment (in the loss, or post hoc) raises balanced accuracy and the
  # accuracy on the rare classes. Held in every one of 22 seeds (rare-third gain >= 0.087).
  for name in ("logit-adjusted CE (τ=1)", "CE + post-hoc (τ=1)"):
    gain = np.asarray(methods[name]["rare_acc"]) - np.asarray(ce["rare_acc"])
    assert np.all(gain > 0.0), (name, gain)
    assert np.mean(gain) > 0.1, (name, gain)
    assert np.all(np.asarray(methods[name]["balanced_acc"]) > np.asarray(ce["balanced_acc"]))
  # The norm-aware margin (rarer class, larger radius) also raises both, less than logit
  # adjustment (6 of 6 quick seeds; rare-third gain >= 0.03).
  norm_aware = methods["norm-aware margin CE"]
  assert np.all(np.asarray(norm_aware["rare_acc"]) > np.asarray(ce["rare_acc"]))
  assert np.all(np.asarray(norm_aware["balanced_acc"]) > np.asarray(ce["balanced_acc"]))
  # Every method fits its (small) training set; on the balanced test set CE stays far from it.
  for m in methods.values():
    assert np.all(np.asarray(m["train_acc"]) > 0.98)
  assert 0.5 < np.mean(ce["balanced_acc"]) < 0.9


def test_rare_f1_losses_raise_positive_class_f1(tmp_path, capsys):
  results = run_quick(rare_f1, tmp_path, capsys)
  methods, last = results["methods"], results["config"]["steps"]

  def f1(name, step):
    return np.asarray(methods[name]["f1_at_step"][step])

  for name in ("F1-weighted CE", "smooth-F1 loss"):
    # Early on CE predicts hardly any positive at threshold 0.5 (gain > 0.1 in each of 24 quick
    # seeds at step 50); at step 200 the mean gain over seeds 20-35 was 0.08 (one seed +0.001).
    assert np.all(f1(name, 50) > f1("CE", 50) + 0.1), name
    assert np.mean(f1(name, last)) > np.mean(f1("CE", last)) + 0.03, name
    # ... by recall: F1-weighting moves the decision threshold towards the positives.
    assert np.mean(methods[name]["recall"]) > np.mean(methods["CE"]["recall"])
  for m in methods.values():
    assert 0.5 < np.mean(m["f1_at_step"][last]) < 1.0


def test_exact_toy_minimisers(tmp_path, capsys):
  methods = run_quick(exact_toy, tmp_path, capsys)["methods"]
  ce, hinge, exact = methods["sigmoid CE"], methods["hinge"], methods["EXACT (σ=1)"]
  grid_step = 0.005
  # The paper's numbers for f(x) = x - b: CE minimised at b = 0.7, hinge on [0.75, 1].
  assert ce["without_k"]["grid_b_min"] == pytest.approx((0.70, 0.70), abs=grid_step)
  assert hinge["without_k"]["grid_b_min"] == pytest.approx((0.75, 1.0), abs=grid_step)
  # Without the scale no loss reaches the zero-error interval (0, 0.25), by grid or by Adam;
  # EXACT with sigma = 1 (noise as large as the data's spread) is even further away.
  for m in methods.values():
    assert not m["without_k"]["grid_zero_error"]
    assert not any(m["without_k"]["gd"]["zero_error"])
    assert m["without_k"]["grid_accuracy"] == pytest.approx(2 / 3)
  assert exact["without_k"]["grid_b_min"][0] > 3.0
  # With a learned scale k every loss, not only EXACT, ends in (0, 0.25) from every start: the
  # scale grows and the minimiser moves to the max-margin b = 0.125 (the paper only credits
  # EXACT, whose sigma plays the part of 1/k; see docs/experiments/classification.md).
  for m in methods.values():
    gd = m["with_k"]["gd"]
    assert all(gd["zero_error"]) and all(acc == 1.0 for acc in gd["accuracy"])
    assert min(gd["k"]) > 5.0
    assert m["with_k"]["grid_zero_error"]


def test_flooding_holds_the_training_loss_at_the_flood_level(tmp_path, capsys):
  results = run_quick(flooding, tmp_path, capsys)
  methods = results["methods"]
  levels = [b for b in results["config"]["flood_levels"] if b > 0]
  ce = methods["CE"]
  # Plain CE memorises the flipped labels: training loss far below every flood level.
  assert np.all(np.asarray(ce["final_train_loss"]) < min(levels) / 2)
  assert np.all(np.asarray(ce["final_memorised"]) > 0.95)
  for b in levels:
    flooded = methods[f"flood b={b:g}"]
    # Ishida et al.: the flooded training loss hovers at b instead of going to 0.
    np.testing.assert_allclose(flooded["final_train_loss"], b, rtol=0.05)
    # ... so the held-out loss does not blow up as CE's does (all 8 seeds tried).
    assert np.all(np.asarray(flooded["final_test_loss"]) < np.asarray(ce["final_test_loss"]))
  # Second descent: the runs equal CE until the training loss reaches b; with b = 0.4 the
  # held-out loss then fell below CE's best (early-stopped) value (mean gain 0.04, 8 of 8 seeds).
  high = methods[f"flood b={max(levels):g}"]
  assert np.mean(high["best_test_loss"]) < np.mean(ce["best_test_loss"]) - 0.01
  assert np.mean(high["best_test_loss_step"]) > np.mean(ce["best_test_loss_step"])
  # Alternation with Adam slows the fitting of the noise: less of it memorised and a lower
  # held-out loss than CE after the same number of steps (not a claim about the limit: in the
  # full run it memorises too, later). With r = 0.5 by a wide margin; with the flooding post's
  # r = 0.1 (ascent steps a tenth of the descent steps) by less (memorised 0.66-0.74 vs 1.0).
  for name, m in methods.items():
    if name.startswith("alternate"):
      gap = 0.3 if float(name.split("=")[1]) >= 0.5 else 0.1
      assert np.all(np.asarray(m["final_memorised"]) < np.asarray(ce["final_memorised"]) - gap)
      assert np.all(np.asarray(m["final_test_loss"]) < np.asarray(ce["final_test_loss"]))


def test_accuracy_surrogates_vs_cross_entropy(tmp_path, capsys):
  results = run_quick(accuracy_vs_ce, tmp_path, capsys)
  methods = results["methods"]
  assert (tmp_path / "cls_accuracy_vs_ce.md").read_text().count("EXACT (authors' recipe)") == 2
  ce, smoothed = methods["CE"], methods["smoothed accuracy 1-p_y"]
  # The loss-design principle (Su, kexue.fm/archives/9098): 1 - p_y has a vanishing gradient on
  # badly wrong examples, so it fits worse and reaches 90% held-out accuracy later (or never)
  # than CE (12 of 12 seeds).
  assert np.all(np.asarray(smoothed["final_train_acc"]) < np.asarray(ce["final_train_acc"]))
  ce_steps = np.asarray(ce["steps_to_0.9"], float)
  smoothed_steps = np.asarray(smoothed["steps_to_0.9"], float)
  assert np.all(np.isfinite(ce_steps))
  assert np.all(np.nan_to_num(smoothed_steps, nan=np.inf) > ce_steps)
  # EXACT's -log P variant trains like CE here (within 0.02 held-out accuracy, every seed); the
  # paper's "EXACT beats CE" is not asserted: EXACT 1 - P with sigma = 1 stalls on some seeds.
  exact_log = methods["EXACT -log P (σ=1)"]
  np.testing.assert_allclose(exact_log["final_test_acc"], ce["final_test_acc"], atol=0.02)
  assert np.all(np.asarray(ce["final_test_acc"]) > 0.93)
  # EXACT with the authors' recipe (batch norm, margin, σ schedule, gradient normaliser): no stuck
  # class, within 0.02 of CE, and at 90% held-out accuracy no later than CE (12 of 12 quick seeds;
  # largest gap 0.011). Its paired difference comes with an interval and a verdict.
  recipe = methods["EXACT (authors' recipe)"]
  assert np.all(np.asarray(recipe["final_train_acc"]) > 0.99)
  np.testing.assert_allclose(recipe["final_test_acc"], ce["final_test_acc"], atol=0.02)
  assert np.all(np.asarray(recipe["steps_to_0.9"], float) <= ce_steps)
  comparison = results["comparisons"]["EXACT (authors' recipe)"]
  assert comparison["low"] <= comparison["mean"] <= comparison["high"]
  assert comparison["verdict"] in ("holds", "does not hold", "inconclusive at this size")
  assert "EXACT 1-P (σ=1)" not in methods  # left out of --quick (CI budget)
  # EXACT's batch-level -log E_D[P] weights each example by its share of the batch likelihood, so
  # it gives up on badly wrong examples and fits the training set worse than CE (3 of 3 quick
  # seeds; final training accuracy 0.81-0.98 vs CE's 0.997-0.999).
  batch = methods[accuracy_vs_ce.BATCH_NAME]
  assert np.all(np.asarray(batch["final_train_acc"]) < np.asarray(ce["final_train_acc"]))
