"""F1-weighted binary cross-entropy and the smooth-F1 loss (rare positive class)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emoloss import _masking, _validation

ArrayLike = jax.typing.ArrayLike


def _batch_probs(logits, labels, where):
  """Checked float32 ``(logits, labels, rows, probs)`` with masked entries zeroed; rank >= 1."""
  if jnp.ndim(logits) < 1:
    raise ValueError(
        f"`logits` must have rank >= 1, a batch axis first (got shape {jnp.shape(logits)}).")
  logits, labels, rows = _validation.prepare_binary(logits, labels, where)
  probs = _masking.mask_loss(jax.nn.sigmoid(logits), rows.keep)
  return logits, labels, rows, probs


def _f1_from_probs(labels, probs, rows: _masking.Rows) -> jax.Array:
  """``2 Σ y p / Σ (y + p)`` per column; NaN for a column with an out-of-range unmasked label."""
  overlap = jnp.sum(labels * probs, axis=0)
  total = jnp.sum(labels + probs, axis=0)
  score = 2.0 * overlap / jnp.where(total == 0, 1.0, total)  # a NaN total stays (value, grad)
  return jnp.where(jnp.any(rows.invalid, axis=0), jnp.nan, score)


def smooth_f1_score(
    logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Smooth F1 of the positive class over the batch axis: ``2 Σ y p / Σ (y + p)``.

  ``p = σ(z)``; masked examples are left out of both sums. An empty batch (or no positive label
  and zero predicted mass) gives 0.

  Args:
    logits: ``[N, ...]`` one logit per example and label column.
    labels: ``[N, ...]`` targets in ``{0, 1}``.
    where: optional boolean mask ``[N, ...]``.

  Returns:
    ``logits.shape[1:]`` float32 smooth F1 per label column (a scalar for a binary task); NaN
    (value and gradient) for a column with a NaN logit in an unmasked entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[4.0], [-4.0], [4.0], [-4.0]])  # [batch, labels]
    >>> labels = jnp.array([[1], [0], [0], [1]])
    >>> print(emoloss.smooth_f1_score(logits, labels))
    [0.5]
  """
  _, labels, rows, probs = _batch_probs(logits, labels, where)
  return _f1_from_probs(labels, probs, rows)


def smooth_f1_loss(
    logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Plain smooth-F1 loss ``1 - F1s`` with ``F1s = 2 Σ y p / Σ (y + p)`` over the batch.

  A batch statistic, not a per-example loss: it equals
  ``optax.losses.dice_loss(p, y, axis=0, smooth=0)``-style Dice over the batch axis. Provided as
  the baseline of :func:`f1_weighted_binary_cross_entropy`.

  Args:
    logits: ``[N, ...]`` one logit per example and label column (multi-label: per column).
    labels: ``[N, ...]`` targets in ``{0, 1}``.
    where: optional boolean mask ``[N, ...]``; masked entries are left out of the sums.

  Returns:
    ``logits.shape[1:]`` float32 loss per label column (a scalar for a binary task); 0 for a
    column whose examples are all masked, and for an empty batch; NaN for a column with a NaN
    logit in an unmasked entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[4.0], [-4.0], [4.0], [-4.0]])
    >>> labels = jnp.array([[1], [0], [0], [1]])
    >>> print(emoloss.smooth_f1_loss(logits, labels))
    [0.5]

  References:
    Milletari et al., "V-Net", 3DV 2016 (Dice loss); Su Jianlin, "再谈类别不平衡问题:调节权重与
    魔改Loss的对比联系" (class imbalance: re-weighting vs modified losses),
    kexue.fm/archives/7708, 2020-08-31 (smooth F1 as a loss).
  """
  loss = 1.0 - smooth_f1_score(logits, labels, where=where)
  if np.shape(logits)[0] == 0:  # an empty batch, like a fully masked column, gives 0
    return jnp.zeros_like(loss)
  if where is None:
    return loss
  # A column with no unmasked example contributes nothing (0, zero gradient).
  return jnp.where(jnp.any(jnp.asarray(where), axis=0), loss, 0.0)


def f1_weighted_binary_cross_entropy(
    logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Binary cross-entropy weighted by the batch's smooth F1 (held constant).

  The gradient of ``-F1s`` per example is proportional to ``-(y - F1s/2) ∇p``; replacing ``∇p``
  by ``∇log p`` (and ``-∇p`` by ``∇log(1 - p)`` for negatives) gives

  .. math::
    L = -\big[y\,(1 - \mathrm{sg}(F1_s)/2) \log p + (1 - y)\,(\mathrm{sg}(F1_s)/2) \log(1 - p)\big]

  so positives weigh ``1 - F1s/2`` and negatives ``F1s/2``: while F1 is low, errors on the rare
  positives dominate. ``∂L/∂z = -(1 - F1s/2)(1 - p)`` for a positive, ``(F1s/2) p`` for a
  negative. Log-sigmoid forms keep it finite for any logit. Multi-label: per label column
  (``F1s`` is computed per column over the batch axis).

  Args:
    logits: ``[N, ...]`` one logit per example and label column (any float dtype; float32 math).
    labels: ``[N, ...]`` targets in ``{0, 1}``.
    where: optional boolean mask ``[N, ...]``; masked entries give exactly 0 and are left out of
      ``F1s``.

  Returns:
    ``[N, ...]`` float32 per-example loss. A NaN logit in an unmasked entry makes its column's
    ``F1s`` NaN, hence every unmasked entry of that column NaN (value and gradient): a batch
    statistic computed from a NaN is never turned into a finite loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[1.0], [-2.0], [0.5], [-1.0]])
    >>> labels = jnp.array([[1], [0], [0], [1]])
    >>> print(emoloss.f1_weighted_binary_cross_entropy(logits, labels))
    [[0.2295]
     [0.0339]
     [0.2603]
     [0.9623]]

  References:
    Su Jianlin, "再谈类别不平衡问题:调节权重与魔改Loss的对比联系" (class imbalance: re-weighting vs
    modified losses), kexue.fm/archives/7708, 2020-08-31 (the smooth-F1 gradient as a weighted
    cross-entropy), and "如何训练你的准确率?", kexue.fm/archives/9098, 2022-06-01 (the
    loss-design principle: ``∇p`` replaced by ``∇log p``). Derivation: the docs' "Derivations"
    page.
  """
  logits, labels, rows, probs = _batch_probs(logits, labels, where)
  half_f1 = 0.5 * jax.lax.stop_gradient(_f1_from_probs(labels, probs, rows))
  positive = labels > 0
  # Each entry uses only its own branch (double where): ±inf logits give no 0 · inf, and a zero
  # weight gives 0 whatever the log-probability; a NaN weight (a NaN in the batch) stays NaN.
  nll = -jax.nn.log_sigmoid(jnp.where(positive, logits, -logits))
  weight = jnp.where(positive, 1.0 - half_f1, half_f1)
  loss = jnp.where(weight == 0, 0.0, weight * nll)
  return _masking.mask_loss(loss, rows)
