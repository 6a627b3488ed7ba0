"""Per-token losses built on the fused per-token statistics (no ``[N, V]`` logits)."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from emoloss import _validation
from emoloss.fused import _plumbing as plumbing
from emoloss.fused._chunked import fused_token_stats
from emoloss.fused._core import AxisName
from emoloss.losses._emo import MODE1_MAX_RATIO, emo_ce_combination
from emoloss.losses._mixce import mixce_weight

ArrayLike = jax.typing.ArrayLike


def fused_emo_ce_loss(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike,
    *,
    mode: int = 1,
    max_ratio: float | None = MODE1_MAX_RATIO,
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    mesh: Mesh | None = None,
    data_axis: AxisName = "data",
    model_axis: AxisName = "model",
) -> jax.Array:
  r"""Per-token published EMO + CE mix of ``hidden [..., d]`` and a ``[V, d]`` head (fused
  :func:`emoloss.emo_ce_loss`; an ``nnx.Linear`` kernel ``[d, V]`` is passed as ``kernel.T``).

  .. math::
    \text{mode 1: } L = \tfrac12\big(\min(\mathrm{sg}(\mathrm{CE}/\mathrm{EMO}), r_{\max})
      \cdot \mathrm{EMO} + \mathrm{CE}\big), \quad
    \text{mode 2: } L = \mathrm{sg}(\mathrm{EMO}/\mathrm{CE})\,\mathrm{CE} + \mathrm{EMO}

  with CE and EMO from :func:`emoloss.fused_token_stats` and the mix (and its numerics: ratios
  clipped to ``[0, r_max]``, CE and EMO clamped at 0, no ``0/0``) from
  :func:`emoloss.losses.emo_ce_combination`. ``max_ratio = 3`` is the packaged loss (EMOLoss);
  ``None`` (uncapped) the paper's language-modelling runs (DRSY/EMO ``gpt2.py``, mode ``emo``).
  Reduce with a masked mean over tokens (or use :func:`emoloss.fused_loss` with
  :func:`emoloss.emo_ce_per_token`, the one-pass schedule).

  Args:
    hidden: ``[..., d]`` hidden states.
    head: ``[V, d]`` LM head.
    labels: ``[...]`` integer target ids (not shifted here).
    cost_embeddings: ``[V, k]`` frozen cost embeddings (e.g. a copy of the pretrained head).
    mode: 1 ("more weight on MLE", default) or 2 ("more weight on EMO").
    max_ratio: cap of the mode-1 ratio (default 3.0), ``None`` for uncapped.
    where: optional boolean mask ``[...]``; masked tokens give exactly 0.
    chunk_size, softcap, temperature, label_smoothing, mesh, data_axis, model_axis: as in
      :func:`emoloss.fused_token_stats` (CE and EMO both see ``softmax(z')``; CE is taken
      against the smoothed targets).

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
    >>> fused = emoloss.fused_emo_ce_loss(hidden, head, labels, head, chunk_size=8)
    >>> dense = emoloss.emo_ce_loss(hidden @ head.T, labels, head)
    >>> print(fused.shape, jnp.allclose(fused, dense, atol=1e-4))
    (4,) True

  References:
    Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language
    Modeling", ICLR 2024 (arXiv 2310.04691).
  """
  if cost_embeddings is None:
    raise ValueError("`cost_embeddings` is required for the EMO + CE loss.")
  out = fused_token_stats(hidden, head, labels, cost_embeddings, where=where,
                          chunk_size=chunk_size, softcap=softcap, temperature=temperature,
                          label_smoothing=label_smoothing, mesh=mesh, data_axis=data_axis,
                          model_axis=model_axis)
  assert out.emo is not None  # computed whenever cost_embeddings are given
  loss = emo_ce_combination(out.nll, out.emo, mode=mode, max_ratio=max_ratio)
  return plumbing.per_token_label_rule(loss, labels, where, np.shape(head)[0])


def fused_mixce_loss(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    *,
    eta: float = 0.5,
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    mesh: Mesh | None = None,
    data_axis: AxisName = "data",
    model_axis: AxisName = "model",
) -> jax.Array:
  r"""Per-token MixCE loss of ``hidden [..., d]`` and a ``[V, d]`` head (fused
  :func:`emoloss.mixce_loss`; an ``nnx.Linear`` kernel ``[d, V]`` is passed as ``kernel.T``).

  .. math::
    L = \big(\eta + (1 - \eta)\,\mathrm{sg}(e^{-\mathrm{nll}})\big)\,\mathrm{nll},
    \qquad \mathrm{nll} = \mathrm{lse}(h W^\top) - (h W^\top)_y

  with ``nll`` from :func:`emoloss.fused_token_stats` (chunked over the vocabulary; the logits
  are never materialised). Reduce with a masked mean over tokens.

  Args:
    hidden: ``[..., d]`` hidden states.
    head: ``[V, d]`` LM head.
    labels: ``[...]`` integer target ids (not shifted here).
    eta: mixing ratio ``η ∈ [0, 1]`` (1 is cross-entropy).
    where: optional boolean mask ``[...]``; masked tokens give exactly 0.
    chunk_size, softcap, temperature, label_smoothing, mesh, data_axis, model_axis: as in
      :func:`emoloss.fused_token_stats` (with ``label_smoothing``, ``nll`` is the cross-entropy
      against the smoothed targets and the weight uses its ``exp(-nll)``).

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
  nll = fused_token_stats(hidden, head, labels, where=where, chunk_size=chunk_size,
                          softcap=softcap, temperature=temperature,
                          label_smoothing=label_smoothing, mesh=mesh, data_axis=data_axis,
                          model_axis=model_axis).nll
  loss = mixce_weight(-nll, eta) * nll
  return plumbing.per_token_label_rule(loss, labels, where, np.shape(head)[0])
