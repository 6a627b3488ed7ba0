"""Tiger: sign-momentum optimiser (Lion with ``β1 = β2``) with decoupled weight decay."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
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
    shrink_ratio: float | None = None,
    shrink_center: float = 0.0,
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
  * biases and normalisation parameters get ``0.5 η`` without decay (and without the RMS scale)
    in the reference: :func:`grouped_tiger` does that with ``optax.multi_transform`` over
    :func:`tiger_parameter_labels`; here ``mask`` exempts leaves from decay only;
  * the reference's NaN rule is off by default: ``shrink_ratio=s`` turns it on (the reference's
    ``s = 0.99``): a tensor whose gradient has a non-finite entry keeps its momentum and moves to
    ``c + s (θ - c)`` (``c = shrink_center``, 1 for norm scales in the reference, else 0)
    instead of stepping; other tensors step as usual. The reference tests NaN only; here ±inf
    counts too. (``optax.apply_if_finite`` is the other option: it skips the whole step.)
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
    shrink_ratio: optional ``s`` in ``[0, 1]``; if given, a tensor with a non-finite gradient is
      shrunk toward ``shrink_center`` by ``s`` instead of stepping, its momentum unchanged.
    shrink_center: ``c``, the value such tensors shrink toward.

  Returns:
    An ``optax.GradientTransformation`` (needs ``params`` in ``update`` when ``weight_decay`` is
    not the number 0, or with ``rms_scaling`` or ``shrink_ratio``).

  References:
    Su, "Tiger: A Tight-fisted Optimizer", 2023, https://github.com/bojone/tiger;
    Chen et al., "Symbolic Discovery of Optimization Algorithms" (Lion), NeurIPS 2023.
  """
  _checks.check_scalar_range(beta, "beta", low=0.0, high=1.0, high_inclusive=False)
  _checks.check_scalar_range(weight_decay, "weight_decay", low=0.0)
  _checks.check_scalar_range(min_rms, "min_rms", low=0.0)
  momentum = optax.scale_by_lion(b1=beta, b2=beta, mu_dtype=mu_dtype)
  if shrink_ratio is not None:
    _checks.check_scalar_range(shrink_ratio, "shrink_ratio", low=0.0, high=1.0)
    momentum = _keep_momentum_where_nonfinite(momentum)
  parts = [momentum]
  if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
    parts.append(optax.add_decayed_weights(weight_decay, mask))
  if rms_scaling:
    parts.append(optax.scale_by_param_block_rms(min_scale=min_rms))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  if shrink_ratio is None:
    return optax.chain(*parts)
  return _shrink_where_nonfinite(optax.chain(*parts), shrink_ratio, shrink_center)


# ----------------------------------------------------------------------------------------------
# The reference's extras: the non-finite-gradient shrink and the parameter groups.


def _finite_leaves(tree: Any) -> Any:
  """One boolean per leaf: every entry of the leaf is finite."""
  return jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), tree)


def _keep_momentum_where_nonfinite(
    momentum: optax.GradientTransformation,
) -> optax.GradientTransformation:
  """``scale_by_lion`` fed 0 for leaves with a non-finite gradient, whose momentum is then kept
  as it was (the reference sets ``β1 = 1`` and ``g = 0`` for them)."""

  def update_fn(updates, state, params=None):
    finite = _finite_leaves(updates)
    safe = jax.tree.map(lambda g, ok: jnp.where(ok, g, jnp.zeros_like(g)), updates, finite)
    updates, new_state = momentum.update(safe, state, params)
    mu = jax.tree.map(lambda ok, new, old: jnp.where(ok, new, old), finite, new_state.mu, state.mu)
    return updates, new_state._replace(mu=mu)

  return optax.GradientTransformation(momentum.init, update_fn)


