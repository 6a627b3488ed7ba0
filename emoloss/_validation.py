"""Argument checks for every loss and transform.

Shapes and dtypes are static under ``jax.jit``, so every check here runs at trace time and raises a
``ValueError``/``TypeError`` that names the offending argument. Label *values* are not visible under
``jit``; :func:`check_label_range` checks them eagerly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emoloss._masking import Rows, mask_inputs, sanitise_labels

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def shape_of(x) -> tuple[int, ...]:
  """The static shape of an array or array-like."""
  return tuple(np.shape(x))


def dtype_of(x):
  """The dtype of an array or array-like (as ``jnp.asarray`` would give it)."""
  return jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype


def check_logits(logits: ArrayLike, name: str = "logits", min_rank: int = 1) -> Array:
  """Checks that ``logits`` is a floating array of rank >= ``min_rank``; returns it as float32."""
  dtype = dtype_of(logits)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"`{name}` must have a floating dtype (got {dtype}); cast it, e.g. "
        f"`{name}.astype(jnp.float32)`."
    )
  if len(shape_of(logits)) < min_rank:
    raise ValueError(
        f"`{name}` must have rank >= {min_rank} (got shape {shape_of(logits)})."
    )
  return jnp.asarray(logits).astype(jnp.float32)


def is_integer_labels(labels: ArrayLike) -> bool:
  """True for integer (class index) labels, False for floating (soft / one-hot) labels."""
  dtype = dtype_of(labels)
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
    if shape_of(labels) != batch_shape:
      raise ValueError(
          f"integer `labels` must have shape logits.shape[:-1] = {batch_shape} "
          f"(got labels {shape_of(labels)}, logits {logits.shape})."
      )
    return jnp.asarray(labels).astype(jnp.int32), True
  if shape_of(labels) == batch_shape and shape_of(labels) != logits.shape:
    raise TypeError(
        f"`labels` has the shape of class indices {batch_shape} but a floating dtype "
        f"({dtype_of(labels)}): cast labels to an integer dtype, e.g. `labels.astype(jnp.int32)` "
        f"(soft labels need the shape of logits {logits.shape})."
    )
  if not allow_soft:
    raise TypeError(
        f"`labels` must be integer class indices for this loss (got dtype {dtype_of(labels)}); "
        "cast labels to an integer dtype."
    )
  if shape_of(labels) != logits.shape:
    raise ValueError(
        f"soft `labels` must have the shape of logits {logits.shape} (got {shape_of(labels)}); "
        f"integer labels must have shape {batch_shape}."
    )
  return jnp.asarray(labels).astype(jnp.float32), False


def check_where(where: ArrayLike | None, batch_shape: tuple[int, ...]) -> Array | None:
  """Checks a boolean example mask of shape ``batch_shape`` (``None`` passes through)."""
  if where is None:
    return None
  if shape_of(where) != tuple(batch_shape):
    raise ValueError(
        f"`where` must have the batch shape {tuple(batch_shape)} (got {shape_of(where)})."
    )
  if dtype_of(where) != jnp.bool_:
    raise TypeError(f"`where` must be a boolean mask (got dtype {dtype_of(where)}).")
  return jnp.asarray(where)


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


def check_label_range(
    labels: ArrayLike, num_classes: int, name: str = "labels", *, where: ArrayLike | None = None
) -> None:
  """Eagerly checks that integer ``labels`` lie in ``[0, num_classes)``.

  The label rule of every loss (and of the fused path): an unmasked integer label outside
  ``[0, V)`` gives a NaN loss for its example (nothing is clamped or wrapped, and no other
  example is affected); a masked example (``where`` False) is inert whatever its label, so
  padding ids such as ``V`` or ``-100`` are fine under a mask. Label values are not visible under
  ``jax.jit``, so the losses cannot raise there; call this helper on concrete labels (e.g. once
  per dataset, or on each batch before the jitted step) to get an error instead of a NaN.
  Pass the batch's mask as ``where`` to check it as the losses read it: masked positions (padding
  ids under the mask) are not checked.

  Args:
    labels: concrete integer labels (a NumPy or JAX array, not a tracer).
    num_classes: ``V``.
    name: the argument name used in the message.
    where: optional concrete boolean mask of the shape of ``labels``; only positions where it is
      True are checked.

  Raises:
    TypeError: for floating labels or a non-boolean ``where``, or when called on a tracer (under
      ``jit``/``grad``).
    ValueError: naming the first offending positions and values, or for a ``where`` whose shape
      is not that of ``labels``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> emoloss.check_label_range(jnp.array([0, 2, 1]), num_classes=3)
    >>> emoloss.check_label_range(jnp.array([0, 3]), num_classes=3)  # raises
    Traceback (most recent call last):
    ...
    ValueError: `labels` must lie in [0, 3)...
    >>> emoloss.check_label_range(jnp.array([0, -100]), num_classes=3,
    ...                           where=jnp.array([True, False]))  # padding under the mask
  """
  if any(isinstance(x, jax.core.Tracer) for x in (labels, where)):
    raise TypeError(
        f"`check_label_range` needs concrete `{name}`, got a tracer: call it eagerly, outside "
        "`jax.jit`/`jax.grad` (e.g. on the batch before the jitted training step)."
    )
  arr = np.asarray(labels)
  if not np.issubdtype(arr.dtype, np.integer):
    raise TypeError(
        f"`{name}` must be integer class indices (got dtype {arr.dtype}); cast labels to an "
        "integer dtype.")
  bad = (arr < 0) | (arr >= num_classes)
  if where is not None:
    mask = np.asarray(where)
    if mask.dtype != np.bool_:
      raise TypeError(f"`where` must be a boolean mask (got dtype {mask.dtype}).")
    if mask.shape != arr.shape:
      raise ValueError(
          f"`where` must have the shape of `{name}` {arr.shape} (got {mask.shape}).")
    bad &= mask
  if np.any(bad):
    positions = np.argwhere(bad)[:5]
    shown = ", ".join(
        f"{name}[{', '.join(str(int(i)) for i in pos)}] = {int(arr[tuple(pos)])}"
        for pos in positions)
    hint = ("Remap them, or mask them with `where` (here and in the loss)." if where is not None
            else "Mask padding positions with `where` (pass the mask here too) or remap them.")
    raise ValueError(
        f"`{name}` must lie in [0, {num_classes}); {int(bad.sum())} of {arr.size} are out of "
        f"range{' (unmasked)' if where is not None else ''}, first: {shown}. {hint}"
    )


def prepare_classification(
    logits: ArrayLike,
    labels: ArrayLike,
    where: ArrayLike | None,
    *,
    allow_soft: bool = True,
) -> tuple[Array, Array, bool, Rows | Array | None]:
  """Checks ``(logits [..., V], labels, where [...])`` and sanitises the rows.

  Returns ``(logits_f32, labels, is_integer, rows)``. Masked rows get zero logits and label 0
  (soft labels: zeros), so nothing computed from them can be NaN whatever they held. Integer
  labels outside ``[0, V)`` become 0 too, and ``rows`` (a :class:`Rows`, to be passed to
  :func:`mask_loss` like a mask) records them so that their loss comes out NaN (the label rule
  of :func:`check_label_range`) while the gathers stay in range.
  """
  logits = check_logits(logits)
  labels, integer = check_labels(labels, logits, allow_soft=allow_soft)
  where = check_where(where, logits.shape[:-1])
  logits = mask_inputs(logits, where)
  if not integer:
    return logits, mask_inputs(labels, where), False, where
  labels, invalid = sanitise_labels(labels, where, logits.shape[-1])
  return logits, labels, True, Rows(keep=where, invalid=invalid)


def prepare_binary(
    logits: ArrayLike, labels: ArrayLike, where: ArrayLike | None, *, soft: bool = False
) -> tuple[Array, Array, Rows]:
  """Checks binary ``logits [...]`` against ``labels`` of the same shape and ``where [...]``.

  Labels are ``{0, 1}`` integers, booleans or floats (``[0, 1]`` floats only when ``soft``).
  Concrete labels outside that set raise ``ValueError``; under ``jit`` such an unmasked label is
  replaced by 0 and its entry's loss is NaN (through the returned :class:`Rows`, to be passed to
  :func:`mask_loss`). Returns float32 logits and labels with masked entries zeroed.
  """
  logits = check_logits(logits, min_rank=0)
  if shape_of(labels) != logits.shape:
    raise ValueError(
        f"binary `labels` must have the shape of logits {logits.shape} (got {shape_of(labels)})."
    )
  if dtype_of(labels) != jnp.bool_:
    is_integer_labels(labels)  # raises TypeError for complex/... dtypes
  where = check_where(where, logits.shape)
  labels = jnp.asarray(labels).astype(jnp.float32)
  valid = (labels >= 0) & (labels <= 1) if soft else (labels == 0) | (labels == 1)
  invalid = ~valid if where is None else ~valid & where
  if not any(isinstance(x, jax.core.Tracer) for x in (labels, where)):
    bad = np.asarray(invalid)
    if np.any(bad):
      allowed = "in [0, 1]" if soft else "0 or 1 (or booleans)"
      raise ValueError(
          f"binary `labels` must be {allowed}; found {float(np.asarray(labels)[bad][0])} "
          f"({int(bad.sum())} of {bad.size} entries).")
  labels = mask_inputs(jnp.where(valid, labels, 0.0), where)
  return mask_inputs(logits, where), labels, Rows(keep=where, invalid=invalid)
