"""Long-tailed classification: logit adjustment and per-class additive margins."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emoloss import _masking, _validation
from emoloss.losses import _kernels

ArrayLike = jax.typing.ArrayLike

# The official code adds log(π^τ + 1e-12), which stays finite for a class that never occurs.
PRIOR_EPSILON = 1e-12


def _check_class_vector(vector: ArrayLike, num_classes: int, name: str) -> jax.Array:
  if np.shape(vector) != (num_classes,):
    raise ValueError(
        f"`{name}` must have shape (num_classes,) = ({num_classes},) to match the logits' last "
        f"axis (got {np.shape(vector)})."
    )
  if not isinstance(vector, jax.core.Tracer) and not np.all(np.asarray(vector) >= 0):
    raise ValueError(f"`{name}` must be non-negative and not NaN (got {np.asarray(vector)}).")
  return jnp.asarray(vector, jnp.float32)


def _check_prior(class_prior: ArrayLike) -> None:
  """A concrete prior must be a finite, non-negative vector with a positive sum."""
  if np.ndim(class_prior) != 1:
    raise ValueError(
        f"`class_prior` must be a vector [V] of label frequencies or counts (got shape "
        f"{np.shape(class_prior)}).")
  if isinstance(class_prior, jax.core.Tracer):
    return
  prior = np.asarray(class_prior, np.float64)
  if not (np.all(np.isfinite(prior)) and np.all(prior >= 0) and prior.sum() > 0):
    raise ValueError(
        f"`class_prior` must be finite and non-negative with a positive sum (got {prior}); a "
        "class that never occurs may have 0.")


def log_prior_adjustment(class_prior: ArrayLike, tau: float = 1.0) -> jax.Array:
  r"""``log(π^τ + 1e-12)`` for a class prior ``π`` (normalised to sum to 1; counts are fine).

  Args:
    class_prior: ``[V]`` finite, non-negative label frequencies or counts with a positive sum.
    tau: temperature ``τ >= 0`` (scalar).

  Returns:
    ``[V]`` float32 offsets added to logits in training (or subtracted after it).

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> print(emoloss.log_prior_adjustment(jnp.array([90.0, 9.0, 1.0])))
    [-0.1054 -2.4079 -4.6052]

  References:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (arXiv 2007.07314).
  """
  _check_prior(class_prior)
  _validation.check_scalar_range(tau, "tau", low=0.0)
  prior = jnp.asarray(class_prior, jnp.float32)
  prior = prior / jnp.sum(prior)
  return jnp.log(prior**tau + PRIOR_EPSILON)


def logit_adjusted_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    class_prior: ArrayLike,
    *,
    tau: float = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Logit-adjusted softmax cross-entropy for long-tailed labels.

  .. math::
    L = -\log \mathrm{softmax}\big(z + \log(\pi^{\tau} + 10^{-12})\big)_y
      \approx \log\Big[1 + \sum_{y' \ne y} (\pi_{y'}/\pi_y)^{\tau} e^{z_{y'} - z_y}\Big]

  i.e. class ``y`` is asked for a margin ``-τ log π_y`` that grows as the class gets rarer. The
  ``+1e-12`` follows the official code and keeps a zero-count class finite. Predict with plain
  ``argmax(z)``: the adjustment is only used in training. ``tau = 0`` or a uniform prior gives
  plain cross-entropy (``optax.losses.softmax_cross_entropy[_with_integer_labels]``, used here).

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]`` or soft labels ``[..., V]``.
    class_prior: ``[V]`` non-negative label frequencies or counts (normalised internally).
    tau: temperature ``τ >= 0``.
    where: optional boolean mask ``[...]``; masked examples give exactly 0.

  Returns:
    ``[...]`` float32 per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> counts = jnp.array([90.0, 9.0, 1.0])
    >>> logits = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    >>> print(emoloss.logit_adjusted_cross_entropy(logits, jnp.array([0, 2]), counts))
    [0.1054 4.6052]

  References:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (arXiv 2007.07314).
  """
  _validation.check_scalar_range(tau, "tau", low=0.0)
  logits, labels, integer, where = _validation.prepare_classification(logits, labels, where)
  prior = _check_class_vector(class_prior, logits.shape[-1], "class_prior")
  adjusted = logits + log_prior_adjustment(prior, tau)
  return _masking.mask_loss(_kernels.softmax_cross_entropy(adjusted, labels, integer), where)


def posthoc_logit_adjustment(
    logits: ArrayLike, class_prior: ArrayLike, *, tau: float = 1.0
) -> jax.Array:
  r"""Post-hoc logit adjustment for prediction: ``z - log(π^τ + 1e-12)``.

  Train with plain cross-entropy, then predict ``argmax`` of the returned scores, which favours
  rare classes by ``-τ log π``.

  Args:
    logits: ``[..., V]`` scores of a model trained with plain cross-entropy.
    class_prior: ``[V]`` non-negative label frequencies or counts.
    tau: ``τ >= 0``.

  Returns:
    ``[..., V]`` float32 adjusted scores.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> counts = jnp.array([90.0, 9.0, 1.0])
    >>> logits = jnp.array([[2.0, 1.0, -1.0]])
    >>> print(logits.argmax(-1), emoloss.posthoc_logit_adjustment(logits, counts).argmax(-1))
    [0] [2]

  References:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (arXiv 2007.07314).
  """
  _validation.check_scalar_range(tau, "tau", low=0.0)
  logits = _validation.check_logits(logits)
  prior = _check_class_vector(class_prior, logits.shape[-1], "class_prior")
  return logits - log_prior_adjustment(prior, tau)


