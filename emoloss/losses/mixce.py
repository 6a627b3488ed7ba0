"""MixCE: a mix of forward and (approximated) reverse cross-entropy, as a token weight."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emoloss import _masking, _validation
from emoloss.losses import _kernels

ArrayLike = jax.typing.ArrayLike


def mixce_weight(log_prob: ArrayLike, eta: float = 0.5) -> jax.Array:
  r"""MixCE's token weight ``η + (1 - η) p_y`` from ``log p_y``, under ``stop_gradient``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> print(emoloss.mixce_weight(jnp.log(jnp.array([0.9, 0.1])), eta=0.5))  # η + (1 - η) p_y
    [0.95 0.55]
  """
  log_prob = jnp.asarray(log_prob, jnp.float32)
  return jax.lax.stop_gradient(eta + (1.0 - eta) * jnp.exp(log_prob))


def mixce_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    eta: float = 0.5,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""MixCE loss: cross-entropy weighted by ``η + (1 - η) sg(p_y)``.

  .. math::
    L = \big(\eta + (1 - \eta)\,\mathrm{sg}(p_y)\big)\,(-\log p_y)

  MixCE mixes forward cross-entropy (weight ``η``) with reverse cross-entropy against the data
  distribution (weight ``1 - η``); the paper approximates the reverse term's gradient by the
  self-weighted ``sg(p_y) ∇(-log p_y)``, which is what this loss computes (the gradient of
  ``-p_y`` up to the factor: ``-∇p_y = p_y ∇(-log p_y)``). ``eta = 1`` is cross-entropy;
  ``eta = 0`` weights each token by its own probability, the total-variation gradient of
  TaiLr with ``γ = 1`` (:func:`emoloss.losses.tailr_loss`). The authors' EMO code (DRSY/EMO
  ``language_modeling/gpt2.py``, mode ``mixce``) computes the same weight with
  ``q = exp(-CE)`` under ``no_grad`` and calls ``η`` the ``mixing_ratio`` (default 0.5 in its
  ``run_lm.py``).

  Labels are not shifted: for a causal LM pass ``logits[:, :-1]`` and ``tokens[:, 1:]``.

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]``.
    eta: mixing ratio ``η ∈ [0, 1]``.
    where: optional boolean mask ``[...]`` (padding tokens); masked tokens give exactly 0.

  Returns:
    ``[...]`` float32 per-token loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    >>> labels = jnp.array([0, 0])
    >>> print(emoloss.mixce_loss(logits, labels, eta=1.0))  # η = 1: cross-entropy
    [0.0949 3.0949]
    >>> print(emoloss.mixce_loss(logits, labels, eta=0.5))
    [0.0906 1.6175]

  References:
    Zhang et al., "MixCE: Training Autoregressive Language Models by Mixing Forward and Reverse
    Cross-Entropies", ACL 2023 (arXiv 2305.16958).
  """
  _validation.check_scalar_range(eta, "eta", 0.0, 1.0)
  logits, labels, _, where = _validation.prepare_classification(
      logits, labels, where, allow_soft=False)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  target_log_prob = _kernels.target_log_prob(log_probs, labels, integer=True)
  loss = -mixce_weight(target_log_prob, eta) * target_log_prob
  return _masking.mask_loss(loss, where)
