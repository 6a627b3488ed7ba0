r"""Ascent/descent alternation and its explicit form, the gradient-norm penalty.

Alternating a descent step of size ``ε1`` with an ascent step of size ``ε2 < ε1`` on the same
mini-batch,

.. math::
  \theta_1 = \theta_0 - \varepsilon_1 g(\theta_0), \qquad
  \theta_2 = \theta_1 + \varepsilon_2 g(\theta_1),

gives, since ``g(θ1) = g0 - ε1 H g0 + O(ε²)`` and ``∇‖g‖² = 2 H g``,

.. math::
  \theta_2 = \theta_0 - (\varepsilon_1 - \varepsilon_2)\, \nabla\Big(L +
  \frac{\varepsilon_1 \varepsilon_2}{2(\varepsilon_1 - \varepsilon_2)} \|\nabla L\|^2\Big)(\theta_0)
  + O(\varepsilon^3),

one gradient step with learning rate ``ε1 - ε2`` on a loss with a gradient-norm penalty, which
pushes towards flat regions. The ascent-first order gives the same second-order result.
:func:`gradient_norm_penalty` computes that loss explicitly (double backprop) and
:func:`alternation_penalty` the matching ``(learning_rate, coeff)``. With equal step sizes
``ε1 = ε2 = ε`` (flooding's regime below the flood level) the pair is
``θ2 = θ0 - (ε²/2) ∇‖∇L‖²(θ0) + O(ε³)``: descent on the gradient norm alone, which
:func:`alternation_equivalent_loss` expresses for any ``0 <= ε2 <= ε1``. The derivation is on the
docs' "Derivations" page; it follows Su Jianlin's discussion of flooding
(kexue.fm/archives/7643, 2020), which derives the equal-step case and its ``ε2 < ε1``
generalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emoloss import _validation
from emoloss.transforms.flooding import _at_least_float32, _check_flood_level, check_loss_value


class AscentDescentState(NamedTuple):
  """State of :func:`scale_by_ascent_descent`.

  Attributes:
    step: int32 ``[]``, number of updates taken in the alternating regime (all updates when there
      is no flood level; only those with ``value < flood_level`` otherwise). Its parity gives the
      phase of the next alternating update.
    ascent_steps: int32 ``[]``, number of ascent updates so far (for logging; read it with
      ``optax.tree_utils.tree_get(opt_state, "ascent_steps")``).
  """

  step: jax.Array
  ascent_steps: jax.Array


def _check_ascent_ratio(ascent_ratio) -> None:
  _validation.check_scalar_range(ascent_ratio, "ascent_ratio", low=0.0, high=1.0, low_inclusive=False)
  if np.ndim(ascent_ratio) != 0:
    raise ValueError(f"`ascent_ratio` must be a scalar (got shape {np.shape(ascent_ratio)}).")


def scale_by_ascent_descent(
    ascent_ratio: float,
    *,
    ascent_first: bool = False,
    flood_level: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Two-phase scale: passes a descent update through, then scales the next one by ``-r``.

  .. math::
    u_t = \begin{cases} u & \text{descent phase} \\ -r\,u & \text{ascent phase} \end{cases},
    \qquad r = \varepsilon_2 / \varepsilon_1 \in (0, 1]

  Phases alternate descent, ascent, descent, ... (ascent first with ``ascent_first=True``). With
  ``optax.sgd(ε1)`` and two calls on the same mini-batch this is exactly the alternation of the
  module docstring with ``ε2 = r ε1``. The training loop decides which batches the two steps of a
  pair see: the equivalence with the gradient-norm penalty holds for the same mini-batch; with
  consecutive mini-batches the penalty is on the full-data gradient without its variance part.

  Where it sits in the chain is where the sign flip happens; :func:`alternate_ascent_descent`
  places it for you (read there why the two placements differ for stateful optimisers).

  ``flood_level``: alternate only while the loss is below it (flooding's own regime). Each update
  then needs ``value=loss``; updates with ``value >= flood_level`` are plain descent and do not
  advance the phase, updates below it alternate. ``r = 1`` is flooding's equal-step regime (the
  pair is then descent on ``(ε²/2) ‖∇L‖²`` only).

  Args:
    ascent_ratio: ``r = ε2/ε1`` in ``(0, 1]``, the size of an ascent step relative to a descent
      step (can be injected with ``optax.inject_hyperparams``).
    ascent_first: start with the ascent phase (as backstitch does).
    flood_level: optional flood level ``b >= 0``; ``None`` alternates on every update.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`AscentDescentState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> tx = optax.chain(optax.sgd(0.1), emoloss.scale_by_ascent_descent(0.5))
    >>> params = {"w": jnp.array([1.0])}
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    ...   print(updates["w"])
    ...
    [-0.1]
    [0.05]
    [-0.1]

  References:
    Ishida et al., "Do We Need Zero Training Loss After Achieving Zero Training Error?",
    ICML 2020; Wang et al., "Backstitch: Counteracting Finite-sample Bias via Negative Steps",
    Interspeech 2017; Su Jianlin, kexue.fm/archives/7643, 2020 (the alternation with
    ``ε2 <= ε1`` and its gradient-norm-penalty equivalent).
  """
  _check_ascent_ratio(ascent_ratio)
  if flood_level is not None:
    _check_flood_level(flood_level)

  def init_fn(params):
    del params
    # Two distinct buffers: one buffer twice in a state cannot be donated (`donate_argnums`).
    return AscentDescentState(step=jnp.zeros([], jnp.int32), ascent_steps=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del params
    if flood_level is None:
      alternating = jnp.asarray(True)
    else:
      value = check_loss_value(extra_args.get("value"), "scale_by_ascent_descent")
      alternating = value < flood_level
    ascent_phase = (state.step % 2 == 0) if ascent_first else (state.step % 2 == 1)
    ascent = jnp.logical_and(alternating, ascent_phase)
    factor = jnp.where(ascent, -jnp.asarray(ascent_ratio, jnp.float32), 1.0)
    updates = jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)
    new_state = AscentDescentState(
        step=jnp.where(alternating, optax.safe_increment(state.step), state.step),
        ascent_steps=state.ascent_steps + ascent.astype(jnp.int32),
    )
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def alternate_ascent_descent(
    optimizer: optax.GradientTransformation,
    ascent_ratio: float,
    *,
    flip: Literal["update", "gradient"] = "update",
    ascent_first: bool = False,
    flood_level: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Alternates descent steps of ``optimizer`` with ascent steps ``ascent_ratio`` times as large.

  .. math::
    \theta_{n} = \theta_{n-1} - \varepsilon_1 g(\theta_{n-1}), \qquad
    \theta_{n+1} = \theta_n + \varepsilon_2 g(\theta_n), \qquad \varepsilon_2 = r\,\varepsilon_1

  With ``optax.sgd(ε1)`` two steps on the same mini-batch equal, up to ``O(ε³)``, one SGD step
  with learning rate ``ε1 - ε2`` on ``L + ε1 ε2 / (2(ε1 - ε2)) ‖∇L‖²`` (see
  :func:`alternation_penalty`, :func:`gradient_norm_penalty`).

  Where the sign flip happens (``flip``):

  * ``"update"`` (default): ``optax.chain(optimizer, scale_by_ascent_descent(...))``. The
    optimiser runs on the raw gradient at every step, so its statistics (momentum, Adam moments)
    remain estimates of the loss gradient; its *output* is reversed and scaled by ``r`` on ascent
    steps. The ascent step is "the optimiser's own step, backwards, ``r`` times as long", which is
    what the alternation means as a movement in parameter space.
  * ``"gradient"``: ``optax.chain(scale_by_ascent_descent(...), optimizer)``. The gradient fed to
    the optimiser is ``-r g`` on ascent steps, i.e. the optimiser descends the alternating
    objectives ``L, -rL, L, ...``; its state absorbs the flipped gradients, so with momentum
    ``β`` the ascent and descent gradients partly cancel inside the momentum, and Adam's second
    moment sees ``r² g²`` on ascent steps. This is how flooding (:func:`flood`) must be applied,
    because there the flipped gradient *is* the gradient of the objective ``|L - b| + b``.

  For SGD without momentum both are identical (a stateless linear map commutes with the scale)
  and the equivalence above is exact to second order. With momentum or Adam it holds in neither
  placement: the curvature term ``ε1 ε2 H g`` is replaced by the change of the optimiser's
  direction between the two steps, which momentum damps.

  Args:
    optimizer: any Optax optimiser; its learning rate is the descent step size ``ε1``.
    ascent_ratio: ``r = ε2 / ε1`` in ``(0, 1]``.
    flip: ``"update"`` or ``"gradient"``, see above.
    ascent_first: start with the ascent step.
    flood_level: alternate only while ``value < flood_level`` (then pass ``value=loss``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (a chain; state is a tuple holding
    :class:`AscentDescentState` and the optimiser's state).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> tx = emoloss.alternate_ascent_descent(optax.sgd(0.1), ascent_ratio=0.5)
    >>> params = {"w": jnp.array([1.0])}
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    ...   print(updates["w"])
    ...
    [-0.1]
    [0.05]
    [-0.1]

  References:
    Wang et al., "Backstitch: Counteracting Finite-sample Bias via Negative Steps",
    Interspeech 2017; Ishida et al., ICML 2020 (flooding); Su Jianlin, "我们真的需要把训练集的损失降低
    到零吗?" (Do we really need to reduce the training loss to zero?), kexue.fm/archives/7643,
    2020 (the alternation and its gradient-norm-penalty equivalent).
  """
  phases = scale_by_ascent_descent(
      ascent_ratio, ascent_first=ascent_first, flood_level=flood_level
  )
  if flip == "update":
    return optax.chain(optimizer, phases)
  if flip == "gradient":
    return optax.chain(phases, optimizer)
  raise ValueError(f'`flip` must be "update" or "gradient" (got {flip!r}).')


def backstitch(learning_rate: optax.ScalarOrSchedule, alpha: float = 0.3) -> optax.GradientTransformation:
  r"""Backstitch SGD: an ascent step ``α ν`` then a descent step ``(1 + α) ν`` on the same batch.

  .. math::
    \theta_1 = \theta_0 + \alpha \nu\, g(\theta_0), \qquad
    \theta_2 = \theta_1 - (1 + \alpha) \nu\, g(\theta_1)

  which is, to second order, SGD with learning rate ``ν`` on ``L + α(1+α)ν/2 ‖∇L‖²``. It is
  :func:`alternate_ascent_descent` with ``ε1 = (1+α)ν``, ``r = α/(1+α)`` and ``ascent_first``.
  Call ``update`` **twice per mini-batch**: once with the gradient at ``θ0``, once with the
  gradient of the same batch at ``θ1``. A schedule ``learning_rate`` is evaluated at the call
  count (two calls per batch). Kaldi uses ``α = 0.3`` on every batch (or ``α = 1`` on every 4th
  batch, with plain SGD steps in between, which the training loop arranges).
  ``optax.contrib.sam`` cannot express this (its outer step restarts from ``θ0``).

  Args:
    learning_rate: ``ν``, a float or an Optax schedule.
    alpha: backstitch scale ``α > 0``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> tx = emoloss.backstitch(learning_rate=0.1, alpha=0.3)
    >>> params = {"w": jnp.array([1.0])}
    >>> state = tx.init(params)
    >>> for _ in range(2):  # the ascent step, then the descent step on the same batch
    ...   updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    ...   print(updates["w"])
    ...
    [0.03]
    [-0.13]

  References:
    Wang et al., "Backstitch: Counteracting Finite-sample Bias via Negative Steps",
    Interspeech 2017.
  """
  _validation.check_scalar_range(alpha, "alpha", low=0.0, low_inclusive=False)
  if callable(learning_rate):
    schedule = learning_rate
    descent_lr = lambda count: (1.0 + alpha) * schedule(count)
  else:
    descent_lr = (1.0 + alpha) * learning_rate
  return alternate_ascent_descent(
      optax.sgd(descent_lr), alpha / (1.0 + alpha), ascent_first=True
  )


def alternation_penalty(descent_lr: float, ascent_lr: float) -> tuple[float, float]:
  r"""The single step equivalent to a descent/ascent pair: ``(ε1 - ε2, ε1 ε2 / (2(ε1 - ε2)))``.

  .. math::
    \text{two SGD steps } (-\varepsilon_1, +\varepsilon_2) \approx
    \text{SGD}\Big(\varepsilon_1 - \varepsilon_2\Big) \text{ on }
    L + \frac{\varepsilon_1 \varepsilon_2}{2(\varepsilon_1 - \varepsilon_2)} \|\nabla L\|^2

  Args:
    descent_lr: ``ε1 > 0``.
    ascent_lr: ``ε2`` with ``0 <= ε2 < ε1``.

  Returns:
    ``(learning_rate, coeff)`` for :func:`gradient_norm_penalty`. Equal step sizes
    (``ε2 = ε1``, a zero learning rate with an infinite coefficient) are expressed by
    :func:`alternation_equivalent_loss` instead.

  Examples:
    >>> import emoloss
    >>> lr, coeff = emoloss.alternation_penalty(descent_lr=0.1, ascent_lr=0.05)
    >>> print(round(lr, 4), round(coeff, 4))
    0.05 0.05

  References:
    Wang et al., Interspeech 2017 (backstitch); Su Jianlin, "我们真的需要把训练集的损失降低到零吗?",
    kexue.fm/archives/7643, 2020 (the alternation's gradient-norm form, ``ε1 != ε2``).
  """
  _validation.check_scalar_range(descent_lr, "descent_lr", low=0.0, low_inclusive=False)
  _validation.check_scalar_range(ascent_lr, "ascent_lr", low=0.0, high=descent_lr, high_inclusive=False)
  learning_rate = descent_lr - ascent_lr
  return learning_rate, descent_lr * ascent_lr / (2.0 * learning_rate)


def gradient_norm_penalty(
    loss_fn: Callable[..., Any], coeff: float, *, has_aux: bool = False
) -> Callable[..., Any]:
  r"""Wraps ``L(θ, ...)`` into ``L + coeff · ‖∇_θ L‖²`` (differentiable: double backprop).

  .. math::
    L_\text{pen}(\theta) = L(\theta) + c\,\|\nabla_\theta L(\theta)\|_2^2, \qquad
    \nabla L_\text{pen} = \nabla L + 2c\, H \nabla L

  The squared norm runs over every leaf of the first argument ``θ`` (a pytree), summed in
  float32 (float64 for float64 inputs). This is the explicit form of :func:`alternate_ascent_descent` with SGD
  (``coeff = ε1 ε2 / (2(ε1 - ε2))``, see :func:`alternation_penalty`); it costs one extra
  backward pass (Hessian-vector product) per step. For a Flax NNX model, differentiate with
  respect to the parameter state: ``loss(params) = loss_fn(nnx.merge(graphdef, params, rest))``.

  Args:
    loss_fn: ``loss_fn(params, *args, **kwargs)`` returning a scalar loss (or ``(loss, aux)``
      when ``has_aux``).
    coeff: penalty coefficient ``c >= 0``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` is passed through.

  Returns:
    A function with the signature of ``loss_fn`` returning the scalar penalised loss, float32
    (float64 if the loss is float64), and ``aux``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> loss_fn = lambda w: jnp.sum(w**2)
    >>> penalised = emoloss.gradient_norm_penalty(loss_fn, coeff=0.1)
    >>> print(penalised(jnp.array([1.0, 2.0])))  # 5 + 0.1 * |2w|^2 = 5 + 0.1 * 20
    7.0

  References:
    Wang et al., Interspeech 2017 (backstitch); Barrett & Dherin, "Implicit Gradient
    Regularization", ICLR 2021.
  """
  _validation.check_scalar_range(coeff, "coeff", low=0.0)
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def penalised_loss_fn(params, *args, **kwargs):
    out, grads = value_and_grad(params, *args, **kwargs)
    loss, aux = out if has_aux else (out, None)
    squared_norm = sum(jnp.sum(jnp.square(_at_least_float32(g))) for g in jax.tree.leaves(grads))
    result = _at_least_float32(loss) + coeff * squared_norm
    return (result, aux) if has_aux else result

  return penalised_loss_fn


def alternation_equivalent_loss(
    loss_fn: Callable[..., Any], descent_lr: float, ascent_lr: float, *, has_aux: bool = False
) -> Callable[..., Any]:
  r"""The loss whose unit gradient step equals a descent/ascent pair, ``ε2 = ε1`` included.

  .. math::
    L_\text{eq}(\theta) = (\varepsilon_1 - \varepsilon_2)\, L(\theta)
      + \frac{\varepsilon_1 \varepsilon_2}{2} \|\nabla_\theta L(\theta)\|_2^2, \qquad
    \theta_2 = \theta_0 - \nabla L_\text{eq}(\theta_0) + O(\varepsilon^3)

  for ``θ1 = θ0 - ε1 g(θ0)``, ``θ2 = θ1 + ε2 g(θ1)`` on the same mini-batch (or the ascent step
  first). For ``ε2 < ε1`` this is ``ε1 - ε2`` times the penalised loss of
  :func:`alternation_penalty`; for **equal step sizes** ``ε1 = ε2 = ε`` (flooding's regime
  below the flood level, ``scale_by_ascent_descent(1.0)``) the loss term vanishes and the pair
  is one step of size ``ε²/2`` on ``‖∇L‖²`` alone,
  ``θ_{n+1} ≈ θ_{n-1} - (ε²/2) ∇‖∇L(θ_{n-1})‖²``, which :func:`alternation_penalty` cannot
  express as a learning rate times a penalised loss (its coefficient would be infinite).
  Derivation: :doc:`/derivations`.

  Args:
    loss_fn: ``loss_fn(params, *args, **kwargs)`` returning a scalar loss (or ``(loss, aux)``
      when ``has_aux``).
    descent_lr: ``ε1 > 0``.
    ascent_lr: ``ε2`` with ``0 <= ε2 <= ε1``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``; ``aux`` is passed through.

  Returns:
    A function with the signature of ``loss_fn`` returning the scalar ``L_eq`` (float32, or
    float64 for a float64 loss), and ``aux``; take one SGD step with learning rate 1 on it.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> loss_fn = lambda w: jnp.sum(w**2)  # ∇L = 2w, ‖∇L‖² = 4‖w‖²
    >>> equivalent = emoloss.alternation_equivalent_loss(loss_fn, 0.1, 0.1)
    >>> w = jnp.array([1.0, 2.0])
    >>> print(f"{equivalent(w):.4f}")  # 0 · L + (0.01 / 2) · 20
    0.1000
    >>> print(w - jax.grad(equivalent)(w))  # w - 0.005 · 8w
    [0.96 1.92]

  References:
    Su Jianlin, "我们真的需要把训练集的损失降低到零吗?" (Do we really need to reduce the
    training loss to zero?), kexue.fm/archives/7643, 2020 (the equal-step derivation);
    Ishida et al., "Do We Need Zero Training Loss After Achieving Zero Training Error?",
    ICML 2020 (flooding).
  """
  _validation.check_scalar_range(descent_lr, "descent_lr", low=0.0, low_inclusive=False)
  _validation.check_scalar_range(ascent_lr, "ascent_lr", low=0.0, high=descent_lr)
  loss_weight = descent_lr - ascent_lr
  penalty_weight = 0.5 * descent_lr * ascent_lr
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def equivalent_loss_fn(params, *args, **kwargs):
    out, grads = value_and_grad(params, *args, **kwargs)
    loss, aux = out if has_aux else (out, None)
    squared_norm = sum(jnp.sum(jnp.square(_at_least_float32(g))) for g in jax.tree.leaves(grads))
    result = loss_weight * _at_least_float32(loss) + penalty_weight * squared_norm
    return (result, aux) if has_aux else result

  return equivalent_loss_fn
