"""Cross-entropy and EMO straight from hidden states, chunked over the vocabulary.

The ``[N, V]`` logits ``z = h Wᵀ`` are never held: the forward pass scans over vocabulary chunks
with an online (running-max) log-sum-exp, and the backward pass recomputes each chunk's logits
(the Cut Cross-Entropy schedule). Per token, the forward pass keeps four running statistics over
the chunks seen so far, all relative to the running maximum ``m``:

* ``m = max_v z_v``, ``s = Σ_v exp(z_v - m)`` (so ``lse = m + log s``),
* ``t = Σ_v exp(z_v - m) (ê_v · ê_y)`` (so ``(p Ê) · ê_y = t / s`` and ``EMO = 1 - t / s``),
* ``z_y`` (the target logit, found by comparing column ids with the label, no gather).

Statistics of disjoint vocabulary ranges combine exactly (``m = max m_i``,
``s = Σ s_i exp(m_i - m)``, the same for ``t``; ``z_y = Σ z_y,i``), which is what lets a
tensor-parallel head combine its shards with one ``pmax`` and a few ``psum`` of ``[N]`` vectors.

The custom VJP takes a cotangent for each per-token output, so masks, reductions, z-loss and the
EMO/CE mixing stay outside in plain JAX. With ``c'_v = ê_v · ê_y`` and ``p = softmax(z)``:

  ``∂/∂z_v = g_nll (p_v - [v = y]) + g_lse p_v + g_emo p_v ((p Ê)·ê_y - c'_v)``,

accumulated into ``∂h`` (an ``[N, d]`` float32 carry) and emitted as ``∂W`` blocks chunk by chunk.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from emoloss import _checks
from emoloss.losses.emo import MODE1_MAX_RATIO, emo_ce_combination, normalize_embeddings

ArrayLike = jax.typing.ArrayLike
AxisName = str | tuple[str, ...] | None

# Vocabulary rows per chunk. On 2 CPU cores at N=2048, V=32768, d=k=512, chunks of 512-1024 make
# fused CE+EMO as fast as the naive path and 2048-4096 are 15% slower (cache size); temporary
# memory grows as N * chunk_size.
DEFAULT_CHUNK_SIZE = 1024


class FusedOutput(NamedTuple):
  """Per-token results of :func:`fused_ce_emo` (all float32, shape ``[...]`` of the labels).

  Attributes:
    nll: cross-entropy ``lse - z_y``.
    emo: EMO ``1 - (softmax(z) Ê) · ê_y``, or ``None`` when no cost embeddings were given.
    lse: ``logsumexp(z)`` (add ``z_loss_weight * lse**2`` for a z-loss).
  """
  nll: jax.Array
  emo: jax.Array | None
  lse: jax.Array


class _Config(NamedTuple):
  """Static (hashable) settings of one fused call."""
  chunk_size: int
  mesh: Mesh | None = None
  data_axis: AxisName = None
  model_axis: AxisName = None


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
  """Rows L2-normalised in float32 (a zero row stays zero), returned in the rows' dtype."""
  return normalize_embeddings(rows).astype(rows.dtype)


def _chunk_cosines(target_unit, cost_embeddings, start, size):
  """``ê_y · ê_v`` for the chunk's columns, float32 ``[N, size]``; the chunk's cost embedding
  rows are normalised here (``O(size k)``), so no normalised ``[V, k]`` copy is ever held."""
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
  """``ê_y [N, k]``: each device gathers the targets it holds; a ``psum`` completes the rows."""
  return _psum(_unit_rows(_held_rows(cost_embeddings, labels, offset)), vocab_axis)


