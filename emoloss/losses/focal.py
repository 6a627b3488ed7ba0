"""Softmax focal loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emoloss import _masking, _validation
from emoloss.losses import _kernels

ArrayLike = jax.typing.ArrayLike


def _safe_pow(base: jax.Array, exponent) -> jax.Array:
  """``base ** exponent`` for ``base >= 0`` with a finite gradient at ``base == 0`` for any
  ``exponent >= 0`` (``0 ** 0 = 1``)."""
  positive = base > 0
  safe_base = jnp.where(positive, base, 1.0)
  return jnp.where(positive, safe_base**exponent, jnp.where(exponent == 0, 1.0, 0.0))


def _class_weights(alpha: ArrayLike, num_classes: int) -> jax.Array:
  """Checks ``alpha`` (a scalar or ``[V]``, non-negative); returns it as float32 ``[V]``."""
  if np.ndim(alpha) not in (0, 1) or (np.ndim(alpha) == 1 and np.shape(alpha) != (num_classes,)):
    raise ValueError(
        f"`alpha` must be a scalar or have shape (num_classes,) = ({num_classes},) to match the "
        f"logits' last axis (got shape {np.shape(alpha)})."
    )
  _validation.check_scalar_range(alpha, "alpha", low=0.0)
  return jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (num_classes,))


def softmax_focal_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    gamma: float = 2.0,
    where: ArrayLike | None = None,
    alpha: ArrayLike | None = None,
) -> jax.Array:
  r"""Softmax focal loss ``-α_y (1 - p_y)^γ log p_y``.

  .. math::
    L = -\alpha_y (1 - p_y)^{\gamma} \log p_y, \qquad p = \mathrm{softmax}(z)

  with ``α_y = 1`` unless ``alpha`` is given: the paper's α-balanced form, a per-class weight
  (a scalar ``α`` for every class, as ``kornia.losses.focal_loss``'s ``alpha``, or one weight per
  class ``[V]``, e.g. inverse class frequencies). For soft labels ``q`` the loss is
  ``-Σ_i α_i q_i (1 - p_i)^γ log p_i``. ``gamma = 0`` (and no ``alpha``) is exactly softmax
  cross-entropy. The modulating factor is differentiated (not stopped), as in the paper.
  (``optax.losses.sigmoid_focal_loss`` is the per-class sigmoid form; this is the softmax form.)

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]`` or soft labels ``[..., V]``.
    gamma: focusing parameter ``γ >= 0``.
    where: optional boolean mask ``[...]``; masked examples give exactly 0.
    alpha: optional class weight ``α >= 0``: a scalar or a ``[V]`` vector (``None``: 1).

  Returns:
    ``[...]`` float32 per-example loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> labels = jnp.array([0, 0])
    >>> print(emoloss.softmax_focal_loss(logits, labels, gamma=0.0))  # = cross-entropy
    [0.0949 1.0986]
    >>> print(emoloss.softmax_focal_loss(logits, labels, gamma=2.0))
    [0.0008 0.4883]

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv 1708.02002).
  """
  _check_gamma(gamma)
  logits, labels, integer, where = _validation.prepare_classification(logits, labels, where)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  if alpha is not None:
    alpha = _class_weights(alpha, logits.shape[-1])
  if integer:
    loss = _focal_term(_kernels.target_log_prob(log_probs, labels, integer=True), gamma)
    if alpha is not None:
      loss = loss * alpha[labels]
  else:
    # Only classes with target mass enter: a -inf logit elsewhere (vocabulary mask) must not
    # meet a 0 weight in the product (0 · inf), nor in its gradient.
    weights = labels if alpha is None else labels * alpha  # α_i q_i
    loss = jnp.sum(weights * _focal_term(_masking.zero_where_unlabelled(log_probs, labels), gamma),
                   axis=-1)
  return _masking.mask_loss(loss, where)


def _check_gamma(gamma) -> None:
  if np.ndim(gamma) != 0:
    raise ValueError(
        f"`gamma` must be a scalar focusing parameter (got shape {np.shape(gamma)}); a "
        "per-example or per-class gamma is not supported.")
  _validation.check_scalar_range(gamma, "gamma", low=0.0)


def _focal_term(log_prob: jax.Array, gamma) -> jax.Array:
  """``-(1 - p)^γ log p`` from ``log p`` (``1 - p = -expm1(log p)``, accurate as ``p → 1``)."""
  one_minus_p = jnp.maximum(-jnp.expm1(log_prob), 0.0)
  return -_safe_pow(one_minus_p, jnp.asarray(gamma, jnp.float32)) * log_prob
