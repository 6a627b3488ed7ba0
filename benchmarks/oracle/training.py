"""The training loop every student of the known-oracle experiment uses.

One recipe for the three phases (from-scratch students, pretraining, fine-tuning): AdamW
(:func:`benchmarks.lm.train.adamw`) with a decaying learning rate over a fixed number of steps,
batches drawn by ``(seed, phase, step)`` so that every objective of a seed sees the same ones, and
the validation NLL on held-out oracle samples at step 0, every ``eval_every`` steps and at the
end; the state kept is the one with the lowest validation NLL (or the last one).
"""

from __future__ import annotations

import time

import numpy as np


def validation_nll(model, rows: np.ndarray, batch_size: int = 512) -> float:
  """Mean NLL per token of ``model`` on oracle samples ``rows [N, T]`` (targets ``rows[:, 1:]``)."""
  from benchmarks.lm.model import sequence_log_probs  # pylint: disable=import-outside-toplevel
  total = 0.0
  for start in range(0, len(rows), batch_size):
    total -= float(np.asarray(sequence_log_probs(model, rows[start:start + batch_size]),
                              np.float64).sum())
  return total / (rows.shape[0] * (rows.shape[1] - 1))


def linear_decay(peak_lr: float, steps: int):
  """The learning rate of step ``i``: ``peak_lr · (1 - i / steps)`` (no warm-up)."""
  return lambda i: peak_lr * (1.0 - i / steps)


def cosine_decay(peak_lr: float, steps: int, warmup_steps: int):
  """Linear warm-up, then cosine decay to 10 % of ``peak_lr`` at ``steps``."""
  def rate(i: int) -> float:
    if i < warmup_steps:
      return peak_lr * (i + 1) / warmup_steps
    progress = (i - warmup_steps) / max(steps - warmup_steps, 1)
    return peak_lr * (0.1 + 0.9 * 0.5 * (1.0 + np.cos(np.pi * progress)))
  return rate


def decayed_training(model, objectives, index: int, seed: int, phase: int, rows: np.ndarray,
                     val_rows: np.ndarray, cost, *, steps: int, schedule, batch_size: int,
                     eval_every: int, weight_decay: float, keep: str = "best"):
  """``model`` trained in place of a copy with ``objectives[index]`` for ``steps`` steps on
  batches of ``rows`` drawn by ``(seed, phase, step)`` (the same for every objective), the
  learning rate ``schedule(step)``; the validation NLL on ``val_rows`` at step 0, every
  ``eval_every`` steps and at the end. Returns ``(state, record)`` with the state at the lowest
  validation NLL (``keep="best"``) or at the last step (``keep="last"``)."""
  import jax  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from benchmarks.lm import train  # pylint: disable=import-outside-toplevel

  started = time.perf_counter()
  optimizer = nnx.Optimizer(model, train.adamw(weight_decay), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  curve = {"step": [0], "nll": [validation_nll(model, val_rows)]}
  best, best_step = jax.device_get(nnx.state(model)), 0
  finite = bool(np.isfinite(curve["nll"][0]))
  for step in range(steps):
    picks = np.random.default_rng([seed, phase, step]).integers(0, len(rows), batch_size)
    state, _, _ = train.train_step(graphdef, state, rows[picks], cost, np.int32(index),
                                   np.float32(schedule(step)), objectives=objectives,
                                   path=train.LossPath())
    if (step + 1) % eval_every and step + 1 != steps:
      continue
    current, _ = nnx.merge(graphdef, state)
    value = validation_nll(current, val_rows)
    if not np.isfinite(value):
      finite = False
      break
    curve["step"].append(step + 1)
    curve["nll"].append(value)
    if value < min(curve["nll"][:-1]) or keep == "last":
      best, best_step = jax.device_get(nnx.state(current)), step + 1
  return best, {"steps": best_step, "steps_run": steps, "best_val_nll": min(curve["nll"]),
                "val_curve": curve["nll"], "val_steps": curve["step"], "finite": finite,
                "seconds": time.perf_counter() - started}
