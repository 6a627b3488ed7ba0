"""Smoothed accuracy: the probability of the target as a loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emoloss import _masking, _validation

ArrayLike = jax.typing.ArrayLike


def smoothed_accuracy_loss(
    logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Multi-class smoothed accuracy loss ``1 - p_y``.

  .. math::
    L = 1 - \mathrm{softmax}(z)_y \qquad\text{(soft labels } q\text{: } L = 1 - q \cdot p)

  Its logit gradient carries the factor ``p_y (1 - p_y)``, which vanishes when an example is
  badly wrong (``p_y \to 0``): a baseline that shows why cross-entropy, which keeps a gradient
  of ``-(1 - p_y)``, trains better. Near ``p_y = 1`` the two agree to first order
  (``log x ≈ x - 1``): cross-entropy is this loss with its wrong side pushed to infinity (the
  loss-design principle of Su Jianlin's post; derivation on the docs' "Derivations" page).

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]`` or soft labels ``[..., V]`` (rows summing to 1).
    where: optional boolean mask ``[...]``; masked examples give exactly 0.

  Returns:
    ``[...]`` float32 per-example loss in ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> print(emoloss.smoothed_accuracy_loss(logits, jnp.array([0, 2])))
    [0.1562 0.7881]

  References:
    Su Jianlin, "如何训练你的准确率?" (How to train your accuracy?), kexue.fm/archives/9098,
    2022-06-01 (the smooth accuracy, the ``log x ≈ x - 1`` link to cross-entropy and the
    loss-design principle); Karpukhin et al., "EXACT: How to Train Your Accuracy", 2022
    (arXiv 2205.09615), on accuracy surrogates.
  """
  logits, labels, integer, where = _validation.prepare_classification(logits, labels, where)
  probs = jax.nn.softmax(logits, axis=-1)
  if integer:
    target_prob = jnp.take_along_axis(probs, labels[..., None], axis=-1)[..., 0]
  else:
    target_prob = jnp.sum(labels * probs, axis=-1)
  return _masking.mask_loss(1.0 - target_prob, where)


def binary_smoothed_accuracy_loss(
    logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Binary smoothed accuracy loss ``1 - [y p + (1 - y)(1 - p)]`` with ``p = σ(z)``.

  Args:
    logits: ``[...]`` one logit per example (any float dtype; computed in float32).
    labels: ``[...]`` targets in ``{0, 1}`` (integer, boolean or float; floats in ``[0, 1]``
      act as soft targets; others raise ``ValueError`` eagerly and give NaN under ``jit``).
    where: optional boolean mask ``[...]``; masked examples give exactly 0.

  Returns:
    ``[...]`` float32 per-example loss in ``[0, 1]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([2.0, -1.0, 0.0])
    >>> print(emoloss.binary_smoothed_accuracy_loss(logits, jnp.array([1, 1, 0])))
    [0.1192 0.7311 0.5   ]

  References:
    Su Jianlin, "如何训练你的准确率?", kexue.fm/archives/9098, 2022-06-01; Karpukhin et al.,
    "EXACT: How to Train Your Accuracy", 2022 (arXiv 2205.09615).
  """
  logits, labels, rows = _validation.prepare_binary(logits, labels, where, soft=True)
  prob = jax.nn.sigmoid(logits)
  return _masking.mask_loss(1.0 - (labels * prob + (1.0 - labels) * (1.0 - prob)), rows)