def margin_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    margins: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with a per-class additive margin on the target logit.

  .. math::
    L = -\log \frac{e^{z_y - m_y}}{e^{z_y - m_y} + \sum_{i \ne y} e^{z_i}}

  The target must beat every other class by ``m_y``; rare classes get larger margins (LDAM uses
  ``m_y ∝ n_y^{-1/4}``; logit adjustment corresponds to the pairwise margin
  ``τ log(π_{y'} / π_y)``, see :func:`logit_adjusted_cross_entropy`). Zero margins give plain
  cross-entropy.

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]``.
    margins: ``[V]`` non-negative per-class margins.
    where: optional boolean mask ``[...]``; masked examples give exactly 0.

  Returns:
    ``[...]`` float32 per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
    >>> labels = jnp.array([0, 1])
    >>> print(emoloss.margin_cross_entropy(logits, labels, jnp.array([0.0, 0.0])))
    [0.1269 0.1269]
    >>> print(emoloss.margin_cross_entropy(logits, labels, jnp.array([0.0, 1.0])))
    [0.1269 0.3133]

  References:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (arXiv 2007.07314);
    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
    NeurIPS 2019 (arXiv 1906.07413).
  """
  logits, labels, _, where = _validation.prepare_classification(
      logits, labels, where, allow_soft=False)
  margins = _check_class_vector(margins, logits.shape[-1], "margins")
  is_target = labels[..., None] == jnp.arange(logits.shape[-1])
  adjusted = logits - jnp.where(is_target, margins, 0.0)
  return _masking.mask_loss(_kernels.softmax_cross_entropy(adjusted, labels, True), where)


def norm_aware_margin_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    class_weight_norms: ArrayLike,
    radii: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""Cross-entropy under the worst feature perturbation of radius ``r_y``, logit by logit.

  For a linear last layer, ``z_i = ⟨f, u_i⟩ (+ b_i)`` with features ``f`` and class weights
  ``u_i``, a perturbation ``δ`` of the features with ``‖δ‖ ≤ r_y`` moves logit ``i`` by
  ``⟨δ, u_i⟩ ∈ [-r_y‖u_i‖, r_y‖u_i‖]``. Taking the worst case of each logit (target down, every
  other class up) gives

  .. math::
    z'_y = z_y - r_y \lVert u_y \rVert, \qquad z'_i = z_i + r_y \lVert u_i \rVert\ (i \ne y),
    \qquad L = -\log \mathrm{softmax}(z')_y

  i.e. a pairwise margin ``r_y (‖u_y‖ + ‖u_i‖)`` that grows with the class weights' norms, so
  (unlike :func:`margin_cross_entropy`, which lowers the target by a constant) the margin cannot
  be met by scaling the weights up. This is an upper bound of the loss under one shared
  perturbation ``δ`` (pairwise ``⟨δ, u_i - u_y⟩ ≤ r_y‖u_i - u_y‖ ≤ r_y(‖u_i‖ + ‖u_y‖)``), equal to
  it when the competing weights are antiparallel to the target's (e.g. two classes with
  ``u_1 = -c u_0``). Zero radii give plain cross-entropy; rarer classes get larger radii (LDAM's
  ``r_y ∝ n_y^{-1/4}``).

  From features ``f [..., k]`` and a class-weight matrix ``U [V, k]`` (a Flax ``kernel`` is
  ``Uᵀ``): ``logits = f @ U.T`` (plus any bias) and ``class_weight_norms =
  optax.safe_norm(U, 0.0, axis=-1)``; the loss is then differentiable in ``U`` through both, and
  its gradient stays finite when a row of ``U`` is zero (a zero-initialised head), where that of
  ``jnp.linalg.norm`` is NaN (``0/0``, even with zero radii).

  Args:
    logits: ``[..., V]`` scores ``⟨f, u_i⟩ (+ b_i)`` (any float dtype; computed in float32).
    labels: integer class indices ``[...]``.
    class_weight_norms: ``[V]`` non-negative ``‖u_i‖`` (differentiable).
    radii: ``[V]`` non-negative per-class perturbation radii ``r_y`` (the target's is used).
    where: optional boolean mask ``[...]``; masked examples give exactly 0 and zero gradient.

  Returns:
    ``[...]`` float32 per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
    >>> labels = jnp.array([0, 1])
    >>> norms = jnp.array([1.0, 0.5])  # jnp.linalg.norm(class_weights, axis=-1)
    >>> print(emoloss.norm_aware_margin_cross_entropy(logits, labels, norms, jnp.zeros(2)))  # = CE
    [0.1269 0.1269]
    >>> print(emoloss.norm_aware_margin_cross_entropy(logits, labels, norms, jnp.array([0.0, 1.0])))
    [0.1269 0.4741]

  References:
    Su Jianlin, "再谈类别不平衡问题:调节权重与魔改Loss的对比联系" (class imbalance: re-weighting vs
    modified losses), kexue.fm/archives/7708, 2020-08-31 (the margin view and its general form);
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021 (arXiv 2007.07314);
    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
    NeurIPS 2019 (arXiv 1906.07413), per-class margins ``∝ n_y^{-1/4}``.
  """
  logits, labels, _, where = _validation.prepare_classification(
      logits, labels, where, allow_soft=False)
  num_classes = logits.shape[-1]
  norms = _check_class_vector(class_weight_norms, num_classes, "class_weight_norms")
  radii = _check_class_vector(radii, num_classes, "radii")
  radius = radii[labels]  # [...]: r_y (masked and out-of-range labels were set to 0)
  is_target = labels[..., None] == jnp.arange(num_classes)
  shift = radius[..., None] * norms  # [..., V]: r_y ‖u_i‖
  adjusted = logits + jnp.where(is_target, -shift, shift)
  return _masking.mask_loss(_kernels.softmax_cross_entropy(adjusted, labels, True), where)
