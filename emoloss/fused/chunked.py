"""Cross-entropy and EMO straight from hidden states, chunked over the vocabulary.

The ``[N, V]`` logits ``z = h Wᵀ`` are never held: the forward pass scans over vocabulary chunks
with an online (running-max) log-sum-exp, and the backward pass recomputes each chunk's logits
(the Cut Cross-Entropy schedule). Per token, the forward pass keeps running statistics over the
chunks seen so far, relative to the running maximum (:class:`emoloss.fused.core.Partial`: the
sum of exponentials, the cost-weighted sum for EMO, the entropy and logit sums); statistics of
disjoint vocabulary ranges combine exactly, which is what lets a tensor-parallel head combine its
shards with one ``pmax`` and a few ``psum`` of ``[N]`` vectors.

The custom VJP takes a cotangent for each per-token output, so masks, reductions, z-loss and the
EMO/CE mixing stay outside in plain JAX; the logit gradient from those cotangents (with the
options: soft-cap, temperature, label smoothing) is :func:`emoloss.fused.core.logit_grad`,
accumulated into ``∂h`` (an ``[N, d]`` float32 carry) and emitted as ``∂W`` blocks chunk by chunk.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from emoloss import _masking, _validation
from emoloss.fused import core
from emoloss.losses.emo import MODE1_MAX_RATIO, emo_ce_combination, normalize_embeddings

ArrayLike = jax.typing.ArrayLike
AxisName = str | tuple[str, ...] | None

# Vocabulary rows per chunk. On 2 CPU cores at N=2048, V=32768, d=k=512, chunks of 512-1024 make
# fused CE+EMO as fast as the naive path and 2048-4096 are 15% slower (cache size); temporary
# memory grows as N * chunk_size.
DEFAULT_CHUNK_SIZE = 1024


class FusedOutput(NamedTuple):
  """Per-token results of :func:`fused_ce_emo` (all float32, shape ``[...]`` of the labels).

  With ``softcap``/``temperature`` every output is of the transformed logits ``z'``.

  Attributes:
    nll: cross-entropy ``lse - z'_y`` (with ``label_smoothing = ε``: against the targets
      ``(1 - ε) onehot(y) + ε / V``, ``lse - (1 - ε) z'_y - ε mean(z')``).
    emo: EMO ``1 - (softmax(z') Ê) · ê_y``, or ``None`` when no cost embeddings were given.
    lse: ``logsumexp(z')`` (add ``z_loss_weight * lse**2`` for a z-loss).
    entropy: entropy of the predictive distribution, ``-Σ p log p = lse - Σ p z'``
      (differentiable; an unused output costs nothing in the backward pass).
  """
  nll: jax.Array
  emo: jax.Array | None
  lse: jax.Array
  entropy: jax.Array


class _Config(NamedTuple):
  """Static (hashable) settings of one fused call."""
  chunk_size: int
  mesh: Mesh | None = None
  data_axis: AxisName = None
  model_axis: AxisName = None
  options: core.Options = core.Options()


# ----------------------------------------------------------------------------------------------
# Per-device kernels. ``vocab_axis``/``token_axis`` name the mesh axes over which the head's rows
# and the tokens are split (None on one device); collectives are only issued for named axes.


def _psum(x: jax.Array, axis: AxisName) -> jax.Array:
  return x if axis is None else jax.lax.psum(x, axis)


def _pmax(x: jax.Array, axis: AxisName) -> jax.Array:
  return x if axis is None else jax.lax.pmax(x, axis)


def _vocab_offset(local_vocab: int, axis: AxisName) -> jax.Array:
  """First global vocabulary id held by this device."""
  if axis is None:
    return jnp.zeros((), jnp.int32)
  return (jax.lax.axis_index(axis) * local_vocab).astype(jnp.int32)


def _compute_dtype(*dtypes) -> jnp.dtype:
  return jnp.result_type(*dtypes)


def _chunk_starts(vocab_size: int, chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """Chunk ``i`` covers rows ``[start_i, start_i + chunk_size)`` and is responsible for the rows
  from ``fresh_i = i * chunk_size`` on. When ``chunk_size`` does not divide ``V`` the last chunk
  is moved back to end at ``V`` (``start = V - chunk_size < fresh``), so every chunk has the same
  static size, nothing is padded, and its first ``fresh - start`` rows (already covered by the
  previous chunk) are masked out of every sum over the vocabulary."""
  num_chunks = -(-vocab_size // chunk_size)
  fresh = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
  return jnp.minimum(fresh, vocab_size - chunk_size), fresh


def _for_each_chunk(body, carry, vocab_size: int, chunk_size: int, block_shape=None,
                    block_dtype=None):
  """Runs ``body(carry, start, fresh) -> (carry, block)`` over ``[0, vocab_size)`` in one
  ``lax.scan`` of equal chunks (see :func:`_chunk_starts`); the body slices its inputs with
  ``dynamic_slice``, so nothing of size ``V`` is copied or padded.

  When ``block_shape`` is given, each chunk returns a ``[chunk_size, *block_shape]`` block (its
  rows' values, correct for all rows including the overlap) and these are assembled into a
  ``[vocab_size, *block_shape]`` array: emitted by the scan when the chunks tile ``V`` exactly (a
  free reshape), else written in place into a carried buffer, where the moved-back last chunk
  rewrites its overlap with the same values. Returns ``(carry, blocks or None)``.
  """
  starts, fresh = _chunk_starts(vocab_size, chunk_size)
  if block_shape is None:
    carry, _ = jax.lax.scan(lambda c, xs: (body(c, *xs)[0], None), carry, (starts, fresh))
    return carry, None
  if vocab_size % chunk_size == 0:
    carry, blocks = jax.lax.scan(lambda c, xs: body(c, *xs), carry, (starts, fresh))
    return carry, blocks.reshape((vocab_size,) + tuple(block_shape))

  def write(state, xs):
    carry, out = state
    carry, block = body(carry, *xs)
    return (carry, jax.lax.dynamic_update_slice_in_dim(out, block, xs[0], axis=0)), None
  out = jnp.zeros((vocab_size,) + tuple(block_shape), block_dtype)
  (carry, out), _ = jax.lax.scan(write, (carry, out), (starts, fresh))
  return carry, out


def _chunk_logits(hidden, head, start, size, dtype):
  """``h W[start:start+size]ᵀ`` as float32 ``[N, size]`` (matmul inputs in ``dtype``)."""
  rows = jax.lax.dynamic_slice_in_dim(head, start, size, axis=0).astype(dtype)
  return jnp.dot(hidden, rows.T, preferred_element_type=jnp.float32), rows


def _unit_rows(rows):
  """Rows L2-normalised, in float32 whatever their dtype (a zero row stays zero): rounding the
  unit rows of bfloat16 embeddings back to bfloat16 would cost EMO ~1e-3."""
  return normalize_embeddings(rows)


def _chunk_cosines(target_unit, cost_embeddings, start, size):
  """``ê_y · ê_v`` for the chunk's columns, float32 ``[N, size]``; the chunk's cost embedding
  rows are normalised here in float32 (``O(size k)``), so no normalised ``[V, k]`` copy is held."""
  rows = jax.lax.dynamic_slice_in_dim(cost_embeddings, start, size, axis=0)
  return jnp.dot(target_unit, _unit_rows(rows).T, preferred_element_type=jnp.float32)


def _held_rows(table, labels, offset):
  """Rows ``table[y - offset]`` of the targets this device holds (zeros elsewhere)."""
  local_vocab = table.shape[0]
  local = labels - offset
  held = (local >= 0) & (local < local_vocab)
  rows = jnp.take(table, jnp.clip(local, 0, local_vocab - 1), axis=0)
  return jnp.where(held[:, None], rows, jnp.zeros((), rows.dtype))


def _target_unit(cost_embeddings, labels, offset, vocab_axis):
  """``ê_y [N, k]`` (float32): each device gathers the targets it holds; a ``psum`` completes
  the rows."""
  return _psum(_unit_rows(_held_rows(cost_embeddings, labels, offset)), vocab_axis)


def _target_logit(hidden, head, labels, offset, vocab_axis, dtype):
  """Raw ``z_y = h · W_y`` from one gathered row per token (``O(N d)``, float32 accumulation); a
  ``psum`` of ``[N]`` completes it across vocabulary shards."""
  rows = _held_rows(head, labels, offset).astype(dtype).astype(jnp.float32)
  return _psum(jnp.sum(hidden.astype(jnp.float32) * rows, axis=-1), vocab_axis)


def _fresh_columns(start, fresh, size):
  """Columns of a chunk not already covered by the previous chunk (see :func:`_chunk_starts`)."""
  return start + jnp.arange(size, dtype=jnp.int32) >= fresh


def _is_target(offset, start, size, labels):
  """One-hot target of a chunk ``[N, size]``, built by comparison (no scatter)."""
  columns = offset + start + jnp.arange(size, dtype=jnp.int32)
  return columns[None, :] == labels[:, None]


def _local_forward(hidden, head, labels, cost_embeddings, config: _Config,
                   vocab_axis: AxisName) -> core.Stats:
  """Per-token :class:`core.Stats` with the vocabulary split over ``vocab_axis``: the chunks'
  statistics merged online (:func:`core.merge`), then over the devices."""
  num_tokens = hidden.shape[0]
  local_vocab = head.shape[0]
  size = min(config.chunk_size, local_vocab)
  overlaps = local_vocab % size != 0
  dtype = _compute_dtype(hidden.dtype, head.dtype)
  options = config.options
  scale = core.scaling(options, dtype)
  hidden = core.scale_hidden(hidden.astype(dtype), scale)
  offset = _vocab_offset(local_vocab, vocab_axis)
  with_emo = cost_embeddings is not None
  target_unit = _target_unit(cost_embeddings, labels, offset, vocab_axis) if with_emo else None

  def body(carry, start, fresh):
    logits, _ = _chunk_logits(hidden, head, start, size, dtype)
    logits, _ = core.transform(logits, options, scale)
    cosines = _chunk_cosines(target_unit, cost_embeddings, start, size) if with_emo else None
    valid = _fresh_columns(start, fresh, size) if overlaps else None
    chunk, _ = core.partial_stats(logits, options, cosines, valid)
    return core.merge(carry, chunk), None

  init = core.empty(num_tokens, options, with_emo)
  stats, _ = _for_each_chunk(body, init, local_vocab, size)
  linear_sum = core.linear_logit_sum(hidden, core.head_sum(head.astype(dtype), options), scale)
  if linear_sum is not None:
    stats = stats._replace(logit_sum=linear_sum)
  stats = core.merge_over(stats, vocab_axis)
  target_logit, _ = core.transform(
      _target_logit(hidden, head, labels, offset, vocab_axis, dtype), options, scale)
  return core.finish(stats, target_logit, local_vocab * _axis_count(vocab_axis), options)


def _axis_count(axis: AxisName):
  """Number of devices along a mesh axis inside ``shard_map`` (1 for ``None``)."""
  return 1 if axis is None else jax.lax.axis_size(axis)


def _local_backward(hidden, head, labels, cost_embeddings, stats: core.Stats,
                    cot: core.Cotangents, wants, config: _Config, vocab_axis: AxisName,
                    token_axis: AxisName):
  """``(∂h or None, ∂W or None)`` for per-token cotangents ``cot``, recomputing each chunk's
  logits (:func:`core.logit_grad`). ``∂h`` is summed over ``vocab_axis``, each ``∂W`` chunk
  over ``token_axis``; ``wants = (hidden?, head?)`` skips the matmul of an unneeded one."""
  want_hidden, want_head = wants
  local_vocab = head.shape[0]
  size = min(config.chunk_size, local_vocab)
  overlaps = local_vocab % size != 0
  dtype = _compute_dtype(hidden.dtype, head.dtype)
  scale = core.scaling(config.options, dtype)
  hidden_c = core.scale_hidden(hidden.astype(dtype), scale)
  offset = _vocab_offset(local_vocab, vocab_axis)
  with_emo = cot.emo is not None
  target_unit = _target_unit(cost_embeddings, labels, offset, vocab_axis) if with_emo else None
  num_classes = local_vocab * _axis_count(vocab_axis)

  def body(grad_hidden, start, fresh):
    raw, rows = _chunk_logits(hidden_c, head, start, size, dtype)
    logits, slope = core.transform(raw, config.options, scale)
    probs = jnp.exp(logits - stats.lse[:, None])
    cosines = _chunk_cosines(target_unit, cost_embeddings, start, size) if with_emo else None
    # The overlap of a moved-back last chunk gets its true gradient too (it is rewritten into ∂W
    # with the same values) ...
    grad_logits = core.logit_grad(logits, slope, probs, _is_target(offset, start, size, labels),
                                  stats, cot, num_classes, config.options, cosines).astype(dtype)
    if want_hidden:
      if overlaps:  # ... but those rows must not add into ∂h twice.
        rows = jnp.where(_fresh_columns(start, fresh, size)[:, None], rows, 0)
      grad_hidden = grad_hidden + jnp.dot(grad_logits, rows, preferred_element_type=jnp.float32)
    if not want_head:
      return grad_hidden, None
    grad_rows = jax.lax.dot_general(grad_logits, hidden_c, (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
    return grad_hidden, _psum(grad_rows, token_axis).astype(head.dtype)

  init = jnp.zeros(hidden.shape if want_hidden else (0,), jnp.float32)
  grad_hidden, grad_head = _for_each_chunk(
      body, init, local_vocab, size, head.shape[1:] if want_head else None, head.dtype)
  if want_hidden:
    grad_hidden = (_psum(grad_hidden, vocab_axis) * scale.pre).astype(hidden.dtype)
  else:
    grad_hidden = None
  return grad_hidden, grad_head


# ----------------------------------------------------------------------------------------------
# The custom VJP, on one device or as shard_maps over a mesh.


def _specs(config: _Config):
  tokens = PartitionSpec(config.data_axis)
  token_rows = PartitionSpec(config.data_axis, None)
  vocab_rows = PartitionSpec(config.model_axis, None)
  return tokens, token_rows, vocab_rows


def _spec_like(tree, spec):
  """``spec`` for every array of ``tree`` and ``None`` where the tree holds ``None``."""
  return jax.tree.map(lambda x: None if x is None else spec, tree, is_leaf=lambda x: x is None)


def _placed(config: _Config, args, specs):
  """Reshards ``args`` to ``specs`` on the mesh (needed before ``shard_map`` when mesh axes are
  ``Explicit``, the default of ``jax.make_mesh``; a no-op when they already match)."""
  assert config.mesh is not None  # only the sharded path places its arguments
  if not any(kind == AxisType.Explicit for kind in config.mesh.axis_types):
    return args  # Auto axes: shard_map reshards its inputs itself.

  def place(x, spec):
    return x if x is None else jax.reshard(x, NamedSharding(config.mesh, spec))
  return jax.tree.map(place, args, specs, is_leaf=lambda x: x is None)


def _stats_specs(config: _Config, with_emo: bool) -> core.Stats:
  """Partition specs of the per-token :class:`core.Stats` (``None`` for absent fields)."""
  tokens = PartitionSpec(config.data_axis)
  emo = tokens if with_emo else None
  specs = (tokens, emo, tokens, tokens if config.options.entropy else None, emo)
  return core.Stats(*specs)  # type: ignore[arg-type]  # a tree of specs, not of arrays


def _forward_all(config: _Config, hidden, head, labels, cost_embeddings) -> core.Stats:
  if config.mesh is None:
    return _local_forward(hidden, head, labels, cost_embeddings, config, None)
  _, token_rows, vocab_rows = _specs(config)
  tokens = PartitionSpec(config.data_axis)
  with_emo = cost_embeddings is not None
  in_specs = (token_rows, vocab_rows, tokens, vocab_rows if with_emo else None)
  fn = jax.shard_map(
      functools.partial(_local_forward, config=config, vocab_axis=config.model_axis),
      mesh=config.mesh, in_specs=in_specs, out_specs=_stats_specs(config, with_emo),
      # No autodiff runs through this shard_map (the VJP below is another shard_map), and every
      # output is made replicated over the model axis by explicit pmax/psum.
      check_vma=False,
  )
  return fn(*_placed(config, (hidden, head, labels, cost_embeddings), in_specs))


def _outputs(stats: core.Stats):
  """The per-token outputs ``(nll, emo, lse, entropy)`` (not yet clamped)."""
  return stats.nll, stats.emo, stats.lse, stats.entropy


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(config: _Config, hidden, head, labels, cost_embeddings):
  return _outputs(_forward_all(config, hidden, head, labels, cost_embeddings))


def _fused_fwd(config: _Config, hidden, head, labels, cost_embeddings):
  # symbolic_zeros: each argument comes as CustomVJPPrimal(value, perturbed). An unperturbed
  # hidden or head (a frozen head, or jax.grad with respect to one of them) needs no gradient
  # matmul; the choice reaches the backward pass in the residuals' structure (None for no).
  wants = tuple(jnp.zeros((0,)) if x.perturbed else None for x in (hidden, head))
  hidden, head, labels, cost_embeddings = custom_vjp_primal_tree_values(
      (hidden, head, labels, cost_embeddings))
  stats = _forward_all(config, hidden, head, labels, cost_embeddings)
  return _outputs(stats), (hidden, head, labels, cost_embeddings, stats, wants)


def symbolic_zero_to_none(g):
  """A cotangent as float32, or ``None`` for a symbolic zero (an unused output)."""
  return None if g is None or isinstance(g, SymbolicZero) else g.astype(jnp.float32)


def _fused_bwd(config: _Config, residuals, cotangents):
  hidden, head, labels, cost_embeddings, stats, wants = residuals
  cot = core.Cotangents(*(symbolic_zero_to_none(g) for g in cotangents))
  wants = tuple(w is not None for w in wants)
  if cost_embeddings is None:
    cot = cot._replace(emo=None)
  if config.mesh is None:
    grad_hidden, grad_head = _local_backward(hidden, head, labels, cost_embeddings, stats, cot,
                                             wants, config, None, None)
  else:
    tokens, token_rows, vocab_rows = _specs(config)
    with_emo = cost_embeddings is not None
    in_specs = (token_rows, vocab_rows, tokens, vocab_rows if with_emo else None,
                _stats_specs(config, with_emo), core.Cotangents(*_spec_like(cot, tokens)))
    fn = jax.shard_map(
        functools.partial(_local_backward, wants=wants, config=config,
                          vocab_axis=config.model_axis, token_axis=config.data_axis),
        mesh=config.mesh, in_specs=in_specs,
        out_specs=(token_rows if wants[0] else None, vocab_rows if wants[1] else None),
        check_vma=False,
    )
    args = (hidden, head, labels, cost_embeddings, stats, cot)
    grad_hidden, grad_head = fn(*_placed(config, args, in_specs))
  # No cotangent for the integer labels nor the (stop-gradient) cost embeddings.
  return grad_hidden, grad_head, None, None


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------------------------
# Public API.


def _check_inputs(hidden, head, labels, cost_embeddings, where, chunk_size):
  """Trace-time checks; returns the arguments as arrays (hidden/head keep their dtype)."""
  for name, value in (("hidden", hidden), ("head", head)):
    dtype = jnp.asarray(value).dtype if not hasattr(value, "dtype") else value.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(f"`{name}` must have a floating dtype (got {dtype}).")
  hidden = jnp.asarray(hidden)
  head = jnp.asarray(head)
  if hidden.ndim < 1:
    raise ValueError(f"`hidden` must have shape [..., d] (got {hidden.shape}).")
  if head.ndim != 2 or head.shape[1] != hidden.shape[-1]:
    raise ValueError(
        f"`head` must have shape [V, d] with d = hidden.shape[-1] = {hidden.shape[-1]} "
        f"(got head {head.shape}, hidden {hidden.shape}).")
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
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"`chunk_size` must be a positive Python int (got {chunk_size!r}).")
  return hidden, head, labels, where


def _prepare(hidden, head, labels, cost_embeddings, where, freeze_head=False):
  """Masked tokens get zero hidden states and label 0 (nothing NaN can come from them); so do
  unmasked labels outside ``[0, V)``, whose outputs :func:`_finish` sets to NaN (the label rule
  of :func:`emoloss.check_label_range`). The cost embeddings are held constant (they are
  normalised chunk by chunk inside the kernel), and so is a frozen head (its ``∂W`` matmul is
  then skipped). Returns ``(hidden, head, labels, cost, rows)``."""
  hidden = _masking.mask_inputs(hidden, where)
  labels, invalid = _masking.sanitise_labels(labels, where, head.shape[0])
  if cost_embeddings is not None:
    cost_embeddings = jax.lax.stop_gradient(jnp.asarray(cost_embeddings))
  if freeze_head:
    head = jax.lax.stop_gradient(head)
  return hidden, head, labels, cost_embeddings, _masking.Rows(keep=where, invalid=invalid)


def _finish(nll, emo, lse, entropy, rows: _masking.Rows, batch_shape) -> FusedOutput:
  """Masks and reshapes the outputs; ``nll``, ``emo`` and ``entropy`` are clamped at 0, which
  they are mathematically (in float32 ``lse - z_y`` can round to -2e-6 for a confident token)."""
  mask = lambda x: _masking.mask_loss(x, rows).reshape(batch_shape)
  clamp = core.nonnegative
  return FusedOutput(nll=mask(clamp(nll)), emo=None if emo is None else mask(clamp(emo)),
                     lse=mask(lse), entropy=mask(clamp(entropy)))


def _check_freeze(freeze_head) -> bool:
  if not isinstance(freeze_head, (bool, np.bool_)):
    raise TypeError(f"`freeze_head` must be a bool (got {freeze_head!r}).")
  return bool(freeze_head)


def fused_ce_emo(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike | None = None,
    *,
    where: ArrayLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    freeze_head: bool = False,
) -> FusedOutput:
  r"""Per-token cross-entropy, EMO, log-sum-exp and entropy of ``z = h Wᵀ`` without
  materialising ``z``.

  .. math::
    z' = \frac{c \tanh(z / c)}{T}, \quad \mathrm{lse} = \log \sum_v e^{z'_v}, \quad
    \mathrm{nll} = \mathrm{lse} - (1 - \varepsilon) z'_y - \tfrac{\varepsilon}{V} \sum_v z'_v,
    \quad \mathrm{EMO} = 1 - (\mathrm{softmax}(z')\,\hat E) \cdot \hat e_y, \quad
    H = \mathrm{lse} - \mathrm{softmax}(z') \cdot z'

  (the soft-cap ``c`` only when ``softcap`` is set; ``T = temperature``,
  ``ε = label_smoothing``), equal (values and gradients with respect to ``hidden`` and ``head``)
  to materialising the transformed logits and calling
  ``optax.losses.softmax_cross_entropy`` with ``optax.smooth_labels`` targets and
  :func:`emoloss.losses.emo_loss`. The vocabulary is processed in chunks of ``chunk_size`` rows
  of ``head`` with an online log-sum-exp; the backward pass recomputes each chunk's logits, so
  memory beyond the inputs and gradients is ``O(N (d + k) + N · chunk_size)`` instead of
  ``O(N V)``, for one extra ``N V d`` matmul (Cut Cross-Entropy's trade). ``V`` need not be a
  multiple of ``chunk_size``.

  Each output has its own cotangent in the custom VJP, so any weighting, masked mean, z-loss
  (``lse**2``), entropy bonus or per-token mix (:func:`emoloss.losses.emo_ce_combination`) can be
  applied to the outputs in plain JAX; an output that is not used costs nothing in the backward
  pass, and neither does the gradient of an argument that is not differentiated
  (``freeze_head=True`` stops the head's gradient: its cotangent is zero and the ``∂W`` matmul,
  a third of the backward work, is skipped). Matmuls run in the promoted dtype of their operands
  with float32 accumulation (bfloat16 ``hidden`` and ``head`` give bfloat16 matmuls); all
  statistics are float32, and the normalised cost embedding rows are kept in float32 whatever
  the embeddings' dtype. Labels are not shifted: for a causal LM pass ``hidden[:, :-1]`` and
  ``tokens[:, 1:]``. An unmasked label outside ``[0, V)`` gives NaN outputs for its token (the
  label rule of :func:`emoloss.check_label_range`); masked tokens are inert whatever their label.
  ``nll``, ``emo`` and ``entropy`` are clamped at 0 (float32 rounding can make them -1e-6).

  Args:
    hidden: ``[..., d]`` final hidden states (float32 or bfloat16).
    head: ``[V, d]`` LM head (output embedding), ``z = hidden @ head.T``.
    labels: ``[...]`` integer target ids.
    cost_embeddings: optional ``[V, k]`` frozen embeddings defining the EMO cost
      ``1 - cos(e_i, e_j)`` (normalised here, no gradient). EMO is computed only when given.
    where: optional boolean mask ``[...]``; masked tokens output 0 and get zero gradient.
    chunk_size: vocabulary rows per chunk (static; a Python or NumPy integer). Peak temporary
      memory grows as ``N * chunk_size``.
    softcap: ``c`` of the logit soft-cap ``c · tanh(z / c)`` (Gemma 2: 30.0), or ``None``.
    temperature: ``T`` dividing the (soft-capped) logits.
    label_smoothing: ``ε ∈ [0, 1]`` of the cross-entropy targets ``(1 - ε) onehot + ε / V``
      (EMO keeps the target ``y``).
    freeze_head: if True, no gradient flows to ``head`` (zero cotangent, no ``∂W`` work).

  Returns:
    :class:`FusedOutput` ``(nll, emo, lse, entropy)`` of float32 ``[...]`` arrays; ``emo`` is
    ``None`` without ``cost_embeddings``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import optax
    >>> import emoloss
    >>> rng = np.random.default_rng(0)
    >>> hidden = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    >>> head = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    >>> labels = jnp.asarray(rng.integers(0, 32, 4))
    >>> out = emoloss.fused_ce_emo(hidden, head, labels, cost_embeddings=head, chunk_size=8)
    >>> ce = optax.losses.softmax_cross_entropy_with_integer_labels(hidden @ head.T, labels)
    >>> emo = emoloss.emo_loss(hidden @ head.T, labels, head)
    >>> print(jnp.allclose(out.nll, ce, atol=1e-4), jnp.allclose(out.emo, emo, atol=1e-5))
    True True
    >>> capped = emoloss.fused_ce_emo(hidden, head, labels, softcap=3.0, chunk_size=8)
    >>> z = 3.0 * jnp.tanh(hidden @ head.T / 3.0)  # the soft-capped logits
    >>> p = jax.nn.softmax(z)
    >>> entropy = -jnp.sum(p * jnp.log(p), axis=-1)
    >>> print(jnp.allclose(capped.entropy, entropy, atol=1e-5))
    True

  References:
    Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", ICLR 2025
    (arXiv 2411.09009); Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive
    Language Modeling", ICLR 2024 (arXiv 2310.04691); Milakov & Gimelshein, "Online normalizer
    calculation for softmax" (arXiv 1805.02867); Gemma Team, "Gemma 2" (arXiv 2408.00118),
    logit soft-capping; Szegedy et al., "Rethinking the Inception Architecture" (arXiv
    1512.00567), label smoothing.
  """
  hidden, head, labels, where = _check_inputs(hidden, head, labels, cost_embeddings, where,
                                              chunk_size)
  options = core.make_options(softcap, temperature, label_smoothing)
  batch_shape = labels.shape
  hidden, head, labels, cost_embeddings, rows = _prepare(
      hidden, head, labels, cost_embeddings, where, _check_freeze(freeze_head))
  flat_hidden = hidden.reshape(-1, hidden.shape[-1])
  config = _Config(chunk_size=int(chunk_size), options=options)
  nll, emo, lse, entropy = _fused(config, flat_hidden, head, labels.reshape(-1),
                                  cost_embeddings)
  flat_rows = jax.tree.map(lambda x: x.reshape(-1), rows)
  return _finish(nll, emo, lse, entropy, flat_rows, batch_shape)


def _axis_size(mesh: Mesh, axis: AxisName) -> int:
  if axis is None:
    return 1
  names = (axis,) if isinstance(axis, str) else tuple(axis)
  for name in names:
    if name not in mesh.shape:
      raise ValueError(f"mesh axis {name!r} is not in the mesh (axes {tuple(mesh.shape)}).")
  return int(np.prod([mesh.shape[name] for name in names]))


def _check_mesh(hidden, head, mesh, data_axis: AxisName, model_axis: AxisName) -> int:
  """Checks ``hidden [N, d]`` and ``head [V, d]`` against the mesh (``N`` divisible by the size
  of ``data_axis``, ``V`` by that of ``model_axis``); returns the size of ``model_axis``."""
  if hidden.ndim != 2:
    raise ValueError(f"`hidden` must have shape [N, d] here (got {hidden.shape}).")
  if not isinstance(mesh, Mesh):
    raise TypeError(f"`mesh` must be a jax.sharding.Mesh (got {type(mesh).__name__}).")
  data_size, model_size = _axis_size(mesh, data_axis), _axis_size(mesh, model_axis)
  if hidden.shape[0] % data_size:
    raise ValueError(f"the number of tokens N = {hidden.shape[0]} must be divisible by the size "
                     f"{data_size} of data_axis {data_axis!r}.")
  if head.shape[0] % model_size:
    raise ValueError(f"the vocabulary size V = {head.shape[0]} must be divisible by the size "
                     f"{model_size} of model_axis {model_axis!r}.")
  return model_size


def sharded_fused_ce_emo(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike | None = None,
    *,
    mesh: Mesh,
    data_axis: AxisName = "data",
    model_axis: AxisName = "model",
    where: ArrayLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    freeze_head: bool = False,
) -> FusedOutput:
  r""":func:`fused_ce_emo` with tokens split over ``data_axis`` and the vocabulary (rows of
  ``head`` and ``cost_embeddings``) over ``model_axis`` of ``mesh`` (a tensor-parallel head).

  Each device runs the chunked kernel on its ``[N / D, d]`` tokens and ``[V / M, d]`` head rows;
  the per-token partial statistics (running max, sum of exponentials, cost-weighted sum, target
  logit, and the target's cost embedding row) are combined over ``model_axis`` with one ``pmax``
  and ``psum`` of ``[N / D]`` vectors (and one ``[N / D, k]``). In the backward pass ``∂h`` is
  summed over ``model_axis`` and each ``∂W`` chunk over ``data_axis``. Neither the head nor any
  logits are all-gathered. Values and gradients equal the single-device :func:`fused_ce_emo` up
  to float32 summation order. Call under ``jax.jit``; inputs may already be sharded as
  ``P(data_axis, None)`` (hidden), ``P(model_axis, None)`` (head, cost embeddings),
  ``P(data_axis)`` (labels, where), otherwise they are resharded on entry.

  Args:
    hidden: ``[N, d]`` hidden states; ``N`` divisible by the size of ``data_axis``.
    head: ``[V, d]`` LM head; ``V`` divisible by the size of ``model_axis``.
    labels: ``[N]`` integer target ids (global vocabulary ids).
    cost_embeddings: optional ``[V, k]`` frozen EMO cost embeddings.
    mesh: the device mesh.
    data_axis: mesh axis name(s) splitting the tokens, or ``None`` (tokens replicated).
    model_axis: mesh axis name(s) splitting the vocabulary, or ``None`` (head replicated).
    where: optional boolean mask ``[N]``.
    chunk_size: vocabulary rows per chunk within each device's shard.
    softcap: logit soft-cap ``c`` or ``None`` (see :func:`fused_ce_emo`).
    temperature: logit temperature ``T``.
    label_smoothing: ``ε`` of the smoothed cross-entropy targets (``ε / V`` with the global V).
    freeze_head: if True, no gradient (and no ``∂W`` work) for ``head``.

  Returns:
    :class:`FusedOutput` of float32 ``[N]`` arrays sharded over ``data_axis``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import emoloss
    >>> from jax.sharding import AxisType
    >>> # One device here; the same code runs on a mesh of many.
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    >>> rng = np.random.default_rng(0)
    >>> hidden = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    >>> head = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    >>> labels = jnp.asarray(rng.integers(0, 32, 4))
    >>> run = jax.jit(lambda h, w, y: emoloss.sharded_fused_ce_emo(h, w, y, mesh=mesh, chunk_size=8))
    >>> out = run(hidden, head, labels)
    >>> print(jnp.allclose(out.nll, emoloss.fused_ce_emo(hidden, head, labels).nll, atol=1e-5))
    True

  References:
    Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (arXiv 2411.09009);
    Shoeybi et al., "Megatron-LM" (arXiv 1909.08053), vocabulary-parallel cross-entropy; Ren et
    al., "EMO" (arXiv 2310.04691).
  """
  hidden, head, labels, where = _check_inputs(hidden, head, labels, cost_embeddings, where,
                                              chunk_size)
  _check_mesh(hidden, head, mesh, data_axis, model_axis)
  options = core.make_options(softcap, temperature, label_smoothing)
  hidden, head, labels, cost_embeddings, rows = _prepare(
      hidden, head, labels, cost_embeddings, where, _check_freeze(freeze_head))
  config = _Config(chunk_size=int(chunk_size), mesh=mesh, data_axis=data_axis,
                   model_axis=model_axis, options=options)
  nll, emo, lse, entropy = _fused(config, hidden, head, labels, cost_embeddings)
  return _finish(nll, emo, lse, entropy, rows, labels.shape)


def fused_emo_ce_loss(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike,
    *,
    mode: int = 1,
    max_ratio: float | None = MODE1_MAX_RATIO,
    where: ArrayLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    freeze_head: bool = False,
) -> jax.Array:
  r"""Per-token published EMO + CE mix from hidden states (fused :func:`emoloss.emo_ce_loss`).

  .. math::
    \text{mode 1: } L = \tfrac12\big(\min(\mathrm{sg}(\mathrm{CE}/\mathrm{EMO}), r_{\max})
      \cdot \mathrm{EMO} + \mathrm{CE}\big), \quad
    \text{mode 2: } L = \mathrm{sg}(\mathrm{EMO}/\mathrm{CE})\,\mathrm{CE} + \mathrm{EMO}

  with CE and EMO from :func:`fused_ce_emo` and the mix (and its numerics: ratios clipped to
  ``[0, r_max]``, CE and EMO clamped at 0, no ``0/0``) from
  :func:`emoloss.losses.emo_ce_combination`. ``max_ratio = 3`` is the packaged loss (EMOLoss);
  ``None`` (uncapped) the paper's language-modelling runs (DRSY/EMO ``gpt2.py``, mode ``emo``).
  Reduce with a masked mean over tokens.

  Args:
    hidden: ``[..., d]`` hidden states.
    head: ``[V, d]`` LM head.
    labels: ``[...]`` integer target ids (not shifted here).
    cost_embeddings: ``[V, k]`` frozen cost embeddings (e.g. a copy of the pretrained head).
    mode: 1 ("more weight on MLE", default) or 2 ("more weight on EMO").
    max_ratio: cap of the mode-1 ratio (default 3.0), ``None`` for uncapped.
    where: optional boolean mask ``[...]``; masked tokens give exactly 0.
    chunk_size: vocabulary rows per chunk.
    softcap: logit soft-cap ``c`` or ``None``; CE and EMO both see ``softmax(z')``
      (see :func:`fused_ce_emo`).
    temperature: logit temperature ``T``.
    label_smoothing: ``ε``: CE is taken against the smoothed targets.
    freeze_head: if True, no gradient (and no ``∂W`` work) for ``head``.

  Returns:
    ``[...]`` float32 per-token loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import emoloss
    >>> rng = np.random.default_rng(0)
    >>> hidden = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    >>> head = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    >>> labels = jnp.asarray(rng.integers(0, 32, 4))
    >>> fused = emoloss.fused_emo_ce_loss(hidden, head, labels, head, chunk_size=8)
    >>> dense = emoloss.emo_ce_loss(hidden @ head.T, labels, head)
    >>> print(fused.shape, jnp.allclose(fused, dense, atol=1e-4))
    (4,) True

  References:
    Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language
    Modeling", ICLR 2024 (arXiv 2310.04691).
  """
  if cost_embeddings is None:
    raise ValueError("`cost_embeddings` is required for the EMO + CE loss.")
  out = fused_ce_emo(hidden, head, labels, cost_embeddings, where=where, chunk_size=chunk_size,
                     softcap=softcap, temperature=temperature, label_smoothing=label_smoothing,
                     freeze_head=freeze_head)
  assert out.emo is not None  # computed whenever cost_embeddings are given
  loss = emo_ce_combination(out.nll, out.emo, mode=mode, max_ratio=max_ratio)
  # The label rule, applied again on the output (the mix's clamps may drop a NaN).
  keep = _validation.check_where(where, np.shape(labels))
  _, invalid = _masking.sanitise_labels(jnp.asarray(labels), keep, np.shape(head)[0])
  return _masking.mask_loss(loss, _masking.Rows(keep=keep, invalid=invalid))
