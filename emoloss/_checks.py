"""Argument checks and small shared helpers for every loss.

Shapes and dtypes are static under ``jax.jit``, so every check here runs at trace time and raises a
``ValueError``/``TypeError`` that names the offending argument. Label *values* are not visible under
``jit``; :func:`check_label_range` checks them eagerly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _shape(x) -> tuple[int, ...]:
  return tuple(np.shape(x))


def _dtype(x):
  return jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype


def check_logits(logits: ArrayLike, name: str = "logits", min_rank: int = 1) -> Array:
  """Checks that ``logits`` is a floating array of rank >= ``min_rank``; returns it as float32."""
  dtype = _dtype(logits)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"`{name}` must have a floating dtype (got {dtype}); cast it, e.g. "
        f"`{name}.astype(jnp.float32)`."
    )
  if len(_shape(logits)) < min_rank:
    raise ValueError(
        f"`{name}` must have rank >= {min_rank} (got shape {_shape(logits)})."
    )
  return jnp.asarray(logits).astype(jnp.float32)


def is_integer_labels(labels: ArrayLike) -> bool:
  """True for integer (class index) labels, False for floating (soft / one-hot) labels."""
  dtype = _dtype(labels)
  if jnp.issubdtype(dtype, jnp.integer):
    return True
  if jnp.issubdtype(dtype, jnp.floating):
    return False
  raise TypeError(f"`labels` must be integer class indices or floating probabilities (got {dtype}).")


def check_labels(
    labels: ArrayLike, logits: Array, *, allow_soft: bool = True
) -> tuple[Array, bool]:
  """Checks labels against ``logits [..., V]``; returns ``(labels, is_integer)``.

  Integer labels must have shape ``logits.shape[:-1]``; soft labels (floating, when
  ``allow_soft``) must have the shape of ``logits`` and are returned as float32.
  """
  integer = is_integer_labels(labels)
  batch_shape = logits.shape[:-1]
  if integer:
    if _shape(labels) != batch_shape:
      raise ValueError(
          f"integer `labels` must have shape logits.shape[:-1] = {batch_shape} "
          f"(got labels {_shape(labels)}, logits {logits.shape})."
      )
    return jnp.asarray(labels).astype(jnp.int32), True
  if not allow_soft:
    raise TypeError(
        f"`labels` must be integer class indices for this loss (got dtype {_dtype(labels)})."
    )
  if _shape(labels) != logits.shape:
    raise ValueError(
        f"soft `labels` must have the shape of logits {logits.shape} (got {_shape(labels)}); "
        f"integer labels must have shape {batch_shape}."
    )
  return jnp.asarray(labels).astype(jnp.float32), False


def check_where(where: ArrayLike | None, batch_shape: tuple[int, ...]) -> Array | None:
  """Checks a boolean example mask of shape ``batch_shape`` (``None`` passes through)."""
  if where is None:
    return None
  if _shape(where) != tuple(batch_shape):
    raise ValueError(
        f"`where` must have the batch shape {tuple(batch_shape)} (got {_shape(where)})."
    )
  if _dtype(where) != jnp.bool_:
    raise TypeError(f"`where` must be a boolean mask (got dtype {_dtype(where)}).")
  return jnp.asarray(where)


def mask_inputs(x: Array, where: Array | None, fill=0) -> Array:
  """Replaces masked rows of ``x [*batch, ...]`` by ``fill`` so they cannot produce NaN/inf
  values or gradients (the "double where" pattern)."""
  if where is None:
    return x
  mask = where.reshape(where.shape + (1,) * (x.ndim - where.ndim))
  return jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def mask_loss(loss: Array, where: Array | None) -> Array:
  """Zeroes the per-example loss of masked examples."""
  if where is None:
    return loss
  return jnp.where(where, loss, 0.0)


def check_scalar_range(
    value, name: str, low: float = -np.inf, high: float = np.inf,
    low_inclusive: bool = True, high_inclusive: bool = True,
) -> None:
  """Raises ``ValueError`` if a concrete ``value`` (Python or NumPy scalar/array) leaves a range.

  Traced values (under ``jit``) cannot be checked and pass through unchecked.
  """
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value, dtype=np.float64)
  above = arr >= low if low_inclusive else arr > low
  below = arr <= high if high_inclusive else arr < high
  if not (np.all(above) and np.all(below)):
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    raise ValueError(f"`{name}` must lie in {lo}{low}, {high}{hi} (got {value}).")


def check_label_range(labels: ArrayLike, num_classes: int, name: str = "labels") -> None:
  """Eagerly checks that integer ``labels`` lie in ``[0, num_classes)``.

  Under ``jax.jit`` label values are not known at trace time, so the losses cannot check them:
  an out-of-range integer label there follows JAX's gather/one-hot semantics (an index past the
  end is clamped by ``take_along_axis``, a one-hot comparison gives all zeros), i.e. a silently
  wrong loss. Call this helper on concrete labels (e.g. once per dataset) to catch that early.

  Raises:
    ValueError: naming the first offending value.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> emoloss.check_label_range(jnp.array([0, 2, 1]), num_classes=3)
    >>> emoloss.check_label_range(jnp.array([0, 3]), num_classes=3)  # raises
    Traceback (most recent call last):
    ...
    ValueError: `labels` must lie in [0, 3)...
  """
  arr = np.asarray(labels)
  if not np.issubdtype(arr.dtype, np.integer):
    raise TypeError(f"`{name}` must be integer class indices (got dtype {arr.dtype}).")
  bad = (arr < 0) | (arr >= num_classes)
  if np.any(bad):
    first = arr[bad].flat[0]
    raise ValueError(
        f"`{name}` must lie in [0, {num_classes}); found {int(first)} "
        f"({int(bad.sum())} of {arr.size} out of range)."
    )


def prepare_classification(
    logits: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    *,
    allow_soft: bool = True,
) -> tuple[Array, Array, bool, Array | None]:
  """Checks ``(logits [..., V], labels, where [...])`` and sanitises masked rows.

  Returns ``(logits_f32, labels, is_integer, where)`` where masked rows of the logits are replaced
  by zeros so that nothing computed from them can be NaN (their loss is zeroed afterwards by
  :func:`mask_loss`).
  """
  logits = check_logits(logits)
  labels, integer = check_labels(labels, logits, allow_soft=allow_soft)
  where = check_where(where, logits.shape[:-1])
  logits = mask_inputs(logits, where)
  if not integer:
    labels = mask_inputs(labels, where)
  return logits, labels, integer, where


def target_log_prob(log_probs: Array, labels: Array, integer: bool) -> Array:
  """``log p_y`` for integer labels, ``Σ_i q_i log p_i`` for soft labels ``q``."""
  if integer:
    return jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  return jnp.sum(labels * log_probs, axis=-1)


def prepare_binary(
    logits: ArrayLike, labels: ArrayLike, where: ArrayLike | None
) -> tuple[Array, Array, Array | None]:
  """Checks binary ``logits [...]`` against ``labels`` of the same shape (``{0, 1}`` integers or
  floats) and ``where [...]``; returns float32 logits and labels with masked entries zeroed."""
  logits = check_logits(logits, min_rank=0)
  if _shape(labels) != logits.shape:
    raise ValueError(
        f"binary `labels` must have the shape of logits {logits.shape} (got {_shape(labels)})."
    )
  is_integer_labels(labels)  # raises TypeError for bool/complex/... dtypes
  where = check_where(where, logits.shape)
  labels = jnp.asarray(labels).astype(jnp.float32)
  return mask_inputs(logits, where), mask_inputs(labels, where), where
