"""EXACT: expected accuracy of a classifier whose scores carry Gaussian noise."""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

from emoloss import _masking, _numerics, _validation

ArrayLike = jax.typing.ArrayLike

# Newton steps locating the mode of the log-integrand (see `_integrand_mode_and_scale`). Newton
# converges monotonically here; 12 steps reach the mode to quadrature accuracy even at V = 1e5.
# A row stops earlier once its step is below `_NEWTON_TOLERANCE` (the error after such a step is
# of order its square: Newton converges quadratically); the loop ends when every row has.
_NEWTON_STEPS = 12
_NEWTON_TOLERANCE = 1e-4
# Below this argument the inverse Mills ratio uses its asymptotic series.
_ASYMPTOTIC_BELOW = -8.0
# φ(x)/Φ(x) = u Σ_k c_k u^(-2k) as x = -u → -∞; these are c_1 ... c_6 (c_0 = 1).
_MILLS_SERIES = (1.0, -2.0, 10.0, -74.0, 706.0, -8162.0)
_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))
# Largest |Δ| used: Φ(t + Δ) = 1 and φ(t + Δ) = 0 in any float type for Δ this large.
_DELTA_LIMIT = 1e30
# Most Gauss–Hermite nodes accepted: NumPy's hermgauss overflows (NaN weights) from about 380
# nodes, and accuracy saturates long before (16-32 nodes already reach float32 rounding here).
_MAX_NODES = 256


