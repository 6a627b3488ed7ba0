"""TaiLr: total-variation-guided token weighting of the negative log-likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emoloss import _checks

ArrayLike = jax.typing.ArrayLike


def tailr_weight(log_prob: ArrayLike, gamma: float, min_weight: float = 0.0) -> jax.Array:
  r"""TaiLr's token weight ``clip(p / (γ + (1 - γ) p), min_weight, 1)`` from ``log p``.

  Computed in log space as the official code does, ``exp(log p - log(γ + (1 - γ) p))``, and
  returned under ``stop_gradient``.

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
  log_prob = jnp.asarray(log_prob, jnp.float32)
  gamma = jnp.asarray(gamma, jnp.float32)
  # log(γ + (1 - γ) p) without underflow: exact at γ = 0 (weight 1) and γ = 1 (weight p).
  log_denominator = jnp.logaddexp(jnp.log(gamma), jnp.log1p(-gamma) + log_prob)
  log_weight = log_prob - log_denominator
  weight = jnp.clip(jnp.exp(log_weight), min_weight, 1.0)
  return jax.lax.stop_gradient(weight)


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
  (SPEC.md and the issue say "γ = 1 gives cross-entropy"; with this formula, which is the one of
  the paper and the official code, it is γ = 0.) ``gamma`` is the official code's "density ratio
  threshold" (tuned per task; 0.8 is the common default of its ports) and ``min_weight`` its
  ``density-min-weight`` (default 0).

  With ``label_smoothing = ε`` the smoothing term mixes in outside the weight:
  ``L = (1 - ε) w (-log p_y) + ε · mean_v(-log p_v)``.

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
    (arXiv 2302.13344); official code thu-coai/TaiLr.
  """
  _checks.check_scalar_range(gamma, "gamma", 0.0, 1.0)
  _checks.check_scalar_range(min_weight, "min_weight", 0.0, 1.0)
  _checks.check_scalar_range(label_smoothing, "label_smoothing", 0.0, 1.0, high_inclusive=False)
  logits, labels, _, where = _checks.prepare_classification(
      logits, labels, where, allow_soft=False)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  target_log_prob = _checks.target_log_prob(log_probs, labels, integer=True)
  weight = tailr_weight(target_log_prob, gamma, min_weight)
  smooth_loss = -jnp.mean(log_probs, axis=-1)
  loss = -(1.0 - label_smoothing) * weight * target_log_prob + label_smoothing * smooth_loss
  return _checks.mask_loss(loss, where)
