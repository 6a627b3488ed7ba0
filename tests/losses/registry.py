"""The one registry of losses shared by tests/losses/test_common.py and tests/test_reliability.py.

Each entry calls a public loss as ``call(logits, labels, where=None)`` on ``logits [N, V]``
(``[N]`` for binary losses) with any ``V``: the arguments that depend on the number of classes
(cost embeddings, class priors, margins) are built from ``logits.shape[-1]``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

import emoloss


@dataclasses.dataclass(frozen=True)
class Loss:
  call: Callable  # (logits, labels, where=None) -> per-example loss
  binary: bool = False  # one logit per example, labels in {0, 1}
  batch_statistic: bool = False  # rows interact through a batch statistic (smooth F1)
  upper_bound: float = np.inf  # the loss's maximum (bounded losses)
  at_most_ce_when_right: bool = False  # loss <= CE mathematically when p_y is close to 1
  well_conditioned: bool = True  # False: tiny rounding differences are amplified (EMO/CE ratios)
  nan_spreads: bool = False  # a NaN row makes the batch statistic, hence every unmasked row, NaN
  counts_far_classes: bool = False  # -1e4 logits are not -inf to it (label smoothing's target)


def num_classes(logits) -> int:
  """``V`` of ``logits [..., V]`` (1 for a scalar, which the losses refuse with a rank error)."""
  shape = np.shape(logits)
  return shape[-1] if shape else 1


@functools.cache
def embeddings(v: int) -> np.ndarray:
  """Cost embeddings ``[V, 4]`` for EMO."""
  return np.random.default_rng(3).normal(size=(v, 4)).astype(np.float32)


@functools.cache
def duplicate_rows(v: int) -> np.ndarray:
  """Near-duplicate cost rows: EMO ~ 1e-6 (1 - p_y)."""
  return np.repeat(embeddings(v)[:1], v, axis=0) + np.eye(v, 4, dtype=np.float32) * 1e-3


@functools.cache
def prior(v: int) -> np.ndarray:
  """A long-tailed class prior (decreasing, sums to 1)."""
  weights = np.geomspace(1.0, 0.05, v)
  return (weights / weights.sum()).astype(np.float32)


def _v(fn):
  """Wraps ``fn(logits, labels, where, v)`` into ``(logits, labels, where=None)``."""
  return lambda z, y, w=None: fn(z, y, w, num_classes(z))


LOSSES = {
    "smoothed_accuracy_loss": Loss(
        lambda z, y, w=None: emoloss.smoothed_accuracy_loss(z, y, where=w), upper_bound=1.0,
        at_most_ce_when_right=True),  # 1 - p <= -log p
    "binary_smoothed_accuracy_loss": Loss(
        lambda z, y, w=None: emoloss.binary_smoothed_accuracy_loss(z, y, where=w), binary=True,
        upper_bound=1.0),
    "exact_loss": Loss(lambda z, y, w=None: emoloss.exact_loss(z, y, num_nodes=16, where=w),
                       upper_bound=1.0),
    "exact_loss[log_prob]": Loss(
        lambda z, y, w=None: emoloss.exact_loss(z, y, log_prob=True, where=w)),
    "exact_loss[batch_norm]": Loss(
        lambda z, y, w=None: emoloss.exact_loss(z, y, num_nodes=16, batch_norm=True, sigma=2.0,
                                                margin=0.5, where=w),
        batch_statistic=True, upper_bound=1.0, nan_spreads=True),
    "exact_loss[recipe]": Loss(
        lambda z, y, w=None: emoloss.exact_loss(z, y, sigma=0.5, margin=0.5, batch_norm=True,
                                                where=w),
        batch_statistic=True, upper_bound=1.0, nan_spreads=True),
    "exact_loss[log_prob,margin]": Loss(
        lambda z, y, w=None: emoloss.exact_loss(z, y, num_nodes=16, log_prob=True, margin=5.0,
                                                sigma=0.5, where=w)),
    "f1_weighted_binary_cross_entropy": Loss(
        lambda z, y, w=None: emoloss.f1_weighted_binary_cross_entropy(z, y, where=w),
        binary=True, batch_statistic=True, nan_spreads=True),
    "smooth_f1_loss": Loss(lambda z, y, w=None: emoloss.smooth_f1_loss(z, y, where=w),
                           binary=True, batch_statistic=True, upper_bound=1.0, nan_spreads=True),
    "softmax_focal_loss": Loss(lambda z, y, w=None: emoloss.softmax_focal_loss(z, y, where=w),
                               at_most_ce_when_right=True),  # (1 - p)^γ <= 1
    "softmax_focal_loss[alpha]": Loss(
        _v(lambda z, y, w, v: emoloss.softmax_focal_loss(z, y, alpha=jnp.linspace(0.2, 1.0, v),
                                                         where=w)), at_most_ce_when_right=True),
    "softmax_focal_loss[gamma=0.5]": Loss(
        lambda z, y, w=None: emoloss.softmax_focal_loss(z, y, gamma=0.5, where=w),
        at_most_ce_when_right=True),
    "softmax_focal_loss[gamma=0.3]": Loss(
        lambda z, y, w=None: emoloss.softmax_focal_loss(z, y, gamma=0.3, where=w),
        at_most_ce_when_right=True),
    "logit_adjusted_cross_entropy": Loss(
        _v(lambda z, y, w, v: emoloss.logit_adjusted_cross_entropy(z, y, prior(v), where=w))),
    "margin_cross_entropy": Loss(
        _v(lambda z, y, w, v: emoloss.margin_cross_entropy(z, y, jnp.linspace(0, 2, v),
                                                           where=w))),
    "norm_aware_margin_cross_entropy": Loss(
        _v(lambda z, y, w, v: emoloss.norm_aware_margin_cross_entropy(
            z, y, jnp.linspace(0.5, 2.0, v), jnp.linspace(0.0, 0.5, v), where=w))),
    "mixce_loss": Loss(lambda z, y, w=None: emoloss.mixce_loss(z, y, where=w),
                       at_most_ce_when_right=True),  # η + (1 - η) p_y <= 1
    "tailr_loss": Loss(lambda z, y, w=None: emoloss.tailr_loss(z, y, where=w),
                       at_most_ce_when_right=True),  # w <= 1
    "tailr_loss[smoothing]": Loss(
        lambda z, y, w=None: emoloss.tailr_loss(z, y, label_smoothing=0.1, where=w),
        counts_far_classes=True),
    "tailr_loss[open-ended,smoothing]": Loss(
        lambda z, y, w=None: emoloss.tailr_loss(z, y, gamma=1e-7, min_weight=0.2,
                                                label_smoothing=0.1, where=w),
        counts_far_classes=True),
    "emo_loss": Loss(_v(lambda z, y, w, v: emoloss.emo_loss(z, y, embeddings(v), where=w)),
                     upper_bound=2.0),
    "emo_ce_loss": Loss(_v(lambda z, y, w, v: emoloss.emo_ce_loss(z, y, embeddings(v), where=w))),
    # Near-duplicate cost rows: EMO ~ 1e-6 (1 - p_y), so the uncapped ratio CE/EMO ~ 1e6 amplifies
    # float32 rounding; checked for finiteness and row independence, not for equality.
    "emo_ce_loss[uncapped,duplicates]": Loss(
        _v(lambda z, y, w, v: emoloss.emo_ce_loss(z, y, duplicate_rows(v), max_ratio=None,
                                                  where=w)),
        well_conditioned=False),
    "emo_ce_loss[identity cost]": Loss(
        _v(lambda z, y, w, v: emoloss.emo_ce_loss(z, y, np.eye(v, dtype=np.float32), where=w))),
    "emo_ce_loss[mode 2]": Loss(
        _v(lambda z, y, w, v: emoloss.emo_ce_loss(z, y, embeddings(v), mode=2, where=w))),
}

# Public names of emoloss.losses that are not per-example losses of (logits, labels).
NOT_LOSSES = {"emo_ce_combination", "log_prior_adjustment", "mixce_weight",
              "normalize_embeddings", "posthoc_logit_adjustment", "smooth_f1_score",
              "tailr_weight"}
# Batch-level objectives of per-example losses (one scalar per batch; tests/losses/
# test_likelihood.py covers masks, garbage in masked rows, p = 0 and NaN).
NOT_LOSSES |= {"exact_batch_loss", "negative_log_mean_likelihood"}


def unregistered(public_names) -> set[str]:
  """The public loss names that no registry entry calls."""
  registered = {name.split("[")[0] for name in LOSSES}
  return set(public_names) - registered - NOT_LOSSES
