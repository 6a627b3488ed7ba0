"""The temperature control: is an objective more than a lower sampling temperature of CE?

An objective that sharpens the model lowers ``PPL_oracle`` (and can lower the reverse KL) in the
way that sampling the CE model at a temperature ``T < 1`` does, for free. For a CE student ``Q``
the tempered model is ``Q_T(·|x) ∝ Q(·|x)^{1/T}`` (logits divided by ``T``); its exact metrics
against the oracle are those of :func:`benchmarks.oracle.run.exact_metrics` with the student's
logits divided by ``T`` and its own samples drawn at ``T``.

* :func:`curve` -- CE's metrics over a grid of temperatures (its curve through (forward KL,
  reverse KL) space);
* :func:`matching_temperature` -- the ``T`` at which CE's entropy along its own prefixes equals
  a target (another objective's), by linear interpolation on the curve;
* :func:`tempered_metrics` -- the exact metrics at one ``T`` (the matched one, evaluated exactly).

At ``T = 1`` everything is the untempered student bit for bit: the logits are divided by 1.0 and
the samples are drawn with the student's own sampling key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ENTROPY_KEY = "entropy_q_student_prefixes"   # H(Q_T) along Q_T's own prefixes


def tempered_metrics(oracle, student, held_out: np.ndarray, separator: int, sample_key,
                     count: int, seq_len: int, unit_head, temperature: float) -> dict:
  """Exact metrics of ``student`` sampled at ``temperature`` (``count`` samples drawn with
  ``sample_key``): forward KL and ``PPL_test`` along ``held_out`` oracle samples, reverse KL,
  ``PPL_oracle`` and entropies along its own tempered samples."""
  from benchmarks.oracle.run import (
    exact_metrics,  # pylint: disable=import-outside-toplevel
    sample_rows,  # pylint: disable=import-outside-toplevel
  )
  own = sample_rows(student, count, seq_len, separator, sample_key, temperature=temperature)
  return dict(exact_metrics(oracle, student, held_out, own, unit_head, temperature=temperature),
              temperature=float(temperature))


def curve(oracle, student, held_out: np.ndarray, separator: int, sample_key, count: int,
          seq_len: int, unit_head, temperatures: Sequence[float]) -> list[dict]:
  """:func:`tempered_metrics` at each of ``temperatures`` (ascending), the same key for all."""
  return [tempered_metrics(oracle, student, held_out, separator, sample_key, count, seq_len,
                           unit_head, t) for t in sorted(temperatures)]


def matching_temperature(points: Sequence[dict], target_entropy: float) -> tuple[float, bool]:
  """The temperature at which the curve's entropy (``entropy_q_student_prefixes``) equals
  ``target_entropy``: linear interpolation between the two neighbouring grid points of the
  curve sorted by entropy; ``(T, inside)``, with ``inside=False`` (and the nearest end of the grid)
  when the target lies outside the curve's entropy range.

  >>> pts = [{"temperature": 0.5, ENTROPY_KEY: 1.0}, {"temperature": 1.0, ENTROPY_KEY: 2.0}]
  >>> matching_temperature(pts, 1.5)
  (0.75, True)
  >>> matching_temperature(pts, 3.0)
  (1.0, False)
  """
  ordered = sorted(points, key=lambda p: p[ENTROPY_KEY])
  entropy = np.asarray([p[ENTROPY_KEY] for p in ordered], np.float64)
  temps = np.asarray([p["temperature"] for p in ordered], np.float64)
  if target_entropy <= entropy[0]:
    return float(temps[0]), bool(target_entropy == entropy[0])
  if target_entropy >= entropy[-1]:
    return float(temps[-1]), bool(target_entropy == entropy[-1])
  return float(np.interp(target_entropy, entropy, temps)), True
