"""The wiring shared by every fused function: the per-token record, input checks and
preparation (masks, the label rule), the static configuration, the mesh checks, partition specs,
placement and the one ``shard_map`` wrapper. The schedules (:mod:`emoloss.fused._chunked`,
:mod:`emoloss.fused._onepass`) add only their scan and custom VJP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from emoloss import _masking, _validation
from emoloss.fused import _core as core
from emoloss.fused._core import AxisName

ArrayLike = jax.typing.ArrayLike

# ∂W of the one-pass schedule is accumulated in blocks of this many vocabulary rows: XLA's CPU
# dot cannot add into its output, so a whole-vocabulary ``acc + g_chunkᵀ h`` would hold a second
# [V, d] float32 buffer.
VOCAB_BLOCK = 4096


class TokenStats(NamedTuple):
  """Per-token statistics of the transformed logits ``z'`` (float32, shape ``[...]`` of the
  labels): what :func:`emoloss.fused_token_stats` returns and what the ``per_token`` function
  of :func:`emoloss.fused_loss` receives.

  Attributes:
    nll: cross-entropy ``lse - z'_y`` (with ``label_smoothing = ε``: against the targets
      ``(1 - ε) onehot(y) + ε / V``, ``lse - (1 - ε) z'_y - ε mean(z')``).
    emo: EMO ``1 - (softmax(z') Ê) · ê_y``, or ``None`` when no cost embeddings were given.
    lse: ``logsumexp(z')`` (add ``z_loss_weight * lse**2`` for a z-loss).
    entropy: entropy of the predictive distribution, ``-Σ p log p = lse - Σ p z'``
      (differentiable; an unused field costs nothing in the backward pass).
  """
  nll: jax.Array
  emo: jax.Array | None
  lse: jax.Array
  entropy: jax.Array


class Config(NamedTuple):
  """Static (hashable) settings of one fused call.

  Attributes:
    options: the logit options (:class:`emoloss.fused._core.Options`).
    chunk_size: rows per scan step (vocabulary rows in the recompute schedule, tokens in the
      one-pass schedule).
    mesh, data_axis, model_axis: the device mesh and the axes splitting the tokens and the
      vocabulary (``mesh=None``: one device, no collectives).
    per_token: the one-pass schedule's closure-converted ``f(stats, *consts)``.
    vocab_block_size: rows of the one-pass ``∂W`` accumulator updated per step.
  """
  options: core.Options
  chunk_size: int
  mesh: Mesh | None = None
  data_axis: AxisName = None
  model_axis: AxisName = None
  per_token: Callable | None = None
  vocab_block_size: int = VOCAB_BLOCK


# ----------------------------------------------------------------------------------------------
# Checks.


def positive_int(value, name: str, allow_none: bool = False) -> int | None:
  """A static positive Python or NumPy integer as ``int`` (``None`` passes when allowed)."""
  if value is None and allow_none:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
      or value < 1:
    raise ValueError(f"`{name}` must be a positive Python or NumPy int"
                     f"{' or None' if allow_none else ''} (got {value!r}).")
  return int(value)


def check_bool(value, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be a bool (got {value!r}).")
  return bool(value)


def check_inputs(hidden, head, labels, cost_embeddings, where):
  """Trace-time checks; returns ``(hidden, head, labels, where)`` as arrays (hidden and head
  keep their dtype, labels become int32)."""
  for name, value in (("hidden", hidden), ("head", head)):
    dtype = jnp.asarray(value).dtype if not hasattr(value, "dtype") else value.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"`{name}` must have a floating dtype (got {dtype}).")
  hidden = jnp.asarray(hidden)
  head = jnp.asarray(head)
  if hidden.ndim < 1:
    raise ValueError(f"`hidden` must have shape [..., d] (got {hidden.shape}).")
  if head.ndim != 2 or head.shape[1] != hidden.shape[-1]:
    hint = ""
    if head.ndim == 2 and head.shape[0] == hidden.shape[-1]:
      hint = " A [d, V] kernel (nnx.Linear's) is passed transposed: `kernel.T`."
    raise ValueError(
        f"`head` must have shape [V, d] with d = hidden.shape[-1] = {hidden.shape[-1]} "
        f"(got head {head.shape}, hidden {hidden.shape}).{hint}")
  if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
    raise TypeError(f"`labels` must be integer class indices (got dtype "
                    f"{jnp.asarray(labels).dtype}).")
  if np.shape(labels) != hidden.shape[:-1]:
    raise ValueError(f"`labels` must have shape hidden.shape[:-1] = {hidden.shape[:-1]} "
                     f"(got {np.shape(labels)}).")
  labels = jnp.asarray(labels, jnp.int32)
  where = _validation.check_where(where, hidden.shape[:-1])
  if cost_embeddings is not None:
    if np.ndim(cost_embeddings) != 2 or np.shape(cost_embeddings)[0] != head.shape[0]:
      raise ValueError(
          f"`cost_embeddings` must have shape [V, k] with V = head.shape[0] = {head.shape[0]} "
          f"(got {np.shape(cost_embeddings)}).")
    _validation.check_logits(cost_embeddings, name="cost_embeddings", min_rank=2)
  return hidden, head, labels, where


def _axis_size(mesh: Mesh, axis: AxisName) -> int:
  if axis is None:
    return 1
  names = (axis,) if isinstance(axis, str) else tuple(axis)
  for name in names:
    if name not in mesh.shape:
      raise ValueError(f"mesh axis {name!r} is not in the mesh (axes {tuple(mesh.shape)}).")
  return int(np.prod([mesh.shape[name] for name in names]))


def check_mesh(hidden, head, mesh, data_axis: AxisName, model_axis: AxisName
               ) -> tuple[int, int]:
  """Checks ``hidden [N, d]`` and ``head [V, d]`` against the mesh (``N`` divisible by the size
  of ``data_axis``, ``V`` by that of ``model_axis``); returns the two sizes (1, 1 without a
  mesh)."""
  if mesh is None:
    return 1, 1
  if hidden.ndim != 2:
    raise ValueError(f"`hidden` must have shape [N, d] on a mesh (got {hidden.shape}).")
  if not isinstance(mesh, Mesh):
    raise TypeError(f"`mesh` must be a jax.sharding.Mesh (got {type(mesh).__name__}).")
  data_size, model_size = _axis_size(mesh, data_axis), _axis_size(mesh, model_axis)
  if hidden.shape[0] % data_size:
    raise ValueError(f"the number of tokens N = {hidden.shape[0]} must be divisible by the size "
                     f"{data_size} of data_axis {data_axis!r}.")
  if head.shape[0] % model_size:
    raise ValueError(f"the vocabulary size V = {head.shape[0]} must be divisible by the size "
                     f"{model_size} of model_axis {model_axis!r}.")
  return data_size, model_size


# ----------------------------------------------------------------------------------------------
# Preparation and the label rule.


def prepare(hidden, head, labels, cost_embeddings, where):
  """Masked tokens get zero hidden states and label 0 (nothing NaN can come from them); so do
  unmasked labels outside ``[0, V)``, whose outputs are set to NaN at the end (the label rule of
  :func:`emoloss.check_label_range`). The cost embeddings are held constant (no gradient).
  Returns ``(hidden, labels, cost_embeddings, rows)``."""
  hidden = _masking.mask_inputs(hidden, where)
  labels, invalid = _masking.sanitise_labels(labels, where, head.shape[0])
  if cost_embeddings is not None:
    cost_embeddings = jax.lax.stop_gradient(jnp.asarray(cost_embeddings))
  return hidden, labels, cost_embeddings, _masking.Rows(keep=where, invalid=invalid)


def token_outputs(outputs, rows: _masking.Rows, batch_shape) -> TokenStats:
  """Masks and reshapes the per-token outputs ``(nll, emo, lse, entropy)``; ``nll``, ``emo`` and
  ``entropy`` are clamped at 0, which they are mathematically (in float32 ``lse - z_y`` can round
  to -2e-6)."""
  nll, emo, lse, entropy = outputs
  mask = lambda x: _masking.mask_loss(x, rows).reshape(batch_shape)
  clamp = core.nonnegative
  return TokenStats(nll=mask(clamp(nll)), emo=None if emo is None else mask(clamp(emo)),
                    lse=mask(lse), entropy=mask(clamp(entropy)))


def per_token_label_rule(loss: jax.Array, labels, where, vocab_size: int) -> jax.Array:
  """A per-token loss built on :class:`TokenStats`: masked tokens exactly 0, an unmasked label
  outside ``[0, V)`` NaN (applied again on the output: a loss's own clamps may drop a NaN)."""
  keep = _validation.check_where(where, np.shape(labels))
  _, invalid = _masking.sanitise_labels(jnp.asarray(labels), keep, vocab_size)
  return _masking.mask_loss(loss, _masking.Rows(keep=keep, invalid=invalid))


def reduced_label_rule(loss: jax.Array, rows: _masking.Rows) -> jax.Array:
  """The label rule for a reduced loss: NaN when any unmasked label lies outside ``[0, V)``
  (selected on the output, where XLA keeps it)."""
  return jnp.where(jnp.any(rows.invalid), jnp.nan, loss)


# ----------------------------------------------------------------------------------------------
# Sharding.


class Specs(NamedTuple):
  """Partition specs of a call's arrays: per-token vectors, per-token rows (``hidden``),
  vocabulary rows (``head``, cost embeddings) and replicated scalars."""
  tokens: PartitionSpec
  token_rows: PartitionSpec
  vocab_rows: PartitionSpec
  scalar: PartitionSpec


def specs(config: Config) -> Specs:
  return Specs(tokens=PartitionSpec(config.data_axis),
               token_rows=PartitionSpec(config.data_axis, None),
               vocab_rows=PartitionSpec(config.model_axis, None), scalar=PartitionSpec())


def spec_like(tree, spec):
  """``spec`` for every array of ``tree`` and ``None`` where the tree holds ``None``."""
  return jax.tree.map(lambda x: None if x is None else spec, tree, is_leaf=lambda x: x is None)


def _placed(mesh: Mesh, args, in_specs):
  """Reshards ``args`` to ``in_specs`` on the mesh (needed before ``shard_map`` when mesh axes
  are ``Explicit``, the default of ``jax.make_mesh``; a no-op when they already match)."""
  if not any(kind == AxisType.Explicit for kind in mesh.axis_types):
    return args  # Auto axes: shard_map reshards its inputs itself.

  def place(x, spec):
    return x if x is None else jax.reshard(x, NamedSharding(mesh, spec))
  return jax.tree.map(place, args, in_specs, is_leaf=lambda x: x is None)


def on_devices(config: Config, local: Callable[..., Any], args: tuple, in_specs, out_specs):
  """``local(*args, vocab_axis=, token_axis=)`` on one device, or as a ``shard_map`` over
  ``config.mesh`` with the vocabulary split over ``model_axis`` and the tokens over
  ``data_axis`` (inputs placed first)."""
  if config.mesh is None:
    return local(*args, vocab_axis=None, token_axis=None)
  fn = jax.shard_map(
      functools.partial(local, vocab_axis=config.model_axis, token_axis=config.data_axis),
      mesh=config.mesh, in_specs=in_specs, out_specs=out_specs,
      # No autodiff runs through these shard_maps (each schedule's VJP is its own), and every
      # output is made replicated over the axes it does not vary along by explicit psum/pmax.
      check_vma=False,
  )
  return fn(*_placed(config.mesh, args, in_specs))