def _shrink_where_nonfinite(
    inner: optax.GradientTransformation, ratio: float, center: float
) -> optax.GradientTransformation:
  """Replaces the update of every leaf with a non-finite gradient by ``(s - 1)(θ - c)``, which
  moves it to ``c + s (θ - c)``."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("tiger(shrink_ratio=...) needs `params` in `update`.")
    finite = _finite_leaves(updates)
    updates, state = inner.update(updates, state, params)

    def pick(u, ok, p):
      shrink = (ratio - 1.0) * (p.astype(jnp.float32) - center)
      return jnp.where(ok, u, shrink.astype(u.dtype))

    return jax.tree.map(pick, updates, finite, params), state

  return optax.GradientTransformation(inner.init, update_fn)


_BIAS_NAMES = ("bias", "beta")
_NORM_SCALE_NAMES = ("scale", "gamma")


def _leaf_name(path) -> str:
  """The last named key of a pytree path (``"kernel"``, ``"bias"``, ...), skipping Flax's
  ``.value`` attribute and list indices."""
  for entry in reversed(path):
    name = getattr(entry, "key", getattr(entry, "name", None))
    if isinstance(name, str) and name != "value":
      return name
  return ""


def tiger_parameter_labels(params: Any) -> Any:
  """Labels every leaf of ``params`` ``"default"``, ``"bias"`` or ``"norm_scale"`` by its name.

  A leaf whose last key is ``bias`` or ``beta`` is a bias (of a layer or a norm), ``scale`` or
  ``gamma`` a normalisation scale (Flax's ``LayerNorm``/``BatchNorm``/``RMSNorm`` name theirs
  ``scale`` and ``bias``), anything else ``"default"``: the reference's name rule (regex
  ``bias|beta|gamma`` on the variable name). Pass your own labels to :func:`grouped_tiger` when
  names differ.

  Args:
    params: a parameter pytree (dicts, Flax NNX ``State`` and ``nnx.Param`` leaves included).

  Returns:
    A pytree of strings with the structure of ``params``.
  """

  def label(path, leaf):
    del leaf
    name = _leaf_name(path)
    if name in _BIAS_NAMES:
      return "bias"
    if name in _NORM_SCALE_NAMES:
      return "norm_scale"
    return "default"

  return jax.tree_util.tree_map_with_path(label, params)


def grouped_tiger(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.965,
    weight_decay: float = 0.01,
    *,
    labels: Any = tiger_parameter_labels,
    rms_scaling: bool = True,
    min_rms: float = 1e-3,
    shrink_ratio: float | None = 0.99,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Tiger with the reference's parameter groups and non-finite-gradient shrink.

  ``optax.multi_transform`` over three groups (``labels``, by default
  :func:`tiger_parameter_labels`):

  * ``"default"``: :func:`tiger` with ``η``, decay ``λ`` and the RMS-scaled step;
  * ``"bias"``: ``0.5 η``, no decay, no RMS scale, shrink toward 0;
  * ``"norm_scale"``: ``0.5 η``, no decay, no RMS scale, shrink toward 1

  (the reference: ``lr * 0.5, d = 0`` for ``bias|beta|gamma`` and ``c = 1`` for ``gamma``), each
  with the shrink ``θ ← c + s (θ - c)`` of a tensor whose gradient is not finite.
  Differences left: the reference's RMS is per row for embeddings (here per tensor, floored at
  ``min_rms``), and its gradient accumulation and schedule are left to ``optax.MultiSteps`` and
  Optax schedules.

  Args:
    learning_rate: ``η``, a float or an Optax schedule (halved for biases and norm scales).
    beta: momentum decay ``β`` in ``[0, 1)``.
    weight_decay: decoupled weight decay ``λ >= 0`` of the ``"default"`` group.
    labels: a pytree of group names matching the params, or a function of the params returning
      one (names among ``"default"``, ``"bias"``, ``"norm_scale"``).
    rms_scaling: scale the ``"default"`` group's step by each tensor's RMS (the reference does).
    min_rms: floor of that RMS.
    shrink_ratio: ``s`` of the non-finite-gradient shrink (the reference's 0.99), or ``None``
      for none.
    mu_dtype: optional dtype of the momentum buffers.

  Returns:
    An ``optax.GradientTransformation`` (needs ``params`` in ``update``).

  References:
    Su, "Tiger: A Tight-fisted Optimizer", 2023, https://github.com/bojone/tiger (``tiger.py``).
  """
  if callable(learning_rate):
    half_rate = lambda count: 0.5 * learning_rate(count)
  else:
    half_rate = 0.5 * learning_rate
  common = {"beta": beta, "mu_dtype": mu_dtype, "shrink_ratio": shrink_ratio}
  groups = {
      "default": tiger(learning_rate, weight_decay=weight_decay, rms_scaling=rms_scaling,
                       min_rms=min_rms, **common),
      "bias": tiger(half_rate, weight_decay=0.0, **common),
      "norm_scale": tiger(half_rate, weight_decay=0.0, shrink_center=1.0, **common),
  }
  return optax.multi_transform(groups, labels)
