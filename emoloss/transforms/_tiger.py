"""Tiger: sign-momentum optimiser (Lion with ``β1 = β2``) with decoupled weight decay, built from
Optax parts: :func:`scale_by_tiger` (the momentum, its accumulation rule and the sign), then
``optax.add_decayed_weights``, the RMS scale and ``optax.scale_by_learning_rate``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emoloss import _validation


class ScaleByTigerState(NamedTuple):
  """State of :func:`scale_by_tiger`.

  Attributes:
    cycle_position: int32 ``[]``, micro-steps already taken in the current accumulation cycle
      (0 at a cycle's start).
    cycle_length: int32 ``[]``, the number of micro-steps of the current cycle: the
      ``accumulation_steps`` in force at its first micro-step (a change of ``accumulation_steps``
      takes effect at the next cycle).
    mu: the momentum, a pytree like the params (the only parameter-sized buffer).
  """

  cycle_position: jax.Array
  cycle_length: jax.Array
  mu: Any


class TigerState(NamedTuple):
  """State of :func:`tiger`.

  Attributes:
    momentum: the :class:`ScaleByTigerState` (updated at every micro-step).
    step: the state of the step chain (weight decay, RMS scale, learning rate), advanced once per
      parameter update: a learning-rate schedule's ``count`` there is the update count.
  """

  momentum: ScaleByTigerState
  step: Any


def scale_by_tiger(
    beta: float = 0.965,
    *,
    accumulation_steps: int = 1,
    mu_dtype: jax.typing.DTypeLike | None = None,
    skip_nonfinite: bool = False,
) -> optax.GradientTransformation:
  r"""Tiger's momentum and its sign: ``u = sign(m)``, ``m ← b_t m + (1 - β)/k · g``.

  With ``k = accumulation_steps`` micro-steps per cycle, at the cycle's micro-step
  ``j = 0, ..., k - 1``

  .. math::
    m \leftarrow b_j\, m + \frac{1 - \beta}{k}\, g, \qquad
    b_j = \begin{cases} \beta & j = 0 \\ 1 & \text{otherwise} \end{cases}, \qquad
    u = \operatorname{sign}(m),

  so over one cycle the momentum becomes ``β m + (1 - β) ḡ`` with ``ḡ`` the mean of the cycle's
  gradients: the momentum is the accumulator. With ``k = 1`` this is
  ``optax.scale_by_lion(b1=β, b2=β)`` bit for bit. The output is ``sign(m)`` at every
  micro-step; applying it only at the end of a cycle (``state.cycle_position == 0`` after the
  update) is :func:`tiger`'s job. The state keeps the cycle position and the cycle's length,
  so a change of ``accumulation_steps`` (injected, or when a state is resumed with another
  value) takes effect at the next cycle and never cuts the current one short.

  Args:
    beta: momentum decay ``β`` in ``[0, 1)``.
    accumulation_steps: ``k >= 1``, micro-steps (gradients) per cycle.
    mu_dtype: optional dtype of the momentum (default: that of the params).
    skip_nonfinite: a leaf whose gradient has a non-finite entry keeps its momentum (``b = 1``,
      ``g = 0``, the reference's NaN rule); its output is then that of the kept momentum.

  Returns:
    An ``optax.GradientTransformation`` with a :class:`ScaleByTigerState`; the updates are
    ``sign(m)`` in at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import emoloss
    >>> tx = optax.chain(emoloss.scale_by_tiger(beta=0.9), optax.scale_by_learning_rate(0.1))
    >>> params = jnp.zeros(2)
    >>> updates, state = tx.update(jnp.array([0.3, -0.01]), tx.init(params))
    >>> print(updates)
    [-0.1  0.1]

  References:
    Su Jianlin, "Tiger: 一个'抠'到极致的优化器", https://kexue.fm/archives/9512, 2023;
    https://github.com/bojone/tiger (``tiger.py``, ``grad_accum_steps``).
  """
  _validation.check_scalar_range(beta, "beta", low=0.0, high=1.0, high_inclusive=False)
  _check_accumulation_steps(accumulation_steps)
  k = accumulation_steps

  def init_fn(params):
    return ScaleByTigerState(cycle_position=jnp.zeros([], jnp.int32),
                             cycle_length=jnp.asarray(k, jnp.int32),
                             mu=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates, state, params=None):
    del params
    first = state.cycle_position == 0
    length = jnp.where(first, jnp.asarray(k, jnp.int32), state.cycle_length)
    b1 = jnp.where(first, beta, 1.0)
    b2 = jnp.where(length == k, (1.0 - beta) / k, (1.0 - beta) / length)
    if skip_nonfinite:

      def new_momentum(g, m, ok):  # a non-finite gradient keeps m (the reference's b1 = 1, g = 0)
        return b2 * jnp.where(ok, g, jnp.zeros_like(g)) + jnp.where(ok, b1, 1.0) * m

      momentum = jax.tree.map(new_momentum, updates, state.mu, _finite_leaves(updates))
    else:
      # b2 g + b1 m is the order of optax's update_moment (scale_by_lion).
      momentum = jax.tree.map(lambda g, m: b2 * g + b1 * m, updates, state.mu)
    direction = jax.tree.map(lambda m: jnp.sign(m).astype(_at_least_f32(m.dtype)), momentum)
    mu = optax.tree.cast(momentum, mu_dtype) if mu_dtype is not None else jax.tree.map(
        lambda new, old: new.astype(old.dtype), momentum, state.mu)
    position = state.cycle_position + 1
    position = jnp.where(position >= length, 0, position)
    return direction, ScaleByTigerState(cycle_position=position, cycle_length=length, mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_param_rms(min_rms: Any, per_row: bool) -> optax.GradientTransformation:
  """Multiplies each leaf's update by ``max(RMS(θ), min_rms)`` of its parameter (per row: over
  the last axis), in float32."""

  def update_fn(updates, state, params=None):
    updates = jax.tree.map(lambda u, p: u * _rms(p, min_rms, per_row), updates, params)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def tiger(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.965,
    weight_decay: float = 0.01,
    *,
    mask: Any = None,
    rms_scaling: bool = False,
    rms_per_row: bool = False,
    min_rms: float = 1e-3,
    mu_dtype: jax.typing.DTypeLike | None = None,
    shrink_ratio: float | None = None,
    shrink_center: float = 0.0,
    accumulation_steps: int = 1,
) -> optax.GradientTransformation:
  r"""Tiger ("tight-fisted optimiser"): one momentum buffer, a sign update, decoupled decay, and
  gradient accumulation without an extra buffer.

  Built as ``optax.lion`` is: :func:`scale_by_tiger`, then the step chain
  ``optax.add_decayed_weights(weight_decay, mask)`` → RMS scale (with ``rms_scaling``) →
  ``optax.scale_by_learning_rate(learning_rate)``. With ``k = accumulation_steps`` micro-steps
  per update, the momentum takes every micro-batch's gradient,

  .. math::
    m \leftarrow b_j\, m + \frac{1 - \beta}{k}\, g, \qquad
    b_j = \begin{cases} \beta & j = 0 \text{ (a cycle's first micro-step)} \\ 1 &
    \text{otherwise} \end{cases},

  and only at the last micro-step of a cycle do the parameters move (the step chain runs and
  its state advances),

  .. math::
    \theta \leftarrow \theta - \eta_n\, s(\theta) \big(\operatorname{sign}(m) + \lambda\, \theta\big),

  ``n`` being the number of updates made before (the step chain's count), the update being
  exactly 0 at the other micro-steps. Over one cycle the momentum becomes ``β m + (1 - β) ḡ``
  with ``ḡ`` the mean of the cycle's ``k`` gradients, which is Tiger's update on ``ḡ``. So
  ``tiger(..., accumulation_steps=k)`` is ``optax.MultiSteps(tiger(...), k)`` (same parameters
  up to float rounding) without MultiSteps' extra parameter-sized buffer. With ``k = 1`` this is
  plain Tiger, ``m ← β m + (1 - β) g`` and a step every call: Lion with ``β1 = β2 = β`` (Lion's
  direction ``sign(β1 m + (1-β1) g)`` is then the sign of the new momentum itself). The decay is
  multiplied by the learning rate, as in the reference (``u = η (sign(m) + λθ)``). A schedule
  ``η_n`` is evaluated at the update count ``n`` (as under ``optax.MultiSteps``; the reference
  evaluates its schedule at the micro-step).

  The state keeps the cycle position, the current cycle's length and (in the step chain) the
  update count, so a change of ``accumulation_steps`` -- injected with
  ``optax.inject_hyperparams``, or when a saved state is resumed with another value -- takes
  effect at the next cycle: the current cycle ends after the micro-steps it started with, with
  its single ``β`` decay, and a schedule goes on from the update count reached.

  ``s(θ) = 1``, or with ``rms_scaling=True`` the reference's LAMB-like relative step
  ``s(θ) = max(RMS(θ), min_rms)`` of each parameter tensor (``rms_per_row=True``: of each row,
  i.e. over the last axis, as the reference does for embedding tables), so ``η`` becomes a
  relative change per step (the reference's default ``η = 1e-3`` assumes this). The RMS is
  accumulated in float32 whatever the parameters' dtype.

  Differences from the reference implementation (bojone/tiger), left out on purpose:

  * the RMS is floored at ``min_rms`` (the reference has no floor, so a zero tensor would never
    move);
  * biases and normalisation parameters get ``0.5 η`` without decay (and without the RMS scale)
    in the reference, embeddings the per-row RMS: :func:`grouped_tiger` does that with
    ``optax.multi_transform`` over :func:`tiger_parameter_labels`; here ``mask`` exempts leaves
    from decay only;
  * the reference's NaN rule is off by default: ``shrink_ratio=s`` turns it on (the reference's
    ``s = 0.99``): a tensor whose gradient has a non-finite entry keeps its momentum (``b = 1``,
    ``g = 0``) and moves to ``c + s (θ - c)`` (``c = shrink_center``, 1 for norm scales in the
    reference, else 0) at that micro-step, an accumulation step or not, instead of stepping;
    other tensors step as usual. The reference tests NaN only; here ±inf counts too.
    (``optax.apply_if_finite`` is the other option: it skips the whole step.)
  * its piecewise-linear schedule: use an Optax schedule.

  Every numeric argument can be injected with ``optax.inject_hyperparams`` (``learning_rate``,
  ``beta``, ``weight_decay``, ``min_rms``, ``shrink_ratio`` when not ``None``, ``shrink_center``,
  ``accumulation_steps``); a schedule given to ``inject_hyperparams`` for ``learning_rate`` is
  evaluated by it at its own count, the micro-step. A ``mask`` function is not a schedule: with
  ``inject_hyperparams`` pass it in ``static_args=("mask",)`` (or pass a pytree of booleans).

  Args:
    learning_rate: ``η``, a float or an Optax schedule (of the update count ``n``).
    beta: momentum decay ``β`` in ``[0, 1)``.
    weight_decay: decoupled weight decay ``λ >= 0``.
    mask: optional pytree of booleans (or a function of the params returning one) selecting the
      leaves that are decayed, as in ``optax.add_decayed_weights``.
    rms_scaling: scale each tensor's step by its RMS (relative learning rate).
    rms_per_row: with ``rms_scaling``, one RMS per row (over the last axis) instead of one per
      tensor.
    min_rms: floor of the RMS scale when ``rms_scaling``.
    mu_dtype: optional dtype of the momentum buffer (default: that of the params). With
      accumulation the momentum also sums the micro-batch gradients, so a low-precision buffer
      (bfloat16) can round small ``(1-β)/k g`` contributions away; keep it float32 there.
    shrink_ratio: optional ``s`` in ``[0, 1]``; if given, a tensor with a non-finite gradient is
      shrunk toward ``shrink_center`` by ``s`` instead of stepping, its momentum unchanged.
    shrink_center: ``c``, the value such tensors shrink toward.
    accumulation_steps: ``k >= 1``, micro-steps (gradients) per parameter update.

  Returns:
    An ``optax.GradientTransformation`` with a :class:`TigerState` (needs ``params`` in
    ``update`` when ``weight_decay`` is not the number 0, or with ``rms_scaling`` or
    ``shrink_ratio``). The updates have the gradients' dtypes.

  Examples:
    >>> import jax
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

    Two micro-batches per update: the first call accumulates into the momentum and returns a
    zero update, the second moves by the sign of the accumulated momentum.

    >>> tx = emoloss.tiger(learning_rate=0.1, weight_decay=0.0, accumulation_steps=2)
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([0.3, -0.01])}, state, params)
    >>> print(updates["w"])
    [0. 0.]
    >>> updates, state = tx.update({"w": jnp.array([-0.1, 0.02])}, state, params)
    >>> print(updates["w"])  # sign of (1 - 0.965) * (0.3 - 0.1, -0.01 + 0.02) / 2
    [-0.1 -0.1]
    >>> print(state.momentum.mu["w"])  # the momentum is the only parameter-sized buffer
    [0.0035 0.0002]

  References:
    Su Jianlin, "Tiger: 一个'抠'到极致的优化器" (Tiger: a tight-fisted optimiser),
    https://kexue.fm/archives/9512, 2023-03-07; the reference implementation
    https://github.com/bojone/tiger (``tiger.py``, ``grad_accum_steps``);
    Chen et al., "Symbolic Discovery of Optimization Algorithms" (Lion), NeurIPS 2023.
  """
  _validation.check_scalar_range(weight_decay, "weight_decay", low=0.0)
  _validation.check_scalar_range(min_rms, "min_rms", low=0.0)
  if shrink_ratio is not None:
    _validation.check_scalar_range(shrink_ratio, "shrink_ratio", low=0.0, high=1.0)
  momentum = scale_by_tiger(beta, accumulation_steps=accumulation_steps, mu_dtype=mu_dtype,
                            skip_nonfinite=shrink_ratio is not None)
  decays = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)
  parts = [optax.add_decayed_weights(weight_decay, mask)] if decays else []
  if rms_scaling:
    parts.append(_scale_by_param_rms(min_rms, rms_per_row))
  step = optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
  needs_params = decays or rms_scaling or shrink_ratio is not None

  def init_fn(params):
    return TigerState(momentum=momentum.init(params), step=step.init(params))

  def update_fn(updates, state, params=None):
    if needs_params and params is None:
      raise ValueError(
          "tiger needs `params` in `update` (for weight_decay, rms_scaling or shrink_ratio).")
    direction, momentum_state = momentum.update(updates, state.momentum, params)
    moves = momentum_state.cycle_position == 0  # this micro-step ended a cycle
    stepped, step_state = step.update(direction, state.step, params)
    step_state = jax.tree.map(lambda new, old: jnp.where(moves, new, old), step_state, state.step)
    new_updates = jax.tree.map(
        lambda u, g: jnp.where(moves, u.astype(g.dtype), jnp.zeros_like(g)), stepped, updates)
    if shrink_ratio is not None:
      new_updates = jax.tree.map(_shrink_nonfinite(shrink_ratio, shrink_center), new_updates,
                                 _finite_leaves(updates), params)
    return new_updates, TigerState(momentum=momentum_state, step=step_state)

  return optax.GradientTransformation(init_fn, update_fn)


def _shrink_nonfinite(ratio: Any, center: Any):
  """The reference's NaN rule for one leaf: ``θ → c + s (θ - c)`` (as an update) when its
  gradient was not finite (``ok`` False), else the update ``u`` itself."""

  def pick(u, ok, p):
    shrink = (ratio - 1.0) * (p.astype(jnp.float32) - center)
    return jnp.where(ok, u, shrink.astype(u.dtype))

  return pick


def _check_accumulation_steps(k: Any) -> None:
  """``k`` must be an integer >= 1 (checked when concrete; an injected ``k`` is traced)."""
  if isinstance(k, jax.core.Tracer):
    return
  value = np.asarray(k)
  if value.shape or not (np.issubdtype(value.dtype, np.integer) and value >= 1):
    raise ValueError(f"`accumulation_steps` must be an integer >= 1 (got {k!r}).")


def _at_least_f32(dtype: Any) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


def _rms(p: jax.Array, min_rms: Any, per_row: bool) -> jax.Array:
  """``max(RMS(p), min_rms)`` in float32: of the whole tensor, or of each row (last axis, kept
  for broadcasting) when ``per_row`` and ``p`` has one."""
  squares = jnp.square(p.astype(jnp.float32))
  if per_row and p.ndim >= 1:
    mean = jnp.mean(squares, axis=-1, keepdims=True)
  else:
    mean = jnp.mean(squares)
  return jnp.maximum(jnp.sqrt(mean), min_rms)


# ----------------------------------------------------------------------------------------------
# The reference's extras: the non-finite-gradient shrink and the parameter groups.


def _finite_leaves(tree: Any) -> Any:
  """One boolean per leaf: every entry of the leaf is finite."""
  return jax.tree.map(lambda g: jnp.all(jnp.isfinite(g)), tree)


_BIAS_NAMES = ("bias", "beta")
_NORM_SCALE_NAMES = ("scale", "gamma")
_EMBEDDING_NAMES = ("embedding", "embeddings")


def _leaf_name(path) -> str:
  """The last named key of a pytree path (``"kernel"``, ``"bias"``, ...), skipping Flax's
  ``.value`` attribute and list indices."""
  for entry in reversed(path):
    name = getattr(entry, "key", getattr(entry, "name", None))
    if isinstance(name, str) and name != "value":
      return name
  return ""


def tiger_parameter_labels(params: Any) -> Any:
  """Labels every leaf of ``params`` ``"default"``, ``"bias"``, ``"norm_scale"`` or
  ``"embedding"`` by its name.

  A leaf whose last key is ``bias`` or ``beta`` is a bias (of a layer or a norm), ``scale`` or
  ``gamma`` a normalisation scale (Flax's ``LayerNorm``/``BatchNorm``/``RMSNorm`` name theirs
  ``scale`` and ``bias``), ``embedding`` or ``embeddings`` an embedding table (Flax's
  ``nnx.Embed``/``linen.Embed`` name theirs ``embedding``, Keras ``embeddings``), anything else
  ``"default"``: the reference's name rule (regex ``bias|beta|gamma`` on the variable name
  first, then ``'embeddings' in name``). Pass your own labels to :func:`grouped_tiger` when names
  differ (e.g. for a learned positional table, which the reference, naming it ``embeddings``,
  scales per row too).

  Args:
    params: a parameter pytree (dicts, Flax NNX ``State`` and ``nnx.Param`` leaves included).

  Returns:
    A pytree of strings with the structure of ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
    ...           "norm": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
    ...           "embed": {"embedding": jnp.ones((5, 2))}}
    >>> labels = emoloss.tiger_parameter_labels(params)
    >>> print(labels["dense"], labels["norm"], labels["embed"])
    {'bias': 'bias', 'kernel': 'default'} {'bias': 'bias', 'scale': 'norm_scale'} {'embedding': 'embedding'}
  """

  def label(path, leaf):
    del leaf
    name = _leaf_name(path)
    if name in _BIAS_NAMES:
      return "bias"
    if name in _NORM_SCALE_NAMES:
      return "norm_scale"
    if name in _EMBEDDING_NAMES:
      return "embedding"
    return "default"

  return jax.tree_util.tree_map_with_path(label, params)


def grouped_tiger(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.965,
    weight_decay: float = 0.01,
    *,
    labels: Any = None,
    rms_scaling: bool = True,
    min_rms: float = 1e-3,
    shrink_ratio: float | None = 0.99,
    mu_dtype: jax.typing.DTypeLike | None = None,
    accumulation_steps: int = 1,
) -> optax.GradientTransformation:
  r"""Tiger with the reference's parameter groups, per-row embedding scale and non-finite-gradient
  shrink.

  ``optax.multi_transform`` over four groups (``labels``, by default
  :func:`tiger_parameter_labels`):

  * ``"default"``: :func:`tiger` with ``η``, decay ``λ`` and the RMS-scaled step
    ``η · max(RMS(θ), min_rms)``, one RMS per tensor;
  * ``"embedding"``: the same with one RMS per row (over the last axis: each token's vector of
    a ``[vocab, features]`` table), ``η · max(RMS(θ_i), min_rms)`` for row ``i``;
  * ``"bias"``: ``0.5 η``, no decay, no RMS scale, shrink toward 0;
  * ``"norm_scale"``: ``0.5 η``, no decay, no RMS scale, shrink toward 1

  (the reference: ``lr * 0.5, d = 0`` for ``bias|beta|gamma`` and ``c = 1`` for ``gamma``,
  ``lr * RMS(var, axis=-1)`` for ``embeddings``, ``lr * RMS(var)`` otherwise), each with the
  shrink ``θ ← c + s (θ - c)`` of a tensor whose gradient is not finite, and all with the
  accumulation of :func:`tiger` (``accumulation_steps = k``: ``m ← b_t m + (1-β)/k g``, the
  parameters move every ``k``-th call; no extra buffer). Differences left: the RMS is floored at
  ``min_rms``, and the schedule is an Optax schedule of the update count.

  Every numeric argument can be injected with ``optax.inject_hyperparams``, e.g.
  ``optax.inject_hyperparams(grouped_tiger)(learning_rate=0.1)``; a ``labels`` function is not a
  schedule: give it as ``static_args=("labels",)`` there (or pass a labels pytree).

  Args:
    learning_rate: ``η``, a float or an Optax schedule (halved for biases and norm scales).
    beta: momentum decay ``β`` in ``[0, 1)``.
    weight_decay: decoupled weight decay ``λ >= 0`` of the ``"default"`` and ``"embedding"``
      groups.
    labels: a pytree of group names matching the params, or a function of the params returning
      one (names among ``"default"``, ``"embedding"``, ``"bias"``, ``"norm_scale"``); ``None``:
      :func:`tiger_parameter_labels`.
    rms_scaling: scale the ``"default"`` and ``"embedding"`` groups' steps by the RMS (the
      reference does).
    min_rms: floor of that RMS.
    shrink_ratio: ``s`` of the non-finite-gradient shrink (the reference's 0.99), or ``None``
      for none.
    mu_dtype: optional dtype of the momentum buffers.
    accumulation_steps: ``k >= 1``, micro-steps (gradients) per parameter update.

  Returns:
    An ``optax.GradientTransformation`` (needs ``params`` in ``update``).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> params = {"dense": {"kernel": jnp.full((2, 2), 0.5), "bias": jnp.zeros(2)},
    ...           "embed": {"embedding": jnp.array([[0.1, 0.1], [2.0, 2.0]])}}
    >>> tx = emoloss.grouped_tiger(learning_rate=0.1, weight_decay=0.0)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> print(updates["dense"]["bias"])    # biases: 0.5 * lr, no RMS scaling
    [-0.05 -0.05]
    >>> print(updates["dense"]["kernel"])  # the rest: lr times the parameters' RMS (0.5)
    [[-0.05 -0.05]
     [-0.05 -0.05]]
    >>> print(updates["embed"]["embedding"])  # embeddings: lr times each row's RMS
    [[-0.01 -0.01]
     [-0.2  -0.2 ]]

  References:
    Su Jianlin, "Tiger: 一个'抠'到极致的优化器" (Tiger: a tight-fisted optimiser),
    https://kexue.fm/archives/9512, 2023-03-07; the reference implementation
    https://github.com/bojone/tiger (``tiger.py``).
  """
  if labels is None:
    labels = tiger_parameter_labels
  if callable(learning_rate):
    half_rate = lambda count: 0.5 * learning_rate(count)
  else:
    half_rate = 0.5 * learning_rate
  common: dict[str, Any] = {"beta": beta, "mu_dtype": mu_dtype, "shrink_ratio": shrink_ratio,
                            "accumulation_steps": accumulation_steps}
  scaled: dict[str, Any] = {"weight_decay": weight_decay, "rms_scaling": rms_scaling,
                            "min_rms": min_rms}
  groups = {
      "default": tiger(learning_rate, **scaled, **common),
      "embedding": tiger(learning_rate, rms_per_row=True, **scaled, **common),
      "bias": tiger(half_rate, weight_decay=0.0, **common),
      "norm_scale": tiger(half_rate, weight_decay=0.0, shrink_center=1.0, **common),
  }
  return optax.multi_transform(groups, labels)
