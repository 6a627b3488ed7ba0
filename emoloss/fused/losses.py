"""Per-token losses built on the fused kernel's outputs (no ``[N, V]`` logits)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emoloss import _validation
from emoloss.fused.chunked import DEFAULT_CHUNK_SIZE, fused_ce_emo
from emoloss.losses.mixce import mixce_weight

ArrayLike = jax.typing.ArrayLike


def fused_mixce_loss(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    *,
    eta: float = 0.5,
    where: ArrayLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    freeze_head: bool = False,
) -> jax.Array:
  r"""Per-token MixCE loss from hidden states (fused :func:`emoloss.mixce_loss`).

  .. math::
    L = \big(\eta + (1 - \eta)\,\mathrm{sg}(e^{-\mathrm{nll}})\big)\,\mathrm{nll},
    \qquad \mathrm{nll} = \mathrm{lse}(h W^\top) - (h W^\top)_y

  with ``nll`` from :func:`emoloss.fused_ce_emo` (chunked over the vocabulary; the logits are
  never materialised). Reduce with a masked mean over tokens.

  Args:
    hidden: ``[..., d]`` hidden states.
    head: ``[V, d]`` LM head.
    labels: ``[...]`` integer target ids (not shifted here).
    eta: mixing ratio ``η ∈ [0, 1]`` (1 is cross-entropy).
    where: optional boolean mask ``[...]``; masked tokens give exactly 0.
    chunk_size: vocabulary rows per chunk.
    softcap: logit soft-cap ``c`` or ``None`` (see :func:`emoloss.fused_ce_emo`).
    temperature: logit temperature ``T``.
    label_smoothing: ``ε``: ``nll`` is the cross-entropy against the smoothed targets (and the
      weight uses ``exp(-nll)`` of it).
    freeze_head: if True, no gradient (and no ``∂W`` work) for ``head``.

  Returns:
    ``[...]`` float32 per-token loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import emoloss
    >>> rng = np.random.default_rng(0)
    >>> hidden = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    >>> head = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    >>> labels = jnp.asarray(rng.integers(0, 32, 4))
    >>> fused = emoloss.fused_mixce_loss(hidden, head, labels, eta=0.5, chunk_size=8)
    >>> dense = emoloss.mixce_loss(hidden @ head.T, labels, eta=0.5)
    >>> print(fused.shape, jnp.allclose(fused, dense, atol=1e-4))
    (4,) True

  References:
    Zhang et al., "MixCE: Training Autoregressive Language Models by Mixing Forward and Reverse
    Cross-Entropies", ACL 2023 (arXiv 2305.16958).
  """
  _validation.check_scalar_range(eta, "eta", 0.0, 1.0)
  nll = fused_ce_emo(hidden, head, labels, where=where, chunk_size=chunk_size, softcap=softcap,
                     temperature=temperature, label_smoothing=label_smoothing,
                     freeze_head=freeze_head).nll
  loss = mixce_weight(-nll, eta) * nll
  return loss if where is None else jnp.where(where, loss, 0.0)
