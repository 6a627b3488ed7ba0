"""Flooding: gradient descent above a flood level ``b``, gradient ascent below it.

Two equivalent ways to use it:

* on the loss: :func:`flooded` turns a batch loss ``L`` into ``|L - b| + b`` (and :func:`iflooded`
  / :func:`iflood_loss` give the per-example variant, iFlood);
* on the gradient: :func:`flood` is an Optax transformation that receives the batch loss as
  ``value`` (as :func:`optax.contrib.reduce_on_plateau` does) and negates the raw gradient when
  ``value < b``. Put it **first** in the chain, before any stateful optimiser: only there is its
  output the gradient of ``|L - b| + b``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emoloss import _validation

ArrayLike = jax.typing.ArrayLike


class FloodState(NamedTuple):
  """State of the sign flip inside :func:`flood`.

  Attributes:
    ascent_steps: int32 ``[]``, number of updates so far whose gradient was negated
      (``value < flood_level``). Read it from a whole optimiser state with
      ``optax.tree_utils.tree_get(opt_state, "ascent_steps")``.
  """

  ascent_steps: jax.Array


def _check_flood_level(flood_level) -> None:
  _validation.check_scalar_range(flood_level, "flood_level", low=0.0)
  if np.ndim(flood_level) != 0:
    raise ValueError(f"`flood_level` must be a scalar (got shape {np.shape(flood_level)}).")


def _at_least_float32(x) -> jax.Array:
  """``x`` as float32, or float64 if it already is (computing in float32 never loses precision)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_loss_value(value: ArrayLike | None, transform: str) -> jax.Array:
  """Checks the ``value`` extra argument of a loss-aware transformation; returns it as float32.

  Raises:
    ValueError: if ``value`` is missing or not a scalar.
    TypeError: if ``value`` is not a floating number.
  """
  if value is None:
    raise ValueError(
        f"`{transform}` needs the batch loss: call `update(grads, opt_state, params, value=loss)` "
        "(with Flax NNX: `optimizer.update(model, grads, value=loss)`), where `loss` is the "
        "scalar mini-batch mean loss that produced `grads`. Without it the transformation "
        "cannot tell whether the loss is below the flood level."
    )
  if np.ndim(value) != 0:
    raise ValueError(
        f"`value` passed to `{transform}` must be the scalar batch-mean loss (got shape "
        f"{np.shape(value)}); reduce per-example losses first."
    )
  dtype = _validation.dtype_of(value)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"`value` passed to `{transform}` must be a float loss (got dtype {dtype}).")
  return jnp.asarray(value, jnp.float32)


