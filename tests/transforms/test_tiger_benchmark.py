"""The Tiger benchmark (benchmarks/classification/tiger.py) in its --quick mode."""

import json

import numpy as np
import pytest

from benchmarks.classification import tiger as tiger_bench

pytestmark = pytest.mark.experiments


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("tiger_quick")
  return tiger_bench.main(["--quick", "--no-progress", "--out", str(out)]), out


def test_files_and_tables(quick):
  results, out = quick
  saved = json.loads((out / "cls_tiger.json").read_text())
  assert saved["experiment"] == "tiger" and saved["table"] == results["table"]
  assert saved["machine"]["cpu"]
  png = (out / "cls_tiger.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  markdown = (out / "cls_tiger.md").read_text()
  assert results["memory_table"] in markdown and results["table"] in markdown


def test_state_bytes_from_the_actual_states(quick):
  """Tiger accumulates in its momentum: its state is the parameters' size plus two int32
  counters (the cycle's position and length; a constant learning rate keeps no count) with or
  without k; MultiSteps adds one parameter-sized buffer."""
  results, _ = quick
  counters = 2 * 4
  k = results["config"]["accumulation_steps"]
  for model, entry in results["memory"].items():
    params, arms = entry["param_bytes"], entry["arms"]
    assert arms[f"Tiger (k={k})"]["state_bytes"] == params + counters, model
    assert arms["Tiger (no accumulation)"]["state_bytes"] == params + counters, model
    assert arms[f"grouped Tiger (k={k})"]["state_bytes"] == params + 4 * counters, model  # 4 groups
    lion, adamw = arms["Lion + MultiSteps"]["state_bytes"], arms["AdamW + MultiSteps"]["state_bytes"]
    assert 2 * params < lion < 2 * params + 64, model
    assert 3 * params < adamw < 3 * params + 64, model
    assert arms["Tiger + MultiSteps"]["state_bytes"] > 2 * params


def test_every_optimiser_trains_and_accumulation_matches_multisteps(quick):
  results, _ = quick
  for name, m in results["methods"].items():
    assert m["lr"] in results["config"]["lr_grid"]
    assert np.all(np.asarray(m["final_test_acc"]) > 0.9), name
  equivalence = results["equivalence"]
  assert equivalence["first_eval_train_loss_difference"] < 1e-3