@functools.cache
def _gauss_hermite(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """Nodes ``s_k = √2 x_k`` and log weights ``log w_k - ½ log π`` of ``∫ φ(s) f(s) ds``."""
  x, w = np.polynomial.hermite.hermgauss(num_nodes)
  with np.errstate(divide="ignore"):  # weights underflow to 0 (log -inf) for huge node counts
    log_weights = np.log(w) - 0.5 * np.log(np.pi)
  return (np.sqrt(2.0) * x).astype(np.float32), log_weights.astype(np.float32)


def _inverse_mills(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns ``m = φ(x)/Φ(x)`` and ``x + m`` (both >= 0), stable for every finite ``x``.

  ``m' = -m (x + m)``; for ``x → -∞``, ``m ≈ -x`` and ``x + m ≈ -1/x`` would cancel, so below
  ``_ASYMPTOTIC_BELOW`` both come from the asymptotic series ``m = u(1 + a - 2a² + 10a³ - ...)``,
  ``u = -x``, ``a = 1/u²`` (float32 relative error: m < 1e-7, x + m < 2e-6 there; above, m < 7e-6).
  """
  direct_x = jnp.maximum(x, _ASYMPTOTIC_BELOW)
  direct = jnp.exp(-0.5 * direct_x**2 - _HALF_LOG_2PI - jax.scipy.special.log_ndtr(direct_x))
  u = jnp.maximum(-x, -_ASYMPTOTIC_BELOW)
  a = 1.0 / (u * u)
  series = functools.reduce(lambda acc, c: acc * a + c, reversed(_MILLS_SERIES[1:]), 0.0)
  excess = u * a * (1.0 + a * series)  # x + m = 1/u - 2/u³ + 10/u⁵ - ...
  tail = x < _ASYMPTOTIC_BELOW
  mills = jnp.where(tail, u + excess, direct)
  excess = jnp.where(tail, excess, jnp.maximum(direct_x + direct, 0.0))
  return mills, excess


def _integrand_mode_and_scale(
    deltas: jax.Array, others: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Mode ``μ`` and width ``τ = (-g''(μ))^{-1/2}`` of ``g(t) = log φ(t) + Σ_{i≠y} log Φ(t + Δ_i)``.

  ``g'(t) = -t + Σ m(t + Δ_i)`` is decreasing and convex and ``g'(0) > 0``, so Newton's method
  started at ``t = 0`` increases monotonically to the root without overshooting. ``τ`` is taken
  at the last-but-one iterate (indistinguishable after convergence; any ``μ, τ`` give a valid
  quadrature rule, only its accuracy depends on them). Each row stops once its own step is below
  the tolerance (rows are independent: bit for bit the same whatever the rest of the batch).
  """

  dtype = deltas.dtype

  def newton_step(state):
    step, t, curvature, active = state
    mills, excess = _inverse_mills(t[..., None] + deltas)
    slope = -t + jnp.sum(jnp.where(others, mills, 0.0), axis=-1)
    new_curvature = -1.0 - jnp.sum(jnp.where(others, mills * excess, 0.0), axis=-1)
    change = slope / new_curvature
    # Each row stops on its own (a converged row is frozen), so no row's result depends on how
    # many steps the others need, nor on a NaN elsewhere in the batch.
    t = jnp.where(active, t - change, t)
    curvature = jnp.where(active, new_curvature, curvature)
    active = active & ~(jnp.abs(change) <= _NEWTON_TOLERANCE * (1.0 + jnp.abs(t)))
    return step + 1, t, curvature, active

  def unconverged(state):
    step, _, _, active = state
    return (step < _NEWTON_STEPS) & jnp.any(active)

  start = jnp.zeros(deltas.shape[:-1], dtype)
  state = (jnp.int32(0), start, start - 1.0, jnp.ones(deltas.shape[:-1], bool))
  _, mode, curvature, _ = jax.lax.while_loop(unconverged, newton_step, state)
  return mode, jax.lax.rsqrt(-curvature)


def _quadrature(
    deltas: jax.Array, others: jax.Array, num_nodes: int, with_gradient: bool
) -> tuple[jax.Array, jax.Array | None]:
  """``log P(y) = log ∫ φ(t) ∏_{i≠y} Φ(t + Δ_i) dt`` for ``deltas [..., V]`` by adaptive
  Gauss–Hermite quadrature (``others [..., V]`` is False at ``i = y``), and optionally its
  gradient ``∂ log P / ∂Δ_i = Σ_k π_k m(t_k + Δ_i)`` (``π_k`` the normalised node terms, ``m`` the
  inverse Mills ratio): the ``[..., K, V]`` intermediates are reduced here, so reverse mode
  stores only ``[..., V]``."""
  nodes, log_weights = _gauss_hermite(num_nodes)
  mode, scale = _integrand_mode_and_scale(jax.lax.stop_gradient(deltas), others)
  mode, scale = mode[..., None], scale[..., None]
  t = mode + scale * nodes  # [..., K]
  # ∫ φ(t) f(t) dt = τ ∫ φ(s) [φ(μ + τ s) / φ(s)] f(μ + τ s) ds, by Gauss–Hermite in s.
  log_shifted_weights = jnp.log(scale) + log_weights + 0.5 * (nodes**2 - t**2)
  points = t[..., :, None] + deltas[..., None, :]  # [..., K, V]
  competitors = others[..., None, :]
  log_cdfs = jnp.where(competitors, jax.scipy.special.log_ndtr(points), 0.0)
  terms = log_shifted_weights + jnp.sum(log_cdfs, axis=-1)
  log_prob = jax.nn.logsumexp(terms, axis=-1)
  if not with_gradient:
    return log_prob, None
  node_probs = jax.nn.softmax(terms, axis=-1)  # not exp(terms - log_prob): log_prob may round
  mills = jnp.where(competitors, _inverse_mills(points)[0], 0.0)
  return log_prob, jnp.sum(node_probs[..., :, None] * mills, axis=-2)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _log_target_prob(deltas: jax.Array, others: jax.Array, num_nodes: int) -> jax.Array:
  return _quadrature(deltas, others, num_nodes, with_gradient=False)[0]


@_log_target_prob.defjvp
def _log_target_prob_jvp(num_nodes, primals, tangents):
  (deltas, others), (deltas_dot, _) = primals, tangents
  log_prob, gradient = _quadrature(deltas, others, num_nodes, with_gradient=True)
  return log_prob, jnp.sum(gradient * deltas_dot, axis=-1)


def _per_example(value, name: str, batch_shape: tuple[int, ...]) -> jax.Array:
  """Broadcasts a scalar or ``[...]`` parameter to ``batch_shape`` (float32)."""
  shape = tuple(np.shape(value))
  try:
    fits = np.broadcast_shapes(shape, batch_shape) == tuple(batch_shape)
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(
        f"`{name}` must be a scalar or broadcast to the batch shape logits.shape[:-1] = "
        f"{tuple(batch_shape)} (got shape {shape})."
    )
  return jnp.broadcast_to(jnp.asarray(value, jnp.float32), batch_shape)


@jax.jit
def _batch_normalize(logits: jax.Array, where: jax.Array | None) -> jax.Array:
  """``(z - mean) / std`` with the mean and the ``n - 1`` standard deviation over every finite
  entry of the unmasked rows of ``logits [..., V]``. Masked rows become 0 (whatever they held);
  infinite entries of unmasked rows (a ``-inf`` vocabulary mask) stay as they are and are left
  out of the statistic; a NaN entry makes the statistic, hence every unmasked entry, NaN.
  Invariant to the scale of the logits (no overflow of the sum or the squares)."""
  rows = jnp.ones(logits.shape[:-1], bool) if where is None else where
  rows = jnp.broadcast_to(rows[..., None], logits.shape)
  finite = ~jnp.isinf(logits)  # a NaN is kept: it makes the statistic NaN, never hidden
  kept = rows & finite
  # The result is invariant to the scale of the logits: they are first divided by the power of two
  # 2^e >= max |z| (exact, so nothing changes where nothing overflowed), so that neither the sum
  # nor the squares below overflow (the variance did from |z| ~ 1.8e19 in float32).
  down = _numerics.power_of_two_scale(jnp.max(jnp.where(kept, jnp.abs(logits), 0.0), initial=0.0))
  rescaled = logits * down[0] * down[1]
  logits = jnp.where(kept, rescaled, logits)
  count = jnp.sum(kept)
  mean = jnp.sum(jnp.where(kept, logits, 0.0)) / jnp.maximum(count, 1)
  centred = jnp.where(kept, logits - mean, 0.0)
  variance = jnp.sum(centred**2) / jnp.maximum(count - 1, 1)
  scaled = centred / jnp.sqrt(jnp.where(variance > 0, variance, 1.0))
  return jnp.where(rows & ~finite, logits, scaled)


def exact_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    sigma: ArrayLike = 1.0,
    num_nodes: int = 64,
    margin: ArrayLike | None = None,
    log_prob: bool = False,
    where: ArrayLike | None = None,
    batch_norm: bool = False,
) -> jax.Array:
  r"""EXACT loss: error rate of the classifier ``argmax_i (z_i / σ + ε_i)``, ``ε ~ N(0, I)``.

  The target wins with probability

  .. math::
    P(y) = \int \varphi(t) \prod_{i \ne y} \Phi(t + \Delta_i)\, dt, \qquad
    \Delta_i = (z_y - z_i) / \sigma

  (``φ``, ``Φ`` the standard normal density and CDF), with ``Δ_i = min(z_y - z_i, m) / σ`` when
  a ``margin`` ``m`` is given (no reward for beating a class by more than ``m``). The loss is
  the expected error rate ``1 - P(y)``, or ``-log P(y)`` with ``log_prob=True``.

  The integral is computed in log space by Gauss–Hermite quadrature with ``K = num_nodes`` nodes
  ``x_k`` and weights ``w_k``:

  .. math::
    \log P = \operatorname{logsumexp}_k \Big[\log\tau + \log w_k - \tfrac12\log\pi
      + \tfrac12 (s_k^2 - t_k^2) + \sum_{i \ne y} \log\Phi(t_k + \Delta_i)\Big], \quad
    s_k = \sqrt2 x_k,\ t_k = \mu + \tau s_k.

  ``μ = 0, τ = 1`` is plain Gauss–Hermite (the docs' "Derivations" page); here ``μ`` is the mode of the log-integrand
  and ``τ = (-g''(μ))^{-1/2}`` its width (adaptive Gauss–Hermite, found by at most 12 Newton steps under
  ``stop_gradient``: the integral does not depend on them). Plain Gauss–Hermite misses the
  integrand when it lies outside its node range: at 64 nodes it is off in ``log P`` by 1.3e-3
  for ``V = 1000, Δ = 0`` (where ``P = 1/V`` exactly) and by 1e2 for ``V = 2, Δ = -50``;
  the adaptive rule is within 1e-7 of adaptive reference quadrature in these cases (float64
  measurement; float32 rounding adds ~1e-7 relative). Cost ``O(K · V)`` per example (no
  ``V × V``); the derivative is reduced to ``[..., V]`` in the forward pass, so reverse mode does
  not store the ``[..., K, V]`` intermediate.

  The official code estimates ``P`` by randomised Genz Monte Carlo (16 samples), so its loss and
  gradients are noisy; this one is deterministic.

  The authors' training recipe (tinkoff-ai/exact ``src/exact_pytorch/criterion.py``; the paper's
  configs in ivan-chai/exact ``mdn-metric/configs/exact/``): with ``batch_norm=True`` the logits
  are first normalised by a **batch statistic**, ``z ← (z - mean) / std`` with the mean and the
  (``n - 1``) standard deviation taken over every finite entry of the unmasked rows (``n`` of
  them; a ``-inf`` entry stays ``-inf``; a zero spread divides by 1; invariant to the scale of
  the logits, computed without overflow for any finite logits), differentiated like
  ``smooth_f1_loss``'s batch F1, so an example's loss depends on the rest of the batch; then the margin clips ``z_y - z_i``
  (theirs: 0.5 for MNIST/CIFAR-10) and the differences are divided by ``σ``, a scalar that they
  schedule (variance 100 → 1, log-linear per epoch; pass ``sigma=schedule(step)``, it may be
  traced under ``jit``), and the gradient is divided by its running mean norm
  (:func:`emoloss.normalize_by_running_gradient_norm`).

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: ``[...]`` integer class indices (soft labels are not supported).
    sigma: noise temperature ``σ > 0``: a scalar or an array broadcasting to ``[...]`` (e.g. one
      per example from a scalar head); differentiable. Checked eagerly when concrete.
    num_nodes: number of Gauss–Hermite nodes ``K`` (positive int; 64 by default, 32 is usually
      enough).
    margin: optional clip ``m`` of the logit differences ``z_y - z_i`` (a scalar or an array
      broadcasting to ``[...]``), applied before dividing by ``σ``.
    log_prob: return ``-log P(y)`` instead of ``1 - P(y)``.
    where: optional boolean mask ``[...]``; masked examples give exactly 0 and zero gradient,
      and are left out of the ``batch_norm`` statistic.
    batch_norm: normalise the logits by their batch mean and standard deviation first (the
      authors' ``EXACTLoss`` does when a σ is given, unless ``disable_batch_norm``).

  Returns:
    ``[...]`` float32 per-example loss: ``1 - P(y)`` in ``[0, 1]``, or ``-log P(y) >= 0``. A NaN
    logit in an unmasked row (the target's or a competitor's; a NaN is never taken for a masked
    class) gives NaN for that row's value and gradient; with ``batch_norm=True`` it makes the
    batch statistic NaN, hence every unmasked row.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> labels = jnp.array([0, 2])
    >>> print(emoloss.exact_loss(logits, labels, sigma=1.0))
    [0.0885 0.8169]
    >>> print(emoloss.exact_loss(logits, labels, sigma=1.0, log_prob=True))
    [0.0926 1.6975]

  References:
    Karpukhin et al., "EXACT: How to Train Your Accuracy", 2022 (arXiv 2205.09615).
    Liu & Pierce, "A Note on Gauss–Hermite Quadrature", Biometrika 81(3), 1994 (adaptive
    Gauss–Hermite quadrature).
  """
  if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)):
    raise TypeError(f"`num_nodes` must be a positive int (got {num_nodes!r}).")
  if not 1 <= num_nodes <= _MAX_NODES:
    raise ValueError(
        f"`num_nodes` must be an int in [1, {_MAX_NODES}] (got {num_nodes}); more "
        "nodes add no accuracy in float32 and NumPy's Gauss–Hermite rule overflows from ~380.")
  logits = _validation.check_logits(logits)
  labels, _ = _validation.check_labels(labels, logits, allow_soft=False)
  batch_shape = logits.shape[:-1]
  where = _validation.check_where(where, batch_shape)
  _validation.check_scalar_range(sigma, "sigma", low=0.0, low_inclusive=False)
  sigma = _per_example(sigma, "sigma", batch_shape)
  if margin is not None:
    _validation.check_scalar_range(margin, "margin", low=-np.inf, low_inclusive=False)
    margin = _per_example(margin, "margin", batch_shape)
  if batch_norm:
    logits = _batch_normalize(logits, where)
  return _exact_loss(logits, labels, sigma, margin, where, operator.index(num_nodes),
                     bool(log_prob))