def _negate_and_count() -> optax.GradientTransformation:
  """``u -> -u``, counting its calls in :class:`FloodState` (the branch taken below the flood)."""

  def init_fn(params):
    del params
    return FloodState(ascent_steps=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    return optax.tree.scale(-1.0, updates), FloodState(optax.safe_increment(state.ascent_steps))

  return optax.GradientTransformation(init_fn, update_fn)


def flood(flood_level: float) -> optax.GradientTransformationExtraArgs:
  r"""Flooding as an Optax transformation: negates the raw gradient when the loss is below ``b``.

  .. math::
    u = \begin{cases} g & L \ge b \\ -g & L < b \end{cases}
      \;=\; \nabla_\theta \big(|L(\theta) - b| + b\big)

  where ``L`` is the mini-batch mean loss passed as ``value`` and ``g = ∇L`` the gradient passed as
  ``updates``. At ``L = b`` exactly the step is descent (JAX's ``grad |x|`` at 0 is +1).

  Place it **first** in ``optax.chain``, before any stateful optimiser (momentum, Adam, Lion,
  Tiger): then the optimiser sees exactly the gradient of ``|L - b| + b`` and its statistics are
  those of that objective. Negating Adam's *output* instead is a different algorithm (the moments
  would keep tracking ``+g``). Built on ``optax.conditionally_transform`` with a negation whose
  state counts the ascent steps.

  Usage::

    tx = optax.chain(flood(0.05), optax.adam(1e-3))
    updates, opt_state = tx.update(grads, opt_state, params, value=loss)
    # Flax NNX:  optimizer.update(model, grads, value=loss)

  ``value`` must be the same mini-batch mean that produced ``grads``, with masked examples
  excluded from the mean. A NaN ``value`` is not below the flood level: the update is the
  gradient unchanged (descent), NaN or not; to skip non-finite steps wrap the whole chain in
  ``optax.apply_if_finite``. Calling ``update`` without ``value`` raises ``ValueError``; a
  transformation between the caller and ``flood`` that drops extra arguments is caught the same
  way. Under ``optax.MultiSteps(optax.chain(flood(b), opt), k)`` only the last mini-step's call
  counts: pass the mean loss of the ``k`` accumulated mini-batches as ``value`` (the loss whose
  gradient is the accumulated mean gradient). ``flood_level`` can be injected with
  ``optax.inject_hyperparams(flood)(flood_level=b)``.

  Args:
    flood_level: the flood level ``b >= 0`` (a scalar).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its state is
    ``optax.ConditionallyTransformState(inner_state=FloodState(ascent_steps), step)``, where
    ``step`` counts all updates and ``ascent_steps`` those that were negated.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> tx = optax.chain(emoloss.flood(flood_level=0.5), optax.sgd(0.1))
    >>> params = {"w": jnp.array([1.0])}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([2.0])}
    >>> updates, state = tx.update(grads, state, params, value=jnp.array(1.0))  # above b: descent
    >>> print(updates["w"])
    [-0.2]
    >>> updates, state = tx.update(grads, state, params, value=jnp.array(0.2))  # below b: ascent
    >>> print(updates["w"])
    [0.2]

  Choosing ``b``: the paper searches ``b`` in ``{0, 0.01, ..., 0.50}`` on validation data; a
  rule of thumb quoted in wmathor's post on flooding (from a reader's comment under a Zhihu
  article) is a level below half of the training loss at which the validation error starts to
  rise (train once without flooding, note that loss, take ``b`` under half of it). Below ``b`` the updates
  alternate descent and ascent, which is descent on the gradient norm (the docs' "Derivations"
  page; :func:`alternation_equivalent_loss`).

  References:
    Ishida et al., "Do We Need Zero Training Loss After Achieving Zero Training Error?",
    ICML 2020 (arXiv 2002.08709); ``b`` searched in {0, 0.01, ..., 0.50}. Su Jianlin,
    "我们真的需要把训练集的损失降低到零吗?" (Do we really need to reduce the training loss to
    zero?), kexue.fm/archives/7643, 2020 (the alternation below ``b`` as a gradient-norm
    penalty). wmathor, "loss损失讨论", wmathor.com/index.php/archives/1551 (the flood-level
    rule of thumb).
  """
  _check_flood_level(flood_level)

  def below_flood_level(step, value=None, **extra_args):
    del step, extra_args
    return check_loss_value(value, "flood") < flood_level

  return optax.conditionally_transform(
      _negate_and_count(), below_flood_level, forward_extra_args=True
  )


def flooded(
    loss_fn: Callable[..., Any], flood_level: float, *, has_aux: bool = False
) -> Callable[..., Any]:
  r"""Wraps a batch loss ``L`` into the flooded loss ``|L - b| + b``.

  .. math::
    \tilde L(\theta) = |L(\theta) - b| + b, \qquad
    \nabla \tilde L = \operatorname{sign}(L - b)\, \nabla L \quad (\text{+1 at } L = b)

  Same value as ``L`` above the flood level, mirrored below it. ``jax.grad`` of the result equals
  what :func:`flood` does to ``jax.grad(loss_fn)``; use one or the other, not both.

  Args:
    loss_fn: a function returning the scalar mini-batch mean loss ``L`` (or ``(L, aux)`` when
      ``has_aux``). Masked examples must already be excluded from the mean.
    flood_level: the flood level ``b >= 0`` (a scalar).
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` is passed through unchanged.

  Returns:
    A function with the signature of ``loss_fn`` returning the flooded loss ``[]``, float32
    (float64 if the loss is float64), and ``aux``.

  Raises:
    ValueError: (when called) if ``loss_fn`` does not return a scalar.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> loss_fn = lambda w: jnp.sum(w**2)
    >>> flooded_fn = emoloss.flooded(loss_fn, flood_level=1.0)
    >>> w = jnp.array([0.5])
    >>> print(flooded_fn(w), jax.grad(flooded_fn)(w))
    1.75 [-1.]

  References:
    Ishida et al., "Do We Need Zero Training Loss After Achieving Zero Training Error?",
    ICML 2020 (arXiv 2002.08709).
  """
  _check_flood_level(flood_level)

  def flooded_loss_fn(*args, **kwargs):
    out = loss_fn(*args, **kwargs)
    loss, aux = out if has_aux else (out, None)
    if np.ndim(loss) != 0:
      raise ValueError(
          f"`flooded` needs a loss function returning a scalar batch loss (got shape "
          f"{np.shape(loss)}); for per-example losses use `iflooded`."
      )
    loss = _at_least_float32(loss)
    result = jnp.abs(loss - flood_level) + flood_level
    return (result, aux) if has_aux else result

  return flooded_loss_fn


def iflood_loss(
    losses: ArrayLike, flood_level: float, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Individual flooding (iFlood): the mean of per-example flooded losses.

  .. math::
    \tilde L = \frac{1}{|\{i : w_i\}|} \sum_{i : w_i} \big(|\ell_i - b| + b\big)

  Each example descends while its own loss is above ``b`` and ascends below it, instead of the
  whole batch switching together as in :func:`flooded`.

  Args:
    losses: ``[...]`` per-example losses (any float dtype; computed in float32).
    flood_level: the flood level ``b >= 0`` (a scalar).
    where: optional boolean mask of the shape of ``losses``; masked examples are excluded from the
      mean (a fully masked batch gives 0, as does an empty one).

  Returns:
    The float32 scalar iFlood loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> losses = jnp.array([0.1, 0.5, 2.0])
    >>> print(emoloss.iflood_loss(losses, flood_level=0.3))
    1.0

  References:
    Xie et al., "iFlood: A Stable and Effective Regularizer", ICLR 2022.
  """
  _check_flood_level(flood_level)
  losses = _validation.check_logits(losses, name="losses", min_rank=0)
  where = _validation.check_where(where, losses.shape)
  per_example = jnp.abs(losses - flood_level) + flood_level
  if per_example.size == 0:  # an empty batch, like a fully masked one, gives 0
    return jnp.zeros([], jnp.float32)
  if where is None:
    return jnp.mean(per_example)
  per_example = jnp.where(where, per_example, 0.0)
  count = jnp.sum(where)
  return jnp.sum(per_example) / jnp.maximum(count, 1).astype(jnp.float32)


def iflooded(per_example_loss_fn: Callable[..., ArrayLike], flood_level: float) -> Callable:
  r"""Wraps a per-example loss function into its iFlood batch loss (see :func:`iflood_loss`).

  .. math::
    \tilde L = \operatorname{mean}_{i : w_i} \big(|\ell_i - b| + b\big)

  Args:
    per_example_loss_fn: a function returning per-example losses ``[...]``. If the wrapped
      function is called with a ``where=`` keyword (a boolean mask of the losses' shape), it is
      forwarded to ``per_example_loss_fn`` and masked examples are excluded from the mean.
    flood_level: the flood level ``b >= 0`` (a scalar).

  Returns:
    A function with the signature of ``per_example_loss_fn`` returning the float32 scalar loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> per_example = lambda w, x: (x * w) ** 2
    >>> loss_fn = emoloss.iflooded(per_example, flood_level=0.3)
    >>> print(loss_fn(1.0, jnp.array([0.1, 1.0])))
    0.795

  References:
    Xie et al., "iFlood: A Stable and Effective Regularizer", ICLR 2022.
  """
  _check_flood_level(flood_level)

  def iflooded_loss_fn(*args, **kwargs):
    losses = per_example_loss_fn(*args, **kwargs)
    return iflood_loss(losses, flood_level, where=kwargs.get("where"))

  return iflooded_loss_fn
