"""TaiLr: total-variation-guided token weighting of the negative log-likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emoloss import _masking, _validation
from emoloss.losses import _kernels

ArrayLike = jax.typing.ArrayLike


def tailr_weight(log_prob: ArrayLike, gamma: float, min_weight: float = 0.0) -> jax.Array:
  r"""TaiLr's token weight ``clip(p / (γ + (1 - γ) p), min_weight, 1)`` from ``log p``.

  Computed in log space as the official code does, ``exp(log p - log(γ + (1 - γ) p))``, and
  returned under ``stop_gradient``.

  Args:
    log_prob: ``[...]`` log-probabilities of the targets (``<= 0``; ``-inf`` allowed).
    gamma: ``γ ∈ [0, 1]`` (scalar).
    min_weight: lower clip of the weight, in ``[0, 1]``.

  Returns:
    ``[...]`` float32 weights in ``[min_weight, 1]``, without gradient; NaN where ``log_prob`` is
    NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> log_p = jnp.log(jnp.array([0.9, 0.1]))
    >>> print(emoloss.tailr_weight(log_p, gamma=0.0))  # cross-entropy: weight 1
    [1. 1.]
    >>> print(emoloss.tailr_weight(log_p, gamma=0.8))
    [0.9184 0.122 ]
  """
  _check_hyperparameters(gamma, min_weight)
  log_prob = jnp.asarray(log_prob, jnp.float32)
  gamma = jnp.asarray(gamma, jnp.float32)
  # log(γ + (1 - γ) p) without underflow: exact at γ = 0 (weight 1) and γ = 1 (weight p).
  log_denominator = jnp.logaddexp(jnp.log(gamma), jnp.log1p(-gamma) + log_prob)
  log_weight = jnp.where(log_prob == -jnp.inf, jnp.where(gamma > 0, -jnp.inf, 0.0),
                         log_prob - log_denominator)  # p = 0: weight 0 unless γ = 0; NaN stays
  weight = jnp.clip(jnp.exp(log_weight), min_weight, 1.0)
  return jax.lax.stop_gradient(weight)


def _check_hyperparameters(gamma, min_weight) -> None:
  if np.ndim(gamma) != 0:
    raise ValueError(f"`gamma` must be a scalar in [0, 1] (got shape {np.shape(gamma)}).")
  _validation.check_scalar_range(gamma, "gamma", 0.0, 1.0)
  if np.ndim(min_weight) != 0:
    raise ValueError(f"`min_weight` must be a scalar in [0, 1] (got shape {np.shape(min_weight)}).")
  _validation.check_scalar_range(min_weight, "min_weight", 0.0, 1.0)


def tailr_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 0.8,
    min_weight: float = 0.0,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""TaiLr loss: total-variation-weighted negative log-likelihood.

  .. math::
    L = -w \log p_y, \qquad
    w = \mathrm{sg}\Big(\mathrm{clip}\Big(\frac{p_y}{\gamma + (1-\gamma) p_y},
        w_{\min}, 1\Big)\Big)

  The weight down-weights low-probability targets, the ones cross-entropy over-fits (noisy data,
  over-confidence). ``gamma = 0`` gives ``w = 1``, i.e. exactly cross-entropy; ``gamma = 1``
  gives ``w = p_y``, whose gradient ``-p_y ∇log p_y = -∇p_y`` is the total-variation gradient.
  (Some descriptions say "γ = 1 gives cross-entropy"; with this formula, which is the one of
  the paper and the official code, it is γ = 0.) ``gamma`` is the official code's "density ratio
  threshold" (tuned per task; 0.8 is the common default of its ports) and ``min_weight`` its
  ``density-min-weight`` (default 0).

  With ``label_smoothing = ε`` the smoothing term mixes in outside the weight:
  ``L = (1 - ε) w (-log p_y) + ε · mean_v(-log p_v)``, the mean taken over the classes whose
  logit is not ``-inf`` (a vocabulary mask removes classes from the smoothing target too).

  A target with ``p_y = 0`` (a ``-inf`` target logit) gives ``inf`` when its weight is positive
  (``γ = 0`` or ``min_weight > 0``) and 0 otherwise, the limit of ``p log p``; never NaN. A NaN
  logit in an unmasked row gives NaN (value and gradient), never a zero weight.

  Labels are not shifted: for a causal LM pass ``logits[:, :-1]`` and ``tokens[:, 1:]``.

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]``.
    gamma: ``γ ∈ [0, 1]``.
    min_weight: lower clip of the weight, in ``[0, 1]``.
    label_smoothing: ``ε ∈ [0, 1)``.
    where: optional boolean mask ``[...]`` (padding tokens); masked tokens give exactly 0.

  Returns:
    ``[...]`` float32 per-token loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    >>> labels = jnp.array([0, 0])  # the second example is unlikely under the model
    >>> print(emoloss.tailr_loss(logits, labels, gamma=0.0))  # = cross-entropy
    [0.0949 3.0949]
    >>> print(emoloss.tailr_loss(logits, labels, gamma=0.8))
    [0.0879 0.1732]

  References:
    Ji et al., "Tailoring Language Generation Models under Total Variation Distance", ICLR 2023
    (arXiv 2302.13344); official code thu-coai/TaiLr; Su Jianlin, "缓解交叉熵过度自信的一个简明
    方案" (a simple remedy for cross-entropy's over-confidence), kexue.fm/archives/9526,
    2023-03-14.
  """
  _check_hyperparameters(gamma, min_weight)
  _validation.check_scalar_range(label_smoothing, "label_smoothing", 0.0, 1.0, high_inclusive=False)
  logits, labels, _, where = _validation.prepare_classification(
      logits, labels, where, allow_soft=False)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  target_log_prob = _kernels.target_log_prob(log_probs, labels, integer=True)
  weight = tailr_weight(target_log_prob, gamma, min_weight)
  weighted_nll = jnp.where(weight == 0, 0.0, -weight * target_log_prob)  # a NaN stays NaN
  loss = (1.0 - label_smoothing) * weighted_nll
  if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0):
    loss = loss + label_smoothing * _uniform_smoothing_loss(logits, log_probs)
  return _masking.mask_loss(loss, where)


def _uniform_smoothing_loss(logits: jax.Array, log_probs: jax.Array) -> jax.Array:
  """``mean_v(-log p_v)`` over the classes whose logit is not ``-inf``."""
  allowed = logits > -jnp.inf
  total = jnp.sum(jnp.where(allowed, log_probs, 0.0), axis=-1)
  return -total / jnp.maximum(jnp.sum(allowed, axis=-1), 1).astype(jnp.float32)
