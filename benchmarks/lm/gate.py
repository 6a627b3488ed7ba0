"""The pilot gate of the headline regime: does the adaptation adapt?

Before any paired seed, the run fine-tunes CE once (the first seed) and checks two gates:

* **ratio**: the base's test perplexity over CE's (best checkpoint) lies in ``[low, high]``
  (``Config.gate_ratio``, 1.15 to 1.6): fine-tuning helps, modestly -- not ``≈ 1`` (nothing to
  adapt) and not several-fold (a new domain rather than an adaptation);
* **second half**: CE's best validation checkpoint lies in the second half of the run
  (``best_step > steps / 2``): validation NLL still falls through most of the run, so the
  checkpoint choice is not an early stop of a run that only gets worse.

If a gate fails, the rule (:func:`adjust`) changes the peak learning rate and the pilot runs
again, at most ``Config.gate_attempts`` times; then the run stops with a message naming the
failed gate (or, with ``enforce_gate=False``, records the failure and goes on).

The rule, in order:

1. best checkpoint in the first half -> halve the learning rate (the run overshoots early);
2. ratio above the upper bound -> halve the learning rate (the run moves too far);
3. ratio below the lower bound (best checkpoint late) -> double the learning rate (the run has
   not moved far enough in its steps).
"""

from __future__ import annotations

RATIO = "ratio"
SECOND_HALF = "second half"


class GateError(Exception):
  """The pilot missed a gate after every allowed adjustment."""


def failed_gates(ratio: float, best_step: int, steps: int, bounds: tuple[float, float]
                 ) -> list[str]:
  """The gates a pilot misses (``[]``: it passes).

  >>> failed_gates(1.3, 150, 160, (1.15, 1.6)), failed_gates(1.05, 40, 160, (1.15, 1.6))
  ([], ['ratio', 'second half'])
  """
  failed = []
  if not bounds[0] <= ratio <= bounds[1]:
    failed.append(RATIO)
  if not best_step > steps / 2:
    failed.append(SECOND_HALF)
  return failed


def adjust(lr: float, ratio: float, failed: list[str], bounds: tuple[float, float]
           ) -> tuple[float, str]:
  """The next pilot's learning rate after ``failed`` gates, and the rule applied (in words).

  >>> adjust(1e-3, 1.05, ["ratio", "second half"], (1.15, 1.6))
  (0.0005, 'best checkpoint in the first half: halve the learning rate')
  >>> adjust(1e-3, 1.05, ["ratio"], (1.15, 1.6))
  (0.002, 'ratio below 1.15: double the learning rate')
  """
  if SECOND_HALF in failed:
    return lr / 2, "best checkpoint in the first half: halve the learning rate"
  if ratio > bounds[1]:
    return lr / 2, f"ratio above {bounds[1]:g}: halve the learning rate"
  if ratio < bounds[0]:
    return lr * 2, f"ratio below {bounds[0]:g}: double the learning rate"
  raise ValueError(f"no gate failed (ratio {ratio}, failed {failed}).")


def describe_failure(attempt: dict, bounds: tuple[float, float]) -> str:
  """One sentence naming the gates an attempt missed, with its numbers."""
  parts = []
  if RATIO in attempt["failed"]:
    parts.append(f"base/CE test perplexity ratio {attempt['ratio']:.3f} outside "
                 f"[{bounds[0]:g}, {bounds[1]:g}]")
  if SECOND_HALF in attempt["failed"]:
    parts.append(f"CE's best validation checkpoint at step {attempt['best_step']} of "
                 f"{attempt['steps']}, not in the second half")
  return "; ".join(parts)
