"""The pilot gate of the headline regime and its adjustment rule (benchmarks/lm/gate.py)."""

import itertools

import pytest

from benchmarks.lm import gate

BOUNDS = (1.15, 1.6)


@pytest.mark.parametrize("ratio,best_step,steps,want", [
    (1.3, 150, 160, []),
    (1.15, 81, 160, []),                      # bounds are inclusive, the half is not
    (1.6, 160, 160, []),
    (1.3, 80, 160, [gate.SECOND_HALF]),       # exactly half way is not the second half
    (1.05, 160, 160, [gate.RATIO]),
    (2.4, 160, 160, [gate.RATIO]),
    (0.99, 10, 40, [gate.RATIO, gate.SECOND_HALF]),  # regime A of the earlier run
])
def test_failed_gates(ratio, best_step, steps, want):
  assert gate.failed_gates(ratio, best_step, steps, BOUNDS) == want


def test_the_rule_moves_the_learning_rate_towards_the_gate():
  """Every failure changes the learning rate by a factor of two, in the direction that the
  rule states: down for an early best checkpoint or too strong an adaptation, up for too weak
  an adaptation that is still improving at its end."""
  for ratio, best_fraction in itertools.product((0.98, 1.1, 1.3, 1.8, 3.0), (0.1, 0.5, 0.9)):
    steps = 100
    failed = gate.failed_gates(ratio, int(best_fraction * steps), steps, BOUNDS)
    if not failed:
      with pytest.raises(ValueError, match="no gate failed"):
        gate.adjust(1e-3, ratio, failed, BOUNDS)
      continue
    lr, rule = gate.adjust(1e-3, ratio, failed, BOUNDS)
    if gate.SECOND_HALF in failed or ratio > BOUNDS[1]:
      assert lr == pytest.approx(5e-4) and "halve" in rule
    else:
      assert ratio < BOUNDS[0] and lr == pytest.approx(2e-3) and "double" in rule


def test_the_failure_message_names_each_missed_gate_with_its_numbers():
  attempt = {"failed": [gate.RATIO, gate.SECOND_HALF], "ratio": 0.994, "best_step": 10,
             "steps": 40}
  text = gate.describe_failure(attempt, BOUNDS)
  assert "ratio 0.994 outside [1.15, 1.6]" in text and "step 10 of 40" in text
  assert gate.describe_failure(dict(attempt, failed=[gate.RATIO]), BOUNDS).count(";") == 0
