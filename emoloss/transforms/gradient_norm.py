"""Dividing the gradient by a running mean of its global norm (the EXACT authors' normaliser)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emoloss import _checks


class RunningGradientNormState(NamedTuple):
  """State of :func:`normalize_by_running_gradient_norm`.

  Attributes:
    count: int32 ``[]``, number of updates seen (0 before the first).
    running_norm: float32 ``[]``, running mean ``n_t`` of the global gradient norm (before the
      floor is applied).
  """

  count: jax.Array
  running_norm: jax.Array


def normalize_by_running_gradient_norm(
    momentum: float = 0.9, floor: float = 1e-2
) -> optax.GradientTransformation:
  r"""Divides the whole update by a running mean of its global L2 norm.

  .. math::
    \nu_t = \lVert g_t \rVert_2 \text{ (all leaves together)}, \qquad
    n_1 = \nu_1, \quad n_t = \mu\, n_{t-1} + (1 - \mu)\, \nu_t, \qquad
    g_t \leftarrow g_t / \max(n_t, f)

  The first step uses the norm itself (``n_1 = ν_1``, no bias toward 0); the floor ``f`` only
  bounds the divisor, the running mean is stored unfloored. With a constant gradient norm the
  output has norm 1; unlike clipping, small gradients are scaled up, so the step size stays
  meaningful when a loss with a vanishing gradient (EXACT with a small noise ``σ``) is trained.
  This is the ``GradientNormalizer`` of the EXACT authors (``src/exact_pytorch/gradient.py`` in
  tinkoff-ai/exact, ``clip=1e-2, momentum=0.9``), used in their training recipe instead of
  gradient clipping (``use_gradient_normalizer: true`` in ``configs/exact/templates/
  template-exact.yaml`` of ivan-chai/exact). Put it first in an ``optax.chain``, before the
  optimiser, as they apply it to the raw gradient before ``optimizer.step()``.

  A non-finite gradient makes the running norm non-finite for good, as in the reference; wrap the
  chain in ``optax.apply_if_finite`` where that can happen.

  Args:
    momentum: ``μ`` in ``[0, 1)``, the running mean's decay (0: divide by the current norm).
    floor: ``f > 0``, lower bound of the divisor.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`RunningGradientNormState` (two scalar
    arrays; donatable, checkpointable). ``params`` are not needed.

  References:
    Karpukhin et al., "EXACT: How to Train Your Accuracy", 2022 (arXiv 2205.09615), gradient
    normalisation; https://github.com/tinkoff-ai/exact.
  """
  _checks.check_scalar_range(momentum, "momentum", low=0.0, high=1.0, high_inclusive=False)
  _checks.check_scalar_range(floor, "floor", low=0.0, low_inclusive=False)
  for value, name in ((momentum, "momentum"), (floor, "floor")):
    if np.ndim(value) != 0:
      raise ValueError(f"`{name}` must be a scalar (got shape {np.shape(value)}).")

  def init_fn(params):
    del params
    return RunningGradientNormState(count=jnp.zeros([], jnp.int32),
                                    running_norm=jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates).astype(jnp.float32)
    decay = jnp.where(state.count == 0, 0.0, jnp.asarray(momentum, jnp.float32))
    running_norm = decay * state.running_norm + (1.0 - decay) * norm
    scale = 1.0 / jnp.maximum(running_norm, jnp.asarray(floor, jnp.float32))
    updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
    return updates, RunningGradientNormState(count=optax.safe_increment(state.count),
                                             running_norm=running_norm)

  return optax.GradientTransformation(init_fn, update_fn)