@functools.partial(jax.jit, static_argnums=(5, 6))
def _exact_loss(
    logits: jax.Array,
    labels: jax.Array,
    sigma: jax.Array,
    margin: jax.Array | None,
    where: jax.Array | None,
    num_nodes: int,
    log_prob: bool,
) -> jax.Array:
  """:func:`exact_loss` on checked float32 inputs (``sigma``, ``margin`` of the batch shape).

  Jitted so that an eager call compiles one program rather than dispatching op by op.
  """
  sigma = _masking.mask_inputs(sigma, where, fill=1)
  logits = _masking.mask_inputs(logits, where)
  labels, invalid = _masking.sanitise_labels(labels, where, logits.shape[-1])
  # A NaN logit (target or competitor) makes its row NaN (value and gradient), restored on the
  # output: inside, the row is computed on zeros, so that the NaN is neither taken for a masked
  # class (NaN > -inf is False) nor fed to the Newton iteration.
  nan_row = _masking.nan_rows(logits)
  raw_logits = logits
  logits = jnp.where(nan_row[..., None], 0.0, logits)
  target_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)
  others = jnp.arange(logits.shape[-1]) != labels[..., None]
  # P(y) = 0 exactly when the target logit is -inf or a competitor's is +inf (a vocabulary mask
  # on the target, an overflow): the loss is its maximum, with zero gradient.
  lost = (target_logit[..., 0] == -jnp.inf) | jnp.any(others & (logits == jnp.inf), axis=-1)
  # A -inf class (vocabulary mask) is no competitor at all, also under a margin, whose clip
  # min(inf, m) = m would otherwise let it compete m behind the target.
  others = others & (logits > -jnp.inf)
  logits = jnp.where(lost[..., None], 0.0, logits)
  target_logit = jnp.where(lost[..., None], 0.0, target_logit)
  differences = target_logit - logits  # [..., V]: z_y - z_i, +inf for a -inf (masked) class
  if margin is not None:
    differences = jnp.minimum(differences, _masking.mask_inputs(margin, where)[..., None])
  # A -inf competitor never wins: Φ(t + Δ) = 1. Δ is made finite (inf would give 0 · inf in the
  # Newton step); beyond _DELTA_LIMIT nothing changes in float32 or float64.
  deltas = jnp.minimum(differences / sigma[..., None], _DELTA_LIMIT)

  if logits.shape[-1] == 1:  # no competitor: the target always wins
    log_target_prob = jnp.zeros(logits.shape[:-1])
  else:
    log_target_prob = jnp.minimum(_log_target_prob(deltas, others, num_nodes), 0.0)
  log_target_prob = jnp.where(lost, -jnp.inf, log_target_prob)
  loss = -log_target_prob if log_prob else -jnp.expm1(log_target_prob)
  loss = _masking.propagate_nan(loss, raw_logits, nan_row)
  return _masking.mask_loss(loss, _masking.Rows(keep=where, invalid=invalid))
