"""Dividing the gradient by a running mean of its global norm (the EXACT authors' normaliser)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emoloss import _numerics, _validation


class RunningGradientNormState(NamedTuple):
  """State of :func:`normalize_by_running_gradient_norm`.

  Attributes:
    count: int32 ``[]``, number of updates seen (0 before the first).
    running_norm: float32 ``[]``, running mean ``n_t`` of the global gradient norm (before the
      floor is applied).
  """

  count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax's states do
  running_norm: jax.Array


def global_norm(tree) -> jax.Array:
  """The float32 L2 norm of all leaves of ``tree`` together, accumulated in float32 (float64 for
  float64 leaves) whatever the leaf dtype, and without overflow: the leaves are first divided by
  the power of two ``2^e >= max |x|`` (exact, so the result is that of the plain formula wherever
  that does not overflow). ``optax.tree.norm`` squares in the leaf dtype, so it overflows to
  ``inf`` from a norm of about 256 in float16 and 1.8e19 in float32/bfloat16. A finite tree whose
  norm exceeds the float32 range gives the largest float32; a non-finite leaf gives inf or NaN."""
  leaves = [jnp.asarray(x) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.zeros([], jnp.float32)
  dtype = jnp.result_type(jnp.float32, *(x.dtype for x in leaves))
  leaves = [x.astype(dtype) for x in leaves]
  largest = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(x), initial=0.0) for x in leaves])
  down = _numerics.power_of_two_scale(largest)
  squares = sum(jnp.sum(jnp.square(x * down[0] * down[1])) for x in leaves)
  norm = jnp.sqrt(squares) / down[0] / down[1]  # exact: powers of two
  finite_max = jnp.finfo(jnp.float32).max
  norm = jnp.where(jnp.isfinite(largest), jnp.minimum(norm, finite_max), norm)
  return norm.astype(jnp.float32)


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

  The norm is accumulated in float32 whatever the gradient's dtype and cannot overflow (a float16
  gradient of norm 300, or a float32 one of norm 1e20, is divided by its true norm; a finite norm
  beyond the float32 range counts as the largest float32), so a finite gradient never makes the
  running norm infinite, which would zero every later update. A non-finite gradient makes the
  running norm non-finite for good, as in the reference; wrap the chain in
  ``optax.apply_if_finite`` where that can happen (it skips such steps before they reach the
  state).

  Args:
    momentum: ``μ`` in ``[0, 1)``, the running mean's decay (0: divide by the current norm).
    floor: ``f > 0``, lower bound of the divisor.

  Returns:
    An ``optax.GradientTransformation`` with state :class:`RunningGradientNormState` (two scalar
    arrays; donatable, checkpointable). ``params`` are not needed.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> tx = emoloss.normalize_by_running_gradient_norm(momentum=0.9)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> for scale in (1.0, 10.0):
    ...   updates, state = tx.update({"w": jnp.array([3.0, 4.0]) * scale}, state, params)
    ...   print(updates["w"])  # first step: norm 1; then divided by the running mean norm
    ...
    [0.6 0.8]
    [3.1579 4.2105]

  References:
    Karpukhin et al., "EXACT: How to Train Your Accuracy", 2022 (arXiv 2205.09615), gradient
    normalisation; https://github.com/tinkoff-ai/exact.
  """
  _validation.check_scalar_range(momentum, "momentum", low=0.0, high=1.0, high_inclusive=False)
  _validation.check_scalar_range(floor, "floor", low=0.0, low_inclusive=False)
  for value, name in ((momentum, "momentum"), (floor, "floor")):
    if np.ndim(value) != 0:
      raise ValueError(f"`{name}` must be a scalar (got shape {np.shape(value)}).")

  def init_fn(params):
    del params
    return RunningGradientNormState(count=jnp.zeros([], jnp.int32),
                                    running_norm=jnp.zeros([], jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    norm = global_norm(updates)
    decay = jnp.where(state.count == 0, 0.0, jnp.asarray(momentum, jnp.float32))
    running_norm = decay * state.running_norm + (1.0 - decay) * norm
    scale = 1.0 / jnp.maximum(running_norm, jnp.asarray(floor, jnp.float32))
    updates = jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates)
    return updates, RunningGradientNormState(count=optax.safe_increment(state.count),
                                             running_norm=running_norm)

  return optax.GradientTransformation(init_fn, update_fn)
