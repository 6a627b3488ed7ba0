"""Paired comparisons over seeds with t-intervals, sign counts and verdicts (generic).

The protocol of ``/work/shared/EXPERIMENTS.md`` (section 2): the unit is one paired run (same
seed for every method); for each method the per-seed difference to the baseline, its mean, a
95% t-interval ``mean ± t_{0.975, n-1} · sd / √n``, the number of seeds that improve, and a
verdict against a margin declared before the run:

* superiority claim (``"better"``): **holds** if the whole interval lies beyond ``+margin`` in
  the claimed direction; **does not hold** if it lies beyond ``-margin`` the other way or
  entirely inside ``[-margin, +margin]``; otherwise **inconclusive at this size**;
* non-inferiority claim (``"not worse"``): **holds** if the interval lies above ``-margin``;
  **does not hold** if it lies entirely below ``-margin``; otherwise inconclusive;
* **detectable** (:func:`detectable_difference`): the smallest true difference that the
  claim would call "holds" with 80% power at the measured spread;
* **not testable here** (either claim kind): the baseline already sits within ``margin`` of the
  ideal (``room``, its mean distance from the ideal, is below the margin), so no improvement
  beyond the margin is possible whatever the method does -- e.g. a repetition gap to human text
  that is already smaller than the margin.

Fewer than two paired seeds give no interval (``low`` and ``high`` are NaN: one difference has
no spread to estimate) and the verdict **inconclusive at this size**, whatever the margin or the
room: a claim is never concluded from one seed.

"Above" is in the claimed direction: differences are multiplied by ``+1`` when higher is better
and ``-1`` when lower is better before the comparison. Nothing here knows about language
models; any experiment with paired seeds can use :func:`paired_comparison`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive at this size"
NOT_TESTABLE = "not testable here"
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, NOT_TESTABLE)


@dataclasses.dataclass(frozen=True)
class Margin:
  """A pre-declared equivalence margin of one metric.

  Attributes:
    metric: the metric's name.
    margin: differences smaller than this (in the metric's units) count as no difference.
    higher_is_better: the direction of improvement.
  """
  metric: str
  margin: float
  higher_is_better: bool


def t_quantile(n: int, level: float = 0.95) -> float:
  """Two-sided Student-t quantile ``t_{(1+level)/2, n-1}`` (2.776 for ``n = 5``)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return float(stats.t.ppf(0.5 + level / 2, n - 1))


def t_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """``(mean, low, high)`` of the ``level`` t-interval of the mean of ``differences``
  (``low`` and ``high`` are NaN for fewer than two values: no interval without a spread; the
  mean is NaN for none)."""
  values = np.asarray(differences, np.float64)
  mean = float(values.mean()) if values.size else float("nan")
  if values.size < 2:
    return mean, float("nan"), float("nan")
  half = t_quantile(values.size, level) * float(values.std(ddof=1)) / math.sqrt(values.size)
  return mean, mean - half, mean + half


POWER = 0.8


def detectable_difference(margin: float, standard_error: float, n: int,
                          power: float = POWER, level: float = 0.95) -> float:
  """The smallest true difference that a ``"better"`` claim calls **holds** with probability
  ``power``: ``margin + (t_{(1+level)/2, n-1} + t_{power, n-1}) · SE`` with ``SE`` the standard
  error of the paired mean (``nan`` for ``n < 2``). At ``power = 0.5`` it is margin + the
  interval's half-width.

  >>> round(detectable_difference(0.04, 0.01, 5), 4)  # 0.04 + (2.776 + 0.941) * 0.01
  0.0772
  """
  if n < 2:
    return float("nan")
  from scipy import stats  # pylint: disable=import-outside-toplevel
  quantiles = t_quantile(n, level) + float(stats.t.ppf(power, n - 1))
  return margin + quantiles * standard_error


def verdict(low: float, high: float, margin: float, claim: str = "better",
            room: float | None = None) -> str:
  """The verdict of an interval ``[low, high]`` of improvements (positive = the claimed
  direction) against ``margin`` for a ``"better"`` or ``"not worse"`` claim; ``room`` (the
  baseline's distance from the ideal, if known) below ``margin`` makes a ``"better"`` claim
  :data:`NOT_TESTABLE`. No interval (a NaN bound: fewer than two seeds) is
  :data:`INCONCLUSIVE`, before any other rule.

  >>> verdict(0.05, 0.09, 0.03), verdict(-0.01, 0.02, 0.03), verdict(0.0, 0.2, 0.03, room=0.01)
  ('holds', 'does not hold', 'not testable here')
  """
  if claim not in ("better", "not worse"):
    raise ValueError(f"`claim` must be 'better' or 'not worse' (got {claim!r}).")
  if not (math.isfinite(low) and math.isfinite(high)):
    return INCONCLUSIVE
  if claim == "better" and room is not None and room < margin:
    return NOT_TESTABLE
  if claim == "better":
    if low > margin:
      return HOLDS
    if high < -margin or (low >= -margin and high <= margin):
      return DOES_NOT_HOLD
    return INCONCLUSIVE
  if low > -margin:  # "not worse"
    return HOLDS
  if high < -margin:
    return DOES_NOT_HOLD
  return INCONCLUSIVE


def paired_comparison(method: Sequence[float], baseline: Sequence[float], margin: Margin,
                      claim: str = "better", level: float = 0.95,
                      room: float | None = None) -> dict:
  """Paired difference ``method - baseline`` over seeds, summarised for a report.

  Args:
    method: the metric of the method, one value per seed.
    baseline: the metric of the baseline, same seeds in the same order.
    margin: the metric's pre-declared margin and direction.
    claim: ``"better"`` (superiority) or ``"not worse"`` (non-inferiority).
    level: the interval's coverage.
    room: the baseline's mean distance from the ideal value of the metric (e.g. its gap to
      human text), or ``None``; below ``margin`` a "better" claim is not testable.

  Returns:
    A dict with ``n``, ``mean`` / ``low`` / ``high`` (the difference and its interval, in the
    metric's units and sign; ``low`` and ``high`` NaN and the verdict :data:`INCONCLUSIVE` for
    fewer than two seeds), ``se`` (standard error of the mean difference), ``detectable``
    (:func:`detectable_difference` at ``detectable_power`` 0.8), ``improved`` (seeds whose
    difference is in the better direction),
    ``margin``, ``claim``, ``room`` and ``verdict``.
  """
  method = np.asarray(method, np.float64)
  baseline = np.asarray(baseline, np.float64)
  if method.shape != baseline.shape or method.ndim != 1:
    raise ValueError(f"`method` and `baseline` must be 1-D and paired (got {method.shape} and "
                     f"{baseline.shape}).")
  differences = method - baseline
  mean, low, high = t_interval(differences, level)
  sign = 1.0 if margin.higher_is_better else -1.0
  improvement = sorted((sign * low, sign * high))
  se = (float(differences.std(ddof=1)) / math.sqrt(differences.size) if differences.size > 1
        else float("nan"))
  return {
      "metric": margin.metric,
      "n": int(differences.size),
      "se": se,
      "detectable": detectable_difference(margin.margin, se, int(differences.size)),
      "detectable_power": POWER,
      "mean": mean,
      "low": low,
      "high": high,
      "improved": int(np.sum(sign * differences > 0)),
      "margin": margin.margin,
      "higher_is_better": margin.higher_is_better,
      "claim": claim,
      "room": room,
      "verdict": verdict(improvement[0], improvement[1], margin.margin, claim, room),
  }


def format_difference(summary: dict, digits: int = 3) -> str:
  """``"+0.012 [-0.004, +0.028] (4/5)"``: the mean difference, its interval and sign count
  (``"+0.012 [no interval] (1/1)"`` for fewer than two seeds)."""
  f = f"{{:+.{digits}f}}"
  if not (math.isfinite(summary["low"]) and math.isfinite(summary["high"])):
    return f"{f.format(summary['mean'])} [no interval] ({summary['improved']}/{summary['n']})"
  return (f"{f.format(summary['mean'])} [{f.format(summary['low'])}, "
          f"{f.format(summary['high'])}] ({summary['improved']}/{summary['n']})")