def _target_logit(hidden, head, labels, offset, vocab_axis, dtype):
  """``z_y = h · W_y`` from one gathered row per token (``O(N d)``, float32 accumulation); a
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
                   vocab_axis: AxisName):
  """Per-token ``(nll, emo or None, lse, expected_cos)`` with the vocabulary split over
  ``vocab_axis``; ``expected_cos = (p Ê) · ê_y`` is kept for the backward pass."""
  num_tokens = hidden.shape[0]
  local_vocab = head.shape[0]
  size = min(config.chunk_size, local_vocab)
  overlaps = local_vocab % size != 0
  dtype = _compute_dtype(hidden.dtype, head.dtype)
  hidden = hidden.astype(dtype)
  offset = _vocab_offset(local_vocab, vocab_axis)
  with_emo = cost_embeddings is not None
  target_unit = _target_unit(cost_embeddings, labels, offset, vocab_axis) if with_emo else None

  def body(carry, start, fresh):
    running_max, sum_exp, cos_sum = carry
    logits, _ = _chunk_logits(hidden, head, start, size, dtype)
    if overlaps:
      logits = jnp.where(_fresh_columns(start, fresh, size)[None, :], logits, -jnp.inf)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=-1))
    rescale = jnp.exp(running_max - new_max)
    exps = jnp.exp(logits - new_max[:, None])
    sum_exp = rescale * sum_exp + jnp.sum(exps, axis=-1)
    if with_emo:
      cosines = _chunk_cosines(target_unit, cost_embeddings, start, size)
      cos_sum = rescale * cos_sum + jnp.sum(exps * cosines, axis=-1)
    return (new_max, sum_exp, cos_sum), None

  zeros = jnp.zeros((num_tokens,), jnp.float32)
  init = (jnp.full((num_tokens,), -jnp.inf, jnp.float32), zeros, zeros)
  (running_max, sum_exp, cos_sum), _ = _for_each_chunk(body, init, local_vocab, size)

  # Combine the vocabulary shards: one pmax, then psums of rescaled [N] partials.
  global_max = _pmax(running_max, vocab_axis)
  rescale = jnp.exp(running_max - global_max)
  sum_exp = _psum(sum_exp * rescale, vocab_axis)
  target_logit = _target_logit(hidden, head, labels, offset, vocab_axis, dtype)
  lse = global_max + jnp.log(sum_exp)
  nll = lse - target_logit
  if not with_emo:
    return nll, None, lse, None
  expected_cos = _psum(cos_sum * rescale, vocab_axis) / sum_exp
  return nll, 1.0 - expected_cos, lse, expected_cos


def _local_backward(hidden, head, labels, cost_embeddings, lse, expected_cos, cotangents,
                    config: _Config, vocab_axis: AxisName, token_axis: AxisName):
  """``(∂h, ∂W)`` for per-token cotangents ``(g_nll, g_emo or None, g_lse)``, recomputing each
  chunk's logits. ``∂h`` is summed over ``vocab_axis``, each ``∂W`` chunk over ``token_axis``."""
  g_nll, g_emo, g_lse = cotangents
  local_vocab = head.shape[0]
  size = min(config.chunk_size, local_vocab)
  overlaps = local_vocab % size != 0
  dtype = _compute_dtype(hidden.dtype, head.dtype)
  hidden_c = hidden.astype(dtype)
  offset = _vocab_offset(local_vocab, vocab_axis)
  with_emo = cost_embeddings is not None
  target_unit = _target_unit(cost_embeddings, labels, offset, vocab_axis) if with_emo else None
  g_prob = g_nll + g_lse
  if with_emo:
    g_prob = g_prob + g_emo * expected_cos
  g_prob = g_prob[:, None]

  def body(grad_hidden, start, fresh):
    logits, rows = _chunk_logits(hidden_c, head, start, size, dtype)
    probs = jnp.exp(logits - lse[:, None])
    # ∂/∂z_v = p_v (g_nll + g_lse + g_emo ((pÊ)·ê_y - ê_v·ê_y)) - g_nll [v = y]. The overlap of
    # a moved-back last chunk gets its true gradient too (it is rewritten into ∂W with the same
    # values) ...
    target = jnp.where(_is_target(offset, start, size, labels), g_nll[:, None], 0.0)
    if with_emo:
      cosines = _chunk_cosines(target_unit, cost_embeddings, start, size)
      grad_logits = probs * (g_prob - g_emo[:, None] * cosines) - target
    else:
      grad_logits = probs * g_prob - target
    grad_logits = grad_logits.astype(dtype)
    # ... but those rows must not add into ∂h twice.
    if overlaps:
      rows = jnp.where(_fresh_columns(start, fresh, size)[:, None], rows, 0)
    grad_hidden = grad_hidden + jnp.dot(grad_logits, rows, preferred_element_type=jnp.float32)
    grad_rows = jax.lax.dot_general(grad_logits, hidden_c, (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
    return grad_hidden, _psum(grad_rows, token_axis).astype(head.dtype)

  init = jnp.zeros(hidden.shape, jnp.float32)
  grad_hidden, grad_head = _for_each_chunk(body, init, local_vocab, size, head.shape[1:],
                                           head.dtype)
  grad_hidden = _psum(grad_hidden, vocab_axis).astype(hidden.dtype)
  return grad_hidden, grad_head


# ----------------------------------------------------------------------------------------------
# The custom VJP, on one device or as shard_maps over a mesh.


def _specs(config: _Config):
  tokens = PartitionSpec(config.data_axis)
  token_rows = PartitionSpec(config.data_axis, None)
  vocab_rows = PartitionSpec(config.model_axis, None)
  return tokens, token_rows, vocab_rows


def _placed(config: _Config, args, specs):
  """Reshards ``args`` to ``specs`` on the mesh (needed before ``shard_map`` when mesh axes are
  ``Explicit``, the default of ``jax.make_mesh``; a no-op when they already match)."""
  assert config.mesh is not None  # only the sharded path places its arguments
  if not any(kind == AxisType.Explicit for kind in config.mesh.axis_types):
    return args  # Auto axes: shard_map reshards its inputs itself.

  def place(x, spec):
    return x if x is None else jax.reshard(x, NamedSharding(config.mesh, spec))
  return jax.tree.map(place, args, specs, is_leaf=lambda x: x is None)


def _forward_all(config: _Config, hidden, head, labels, cost_embeddings):
  if config.mesh is None:
    return _local_forward(hidden, head, labels, cost_embeddings, config, None)
  tokens, token_rows, vocab_rows = _specs(config)
  with_emo = cost_embeddings is not None
  out_specs = (tokens, tokens if with_emo else None, tokens, tokens if with_emo else None)
  fn = jax.shard_map(
      functools.partial(_local_forward, config=config, vocab_axis=config.model_axis),
      mesh=config.mesh,
      in_specs=(token_rows, vocab_rows, tokens, vocab_rows if with_emo else None),
      out_specs=out_specs,
      # No autodiff runs through this shard_map (the VJP below is another shard_map), and every
      # output is made replicated over the model axis by explicit pmax/psum.
      check_vma=False,
  )
  in_specs = (token_rows, vocab_rows, tokens, vocab_rows if with_emo else None)
  return fn(*_placed(config, (hidden, head, labels, cost_embeddings), in_specs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(config: _Config, hidden, head, labels, cost_embeddings):
  nll, emo, lse, _ = _forward_all(config, hidden, head, labels, cost_embeddings)
  return nll, emo, lse


def _fused_fwd(config: _Config, hidden, head, labels, cost_embeddings):
  nll, emo, lse, expected_cos = _forward_all(config, hidden, head, labels, cost_embeddings)
  return (nll, emo, lse), (hidden, head, labels, cost_embeddings, lse, expected_cos)


def _fused_bwd(config: _Config, residuals, cotangents):
  hidden, head, labels, cost_embeddings, lse, expected_cos = residuals
  g_nll, g_emo, g_lse = (None if g is None else g.astype(jnp.float32) for g in cotangents)
  if cost_embeddings is not None and g_emo is None:  # pragma: no cover (JAX passes zeros, not None)
    g_emo = jnp.zeros_like(lse)
  if config.mesh is None:
    grad_hidden, grad_head = _local_backward(
        hidden, head, labels, cost_embeddings, lse, expected_cos, (g_nll, g_emo, g_lse), config,
        None, None)
  else:
    tokens, token_rows, vocab_rows = _specs(config)
    with_emo = cost_embeddings is not None
    in_specs = (token_rows, vocab_rows, tokens, vocab_rows if with_emo else None, tokens,
                tokens if with_emo else None, (tokens, tokens if with_emo else None, tokens))
    fn = jax.shard_map(
        functools.partial(_local_backward, config=config, vocab_axis=config.model_axis,
                          token_axis=config.data_axis),
        mesh=config.mesh, in_specs=in_specs, out_specs=(token_rows, vocab_rows),
        check_vma=False,
    )
    args = (hidden, head, labels, cost_embeddings, lse, expected_cos, (g_nll, g_emo, g_lse))
    grad_hidden, grad_head = fn(*_placed(config, args, in_specs))
  # No cotangent for the integer labels nor the (stop-gradient) cost embeddings.
  return grad_hidden, grad_head, None, None


_fused.defvjp(_fused_fwd, _fused_bwd)


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
  where = _checks.check_where(where, hidden.shape[:-1])
  if cost_embeddings is not None:
    if np.ndim(cost_embeddings) != 2 or np.shape(cost_embeddings)[0] != head.shape[0]:
      raise ValueError(
          f"`cost_embeddings` must have shape [V, k] with V = head.shape[0] = {head.shape[0]} "
          f"(got {np.shape(cost_embeddings)}).")
    _checks.check_logits(cost_embeddings, name="cost_embeddings", min_rank=2)
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
      or chunk_size < 1:
    raise ValueError(f"`chunk_size` must be a positive Python int (got {chunk_size!r}).")
  return hidden, head, labels, where


def _prepare(hidden, head, labels, cost_embeddings, where):
  """Masked tokens get zero hidden states and label 0 (nothing NaN can come from them); so do
  unmasked labels outside ``[0, V)``, whose outputs :func:`_finish` sets to NaN (the label rule
  of :func:`emoloss.check_label_range`). The cost embeddings are held constant (they are
  normalised chunk by chunk inside the kernel). Returns ``(hidden, labels, cost, rows)``."""
  hidden = _checks.mask_inputs(hidden, where)
  labels, invalid = _checks.sanitise_labels(labels, where, head.shape[0])
  if cost_embeddings is not None:
    cost_embeddings = jax.lax.stop_gradient(jnp.asarray(cost_embeddings))
  return hidden, labels, cost_embeddings, _checks.Rows(keep=where, invalid=invalid)


def _finish(nll, emo, lse, rows: _checks.Rows, batch_shape) -> FusedOutput:
  """Masks and reshapes the outputs; ``nll`` and ``emo`` are clamped at 0, which they are
  mathematically (in float32 ``lse - z_y`` can round to -2e-6 for a confident token)."""
  mask = lambda x: _checks.mask_loss(x, rows).reshape(batch_shape)
  clamp = lambda x: jnp.maximum(x, 0.0)
  return FusedOutput(nll=mask(clamp(nll)), emo=None if emo is None else mask(clamp(emo)),
                     lse=mask(lse))


def fused_ce_emo(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike | None = None,
    *,
    where: ArrayLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> FusedOutput:
  r"""Per-token cross-entropy, EMO and log-sum-exp of ``z = h Wᵀ`` without materialising ``z``.

  .. math::
    \mathrm{lse} = \log \sum_v e^{z_v}, \quad \mathrm{nll} = \mathrm{lse} - z_y, \quad
    \mathrm{EMO} = 1 - (\mathrm{softmax}(z)\,\hat E) \cdot \hat e_y

  equal (values and gradients with respect to ``hidden`` and ``head``) to materialising the
  logits and calling ``optax.losses.softmax_cross_entropy_with_integer_labels`` and
  :func:`emoloss.losses.emo_loss`. The vocabulary is processed in chunks of ``chunk_size`` rows
  of ``head`` with an online log-sum-exp; the backward pass recomputes each chunk's logits, so
  memory beyond the inputs and gradients is ``O(N (d + k) + N · chunk_size)`` instead of
  ``O(N V)``, for one extra ``N V d`` matmul (Cut Cross-Entropy's trade). ``V`` need not be a
  multiple of ``chunk_size``.

  Each output has its own cotangent in the custom VJP, so any weighting, masked mean, z-loss
  (``lse**2``) or per-token mix (:func:`emoloss.losses.emo_ce_combination`) can be applied to the
  outputs in plain JAX. Matmuls run in the promoted dtype of their operands with float32
  accumulation (bfloat16 ``hidden`` and ``head`` give bfloat16 matmuls); all statistics are
  float32. Labels are not shifted: for a causal LM pass ``hidden[:, :-1]`` and ``tokens[:, 1:]``.
  An unmasked label outside ``[0, V)`` gives NaN outputs for its token (the label rule of
  :func:`emoloss.check_label_range`); masked tokens are inert whatever their label.

  Args:
    hidden: ``[..., d]`` final hidden states (float32 or bfloat16).
    head: ``[V, d]`` LM head (output embedding), ``z = hidden @ head.T``.
    labels: ``[...]`` integer target ids.
    cost_embeddings: optional ``[V, k]`` frozen embeddings defining the EMO cost
      ``1 - cos(e_i, e_j)`` (normalised here, no gradient). EMO is computed only when given.
    where: optional boolean mask ``[...]``; masked tokens output 0 and get zero gradient.
    chunk_size: vocabulary rows per chunk (static). Peak temporary memory grows as
      ``N * chunk_size``.

  Returns:
    :class:`FusedOutput` ``(nll, emo, lse)`` of float32 ``[...]`` arrays; ``emo`` is ``None``
    without ``cost_embeddings``.

  Examples:
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

  References:
    Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", ICLR 2025
    (arXiv 2411.09009); Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive
    Language Modeling", ICLR 2024 (arXiv 2310.04691); Milakov & Gimelshein, "Online normalizer
    calculation for softmax" (arXiv 1805.02867).
  """
  hidden, head, labels, where = _check_inputs(hidden, head, labels, cost_embeddings, where,
                                              chunk_size)
  batch_shape = labels.shape
  hidden, labels, cost_embeddings, rows = _prepare(hidden, head, labels, cost_embeddings, where)
  flat_hidden = hidden.reshape(-1, hidden.shape[-1])
  config = _Config(chunk_size=int(chunk_size))
  nll, emo, lse = _fused(config, flat_hidden, head, labels.reshape(-1), cost_embeddings)
  flat_rows = jax.tree.map(lambda x: x.reshape(-1), rows)
  return _finish(nll, emo, lse, flat_rows, batch_shape)


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
  hidden, labels, cost_embeddings, rows = _prepare(hidden, head, labels, cost_embeddings, where)
  config = _Config(chunk_size=int(chunk_size), mesh=mesh, data_axis=data_axis,
                   model_axis=model_axis)
  nll, emo, lse = _fused(config, hidden, head, labels, cost_embeddings)
  return _finish(nll, emo, lse, rows, labels.shape)


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
  out = fused_ce_emo(hidden, head, labels, cost_embeddings, where=where, chunk_size=chunk_size)
  assert out.emo is not None  # computed whenever cost_embeddings are given
  loss = emo_ce_combination(out.nll, out.emo, mode=mode, max_ratio=max_ratio)
  # The label rule, applied again on the output (the mix's clamps may drop a NaN).
  keep = _checks.check_where(where, np.shape(labels))
  _, invalid = _checks.sanitise_labels(jnp.asarray(labels), keep, np.shape(head)[0])
  return _checks.mask_loss(loss, _checks.Rows(keep=keep, invalid=invalid))
