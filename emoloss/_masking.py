"""The mask, label and NaN rules shared by every loss: masked rows are sanitised on the way in and
zeroed on the way out, an unmasked out-of-range integer label gives a NaN loss for its row, and a
NaN input row gives a NaN loss and gradient (never a finite value)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Rows(NamedTuple):
  """Row status returned by :func:`prepare_classification` in place of ``where``.

  Attributes:
    keep: the user's boolean mask (``None``: every row counts).
    invalid: rows whose unmasked integer label is outside ``[0, V)``: their loss is NaN.
  """
  keep: Array | None
  invalid: Array


def mask_inputs(x: Array, where: Array | None, fill=0) -> Array:
  """Replaces masked rows of ``x [*batch, ...]`` by ``fill`` so they cannot produce NaN/inf
  values or gradients (the "double where" pattern)."""
  if where is None:
    return x
  mask = where.reshape(where.shape + (1,) * (x.ndim - where.ndim))
  return jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def mask_loss(loss: Array, where: Array | Rows | None) -> Array:
  """Zeroes the per-example loss of masked examples; with a :class:`Rows`, also sets the loss
  of rows with an out-of-range label to NaN (the label rule). The NaN is selected here, on the
  output: XLA may drop a ``select(c, NaN, x)`` fed into later arithmetic (seen on CPU: ``exp`` then
  ``sum`` of it lost the NaN), so inputs are sanitised instead and the NaN is put last."""
  if isinstance(where, Rows):
    loss = jnp.where(where.invalid, jnp.nan, loss)
    where = where.keep
  if where is None:
    return loss
  return jnp.where(where, loss, 0.0)


def nan_rows(logits: Array) -> Array:
  """``[...]`` True for the rows of ``logits [..., V]`` holding a NaN (masked rows must already be
  sanitised, e.g. by :func:`prepare_classification`)."""
  return jnp.any(jnp.isnan(logits), axis=-1)


def propagate_nan(loss: Array, logits: Array, rows: Array) -> Array:
  """``loss [...]`` with the ``rows`` set to NaN, and a NaN gradient with respect to every entry
  of their ``logits [..., V]`` (the NaN rule: a NaN input is never turned into a finite value).

  For losses that sanitise NaN rows to keep their internals finite (a NaN would otherwise be
  taken for a masked class, or stall an iteration): the NaN comes back here, on the output, as
  ``NaN · logits`` of the row; other rows get exactly zero from this term (double where)."""
  row_logits = jnp.where(rows[..., None], logits, 0.0)
  poison = jnp.sum(row_logits, axis=-1) * jnp.nan
  return jnp.where(rows, poison, loss)


def sanitise_labels(
    labels: Array, where: Array | None, num_classes: int
) -> tuple[Array, Array]:
  """Returns ``(labels, invalid)``: labels outside ``[0, num_classes)`` and masked labels
  replaced by 0 (so gathers stay in range), and the unmasked rows whose label was outside."""
  valid = (labels >= 0) & (labels < num_classes)
  invalid = ~valid if where is None else ~valid & where
  usable = valid if where is None else valid & where
  return jnp.where(usable, labels, 0), invalid


def zero_where_unlabelled(values: Array, labels: Array) -> Array:
  """``values`` with entries of zero target mass replaced by 0, so that ``labels * values`` has
  neither a ``0 · inf`` value nor a NaN gradient (the "double where" pattern)."""
  return jnp.where(labels != 0, values, 0.0)
