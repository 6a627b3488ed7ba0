"""Loss kernels shared by several losses (inputs already checked and sanitised)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from emoloss._masking import zero_where_unlabelled

Array = jax.Array


def softmax_cross_entropy(logits: Array, labels: Array, integer: bool) -> Array:
  """Softmax cross-entropy for integer or soft labels; a ``-inf`` logit (vocabulary mask) with
  zero target mass contributes 0 (``optax.losses.safe_softmax_cross_entropy``), not NaN."""
  if integer:
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  return optax.losses.safe_softmax_cross_entropy(logits, labels)


def target_log_prob(log_probs: Array, labels: Array, integer: bool) -> Array:
  """``log p_y`` for integer labels, ``Σ_i q_i log p_i`` for soft labels ``q`` (``0 log 0 = 0``:
  a ``-inf`` log-probability with zero target mass contributes 0)."""
  if integer:
    return jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  return jnp.sum(labels * zero_where_unlabelled(log_probs, labels), axis=-1)
