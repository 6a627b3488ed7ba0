"""Tiger: sign-momentum optimiser (Lion with ``β1 = β2``) with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import jax
import optax

from emoloss import _checks


def tiger(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.965,
    weight_decay: float = 0.01,
    *,
    mask: Any = None,
    rms_scaling: bool = False,
    min_rms: float = 1e-3,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Tiger ("tight-fisted optimiser"): one momentum buffer, a sign update, decoupled decay.

  .. math::
    m_t = \beta\, m_{t-1} + (1 - \beta)\, g_t, \qquad
    \theta_t = \theta_{t-1} - \eta_t \big(\operatorname{sign}(m_t) + \lambda\, \theta_{t-1}\big)

  This is Lion with ``β1 = β2 = β`` (Lion's update direction ``sign(β1 m + (1-β1) g)`` is then the
  sign of the new momentum itself). Built as ``optax.chain(scale_by_lion(b1=β, b2=β),
  add_decayed_weights(λ, mask), [scale_by_param_block_rms], scale_by_learning_rate(η))``; optax
  has every piece, it lacks only this combination. The weight decay is multiplied by the learning
  rate, as in the reference (``u = η (sign(m) + λθ)``).

  ``rms_scaling=True`` gives the reference's LAMB-like relative step: ``η`` is multiplied by
  ``max(RMS(θ), min_rms)`` of each parameter tensor (decay term included), so ``η`` becomes a
  relative change per step (the reference's default ``η = 1e-3`` assumes this).

  Differences from the reference implementation (bojone/tiger), left out on purpose:

  * the RMS is per tensor, also for embeddings (the reference uses a per-row RMS for them) and
    floored at ``min_rms`` (the reference has no floor, so a zero tensor would never move);
  * biases and normalisation parameters get ``0.5 η`` without decay in the reference: use
    ``mask`` to exempt them from decay (e.g. ``mask=lambda p: jax.tree.map(lambda x: x.ndim > 1,
    p)``) and ``optax.multi_transform`` with a second ``tiger(0.5 * η, ...)`` for the half rate;
  * the reference's NaN rule (a NaN gradient leaves the momentum alone and shrinks the tensor by
    0.99): wrap the optimiser in ``optax.apply_if_finite(tiger(...), max_consecutive_errors)``,
    which skips the whole step and leaves the state unchanged;
  * its in-momentum gradient accumulation and piecewise-linear schedule: use
    ``optax.MultiSteps`` (equivalent update, one extra buffer) and an Optax schedule.

  Args:
    learning_rate: ``η``, a float or an Optax schedule.
    beta: momentum decay ``β`` in ``[0, 1)``.
    weight_decay: decoupled weight decay ``λ >= 0``.
    mask: optional pytree of booleans (or a function of the params returning one) selecting the
      leaves that are decayed, as in ``optax.add_decayed_weights``.
    rms_scaling: scale each tensor's step by its RMS (relative learning rate).
    min_rms: floor of the RMS scale when ``rms_scaling``.
    mu_dtype: optional dtype of the momentum buffer (default: that of the params).

  Returns:
    An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when ``weight_decay`` is
    not the number 0, or with ``rms_scaling``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> tx = emoloss.tiger(learning_rate=0.1, weight_decay=0.0)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([0.3, -0.01])}, state, params)
    >>> print(updates["w"])  # -lr * sign(momentum)
    [-0.1  0.1]

  References:
    Su, "Tiger: A Tight-fisted Optimizer", 2023, https://github.com/bojone/tiger;
    Chen et al., "Symbolic Discovery of Optimization Algorithms" (Lion), NeurIPS 2023.
  """
  _checks.check_scalar_range(beta, "beta", low=0.0, high=1.0, high_inclusive=False)
  _checks.check_scalar_range(weight_decay, "weight_decay", low=0.0)
  _checks.check_scalar_range(min_rms, "min_rms", low=0.0)
  parts = [optax.scale_by_lion(b1=beta, b2=beta, mu_dtype=mu_dtype)]
  if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
    parts.append(optax.add_decayed_weights(weight_decay, mask))
  if rms_scaling:
    parts.append(optax.scale_by_param_block_rms(min_scale=min_rms))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
