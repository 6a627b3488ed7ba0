"""One-pass value and gradient of a reduced loss straight from hidden states (no recompute).

For a loss that is a masked mean or sum over tokens of a per-token function
``f(nll, emo, lse)`` (cross-entropy, the EMO + CE mix, z-loss, per-token stop-gradient weights),
the cotangent of each token's statistics is known as soon as the token's statistics are: it is
``w_n ∂f/∂(nll, emo, lse)`` with the reduction weight ``w_n`` (``1 / count`` for a masked mean,
``1`` for a sum, ``0`` for masked tokens). So the tokens are processed in chunks of ``n`` rows,
each chunk's logits ``[n, V]`` are computed once over the whole vocabulary, and the same pass
turns them into the chunk's loss, its ``∂h`` rows and its contribution to ``∂W`` (Liger's fused
linear cross-entropy schedule): ``3 N V d`` multiply-adds for CE and ``3 N V d + N V k`` for
CE + EMO (each chunk's cosine row ``ê_y · ê_v`` is formed once and serves both ``(p Ê) · ê_y`` and
the gradient), instead of the ``4 N V d (+ 2 N V k)`` of the recompute schedule of
:func:`emoloss.fused_ce_emo`. The per-token statistics, the logit options (soft-cap,
temperature, label smoothing, entropy) and the logit gradient from the per-token cotangents
``(g_nll, g_emo, g_lse, g_entropy)`` are those of :mod:`emoloss.fused.core`, shared with the
recompute schedule.

The custom VJP's forward pass computes the scalar loss and saves ``(∂h, ∂W)``; its backward pass
only scales them by the incoming scalar cotangent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values
from jax.sharding import Mesh

from emoloss.fused import chunked, core
from emoloss.fused.chunked import AxisName, _pmax, _psum, _vocab_offset
from emoloss.losses import _emo as emo_module

ArrayLike = jax.typing.ArrayLike
PerToken = Callable[[jax.Array, jax.Array | None, jax.Array], jax.Array]

# Tokens per chunk: each chunk holds one [n, V] float32 block (two with EMO: the cosine row), so
# the default keeps n * V near DEFAULT_CHUNK_ELEMENTS (32 MiB) and n within [MIN_TOKEN_CHUNK,
# MAX_TOKEN_CHUNK] (at least 64 tokens for the contraction of the ∂W matmul). Set on a shared
# 2-core CPU, where 128-256 tokens at V = 32768 were the fastest of 64-256 within the noise.
DEFAULT_CHUNK_ELEMENTS = 2 ** 23
MIN_TOKEN_CHUNK = 64
MAX_TOKEN_CHUNK = 512
# ∂W is accumulated in blocks of this many vocabulary rows: XLA's CPU dot cannot add into its
# output, so a whole-vocabulary ``acc + g_chunkᵀ h`` would hold a second [V, d] float32 buffer.
VOCAB_BLOCK = 4096
REDUCTIONS = ("mean", "sum")


def ce_per_token(nll, emo, lse):
  """Per-token function of plain cross-entropy: ``f(nll, emo, lse) = nll``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> print(emoloss.ce_per_token(jnp.array([0.5, 2.0]), None, jnp.array([3.0, 4.0])))
    [0.5 2. ]
  """
  del emo, lse
  return nll


class _Config(NamedTuple):
  """Static (hashable) settings of one one-pass call."""
  per_token: Callable  # f(nll, emo, lse, entropy, *consts), see _convert_per_token
  token_chunk_size: int
  vocab_block_size: int = VOCAB_BLOCK
  mesh: Mesh | None = None
  data_axis: AxisName = None
  model_axis: AxisName = None
  options: core.Options = core.Options(entropy=False)


def default_token_chunk_size(vocab_size: int) -> int:
  """Tokens per chunk for a vocabulary of ``vocab_size`` (see ``DEFAULT_CHUNK_ELEMENTS``).

  Examples:
    >>> import emoloss
    >>> print(emoloss.default_token_chunk_size(32000) > 0)
    True
  """
  return int(min(MAX_TOKEN_CHUNK, max(MIN_TOKEN_CHUNK, DEFAULT_CHUNK_ELEMENTS // vocab_size)))


def _token_chunks(num_tokens: int, chunk_size: int) -> tuple[int, int]:
  """``(num_chunks, rows)``: equal chunks of ``rows <= chunk_size`` covering ``num_tokens`` with
  fewer than ``num_chunks`` padding rows."""
  num_chunks = max(1, -(-num_tokens // chunk_size))
  return num_chunks, -(-num_tokens // num_chunks)


def _chunked_rows(x, num_chunks, rows):
  """``x [N, ...]`` zero-padded to ``num_chunks * rows`` rows, as ``[num_chunks, rows, ...]``."""
  pad = num_chunks * rows - x.shape[0]
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((num_chunks, rows) + x.shape[1:])


def _inverse_norms(cost_embeddings):
  """``1 / ||e_v||`` as float32 ``[V]`` (0 for a zero row, whose cosines are then 0)."""
  norms = jnp.linalg.norm(cost_embeddings.astype(jnp.float32), axis=-1)
  return jnp.where(norms > 0, 1.0 / jnp.maximum(norms, 1e-30), 0.0)


def _dot_rows(a, b):
  """``a bᵀ`` in float32 for ``a [n, d]``, ``b [V, d]`` (contracting the rows, no transpose)."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _add_head_grad(grad_head, grad_logits, h, block):
  """``grad_head + grad_logitsᵀ h`` (float32 ``[V, d]``), updated in place ``block`` rows at a
  time (equal blocks, the last moved back with its overlap zeroed, as in the fused path)."""
  vocab = grad_head.shape[0]
  contract = (((0,), (0,)), ((), ()))
  if block >= vocab:
    return grad_head + jax.lax.dot_general(grad_logits, h, contract,
                                           preferred_element_type=jnp.float32)
  starts, fresh = chunked._chunk_starts(vocab, block)
  overlaps = vocab % block != 0

  def step(acc, xs):
    start, first = xs
    g = jax.lax.dynamic_slice_in_dim(grad_logits, start, block, axis=1)
    if overlaps:
      g = jnp.where(chunked._fresh_columns(start, first, block)[None, :], g, 0)
    rows = jax.lax.dot_general(g, h, contract, preferred_element_type=jnp.float32)
    current = jax.lax.dynamic_slice_in_dim(acc, start, block, axis=0)
    return jax.lax.dynamic_update_slice_in_dim(acc, current + rows, start, axis=0), None

  grad_head, _ = jax.lax.scan(step, grad_head, (starts, fresh))
  return grad_head


def _apply_per_token(config: _Config, stats: core.Stats, consts):
  """``f(nll, emo, lse, entropy, *consts)`` on ``[n]`` statistics; ``nll``, ``emo`` and
  ``entropy`` clamped at 0 (so a ``sqrt`` or ``log`` in ``f`` never sees -1e-6)."""
  nn = core.nonnegative
  return config.per_token(nn(stats.nll), nn(stats.emo), stats.lse, nn(stats.entropy), *consts)


def _local_onepass(hidden, head, labels, weights, cost_embeddings, consts, config: _Config,
                   vocab_axis: AxisName, token_axis: AxisName, wants):
  """Per-device loss (summed over ``token_axis``), ``∂h`` (summed over ``vocab_axis``), ``∂W``
  (summed over ``token_axis``) and the cotangents of ``per_token``'s hoisted constants of
  ``Σ_n w_n f(nll_n, emo_n, lse_n, entropy_n)``, one token chunk at a time. ``wants`` (static)
  says which of ``∂h``, ``∂W`` and each constant's gradient to compute (``None`` otherwise)."""
  want_hidden, want_head, want_consts = wants
  num_tokens, dim = hidden.shape
  dtype = jnp.result_type(hidden.dtype, head.dtype)
  scale = core.scaling(config.options, dtype)
  hidden = core.scale_hidden(hidden.astype(dtype), scale)
  head_c = head.astype(dtype)
  local_vocab = head.shape[0]
  num_classes = local_vocab * chunked._axis_count(vocab_axis)
  offset = _vocab_offset(local_vocab, vocab_axis)
  columns = offset + jnp.arange(local_vocab, dtype=jnp.int32)
  options = config.options
  with_emo = cost_embeddings is not None
  if with_emo:  # cosines ê_y · ê_v = (ê_y · e_v) / ||e_v||, all float32: no normalised copy
    inv_norms = _inverse_norms(cost_embeddings)
    cost_f32 = cost_embeddings.astype(jnp.float32)
  column_sum = core.head_sum(head_c, options)  # label smoothing without a cap: Σ_v W_v, once
  num_chunks, rows = _token_chunks(num_tokens, config.token_chunk_size)
  xs = tuple(_chunked_rows(x, num_chunks, rows) for x in (hidden, labels, weights))

  def body(carry, chunk):
    total, grad_head, grad_consts = carry
    h, y, w = chunk
    logits, slope = core.transform(_dot_rows(h, head_c), options, scale)  # [n, V_local]
    target = columns[None, :] == y[:, None]
    row_max = _pmax(jnp.max(logits, axis=-1), vocab_axis)
    cosines = None
    if with_emo:
      target_unit = chunked._target_unit(cost_embeddings, y, offset, vocab_axis)
      cosines = _dot_rows(target_unit, cost_f32) * inv_norms[None, :]
    part, exps = core.partial_stats(logits, options, cosines, row_max=row_max)
    linear_sum = core.linear_logit_sum(h, column_sum, scale)
    if linear_sum is not None:
      part = part._replace(logit_sum=linear_sum)
    part = core.Partial(part.max, *(core.psum(x, vocab_axis) for x in part[1:]))
    target_logit = _psum(jnp.sum(jnp.where(target, logits, 0.0), axis=-1), vocab_axis)
    stats = core.finish(part, target_logit, num_classes, options)
    values, pullback = jax.vjp(lambda s, c: _apply_per_token(config, s, c), stats, consts)
    used = w != 0
    stats_bar, consts_bar = pullback(w.astype(values.dtype))
    mask = lambda g: None if g is None else jnp.where(used, g, 0.0).astype(jnp.float32)
    cot = core.Cotangents(mask(stats_bar.nll), mask(stats_bar.emo), mask(stats_bar.lse),
                          mask(stats_bar.entropy))
    total = total + jnp.sum(jnp.where(used, w * values.astype(jnp.float32), 0.0))
    grad_consts = [acc if acc is None else acc + g.astype(jnp.float32)
                   for acc, g in zip(grad_consts, consts_bar)]
    probs = exps / part.sum_exp[:, None]
    grad_logits = core.logit_grad(logits, slope, probs, target, stats, cot, num_classes,
                                  options, cosines).astype(dtype)
    grad_h = jnp.dot(grad_logits, head_c, preferred_element_type=jnp.float32) \
        if want_hidden else None
    if want_head:
      grad_head = _add_head_grad(grad_head, grad_logits, h, config.vocab_block_size)
    return (total, grad_head, grad_consts), grad_h

  init = (jnp.zeros((), jnp.float32),
          jnp.zeros((local_vocab, dim), jnp.float32) if want_head else None,
          [jnp.zeros(jnp.shape(c), jnp.float32) if want else None
           for c, want in zip(consts, want_consts)])
  (total, grad_head, grad_consts), grad_hidden = jax.lax.scan(body, init, xs)
  if want_hidden:
    grad_hidden = grad_hidden.reshape(num_chunks * rows, dim)[:num_tokens]
    grad_hidden = _psum(grad_hidden, vocab_axis) * scale.pre
  grad_head = None if grad_head is None else _psum(grad_head, token_axis)
  grad_consts = [None if g is None else _psum(g, token_axis) for g in grad_consts]
  return _psum(total, token_axis), grad_hidden, grad_head, tuple(grad_consts)


def _local_value(hidden, head, labels, weights, cost_embeddings, consts, config: _Config,
                 vocab_axis: AxisName, token_axis: AxisName):
  """The loss alone (no gradient wanted): the vocabulary-chunked forward pass of
  :func:`emoloss.fused_ce_emo` (``N V d`` FLOPs, ``O(N (d + k))`` memory), then ``per_token``
  on chunks of the same ``[n]`` shape as the gradient path, and the weighted sum."""
  fused_config = chunked._Config(chunk_size=chunked.DEFAULT_CHUNK_SIZE, options=config.options)
  stats = chunked._local_forward(hidden, head, labels, cost_embeddings, fused_config,
                                 vocab_axis)
  num_chunks, rows = _token_chunks(hidden.shape[0], config.token_chunk_size)
  pieces = jax.tree.map(lambda x: _chunked_rows(x, num_chunks, rows), stats)
  values = jax.vmap(lambda s: _apply_per_token(config, s, consts))(pieces).reshape(-1)
  weights = _chunked_rows(weights, num_chunks, rows).reshape(-1)
  total = jnp.sum(jnp.where(weights != 0, weights * values.astype(jnp.float32), 0.0))
  return _psum(total, token_axis)


# ----------------------------------------------------------------------------------------------
# The custom VJP: the forward pass computes the loss and the gradients; the backward pass scales.


def _specs(config: _Config):
  return chunked._specs(config)  # type: ignore[arg-type]  # (tokens, token rows, vocab rows)


def _sharded(config: _Config, local, args, out_specs):
  """``local(*args, config=, vocab_axis=, token_axis=)`` as a ``shard_map`` over the mesh (or
  directly on one device)."""
  if config.mesh is None:
    return local(*args, config=config, vocab_axis=None, token_axis=None)
  tokens, token_rows, vocab_rows = _specs(config)
  with_emo = args[4] is not None
  in_specs = (token_rows, vocab_rows, tokens, tokens, vocab_rows if with_emo else None,
              (jax.sharding.PartitionSpec(),) * len(args[5]))
  fn = jax.shard_map(
      functools.partial(local, config=config, vocab_axis=config.model_axis,
                        token_axis=config.data_axis),
      mesh=config.mesh, in_specs=in_specs, out_specs=out_specs,
      # No autodiff runs through this shard_map, and the outputs are made replicated over the
      # axes they do not vary along by the explicit psums in the local functions.
      check_vma=False,
  )
  return fn(*chunked._placed(config, args, in_specs))  # type: ignore[arg-type]  # same mesh field


def _onepass_all(config: _Config, wants, *args):
  _, token_rows, vocab_rows = _specs(config)
  scalar = jax.sharding.PartitionSpec()
  out_specs = (scalar, token_rows if wants[0] else None, vocab_rows if wants[1] else None,
               tuple(scalar if want else None for want in wants[2]))
  return _sharded(config, functools.partial(_local_onepass, wants=wants), args, out_specs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _onepass(config: _Config, hidden, head, labels, weights, cost_embeddings, consts):
  return _sharded(config, _local_value,
                  (hidden, head, labels, weights, cost_embeddings, consts),
                  jax.sharding.PartitionSpec())


def _onepass_fwd(config: _Config, hidden, head, labels, weights, cost_embeddings, consts):
  # symbolic_zeros: each argument comes as CustomVJPPrimal(value, perturbed); the gradient of an
  # unperturbed one (a frozen head, a constant of per_token not being differentiated) is skipped.
  wants = (hidden.perturbed, head.perturbed, tuple(c.perturbed for c in consts))
  args = custom_vjp_primal_tree_values(
      (hidden, head, labels, weights, cost_embeddings, consts))
  total, grad_hidden, grad_head, grad_consts = _onepass_all(config, wants, *args)
  hidden, head, consts = args[0], args[1], args[5]
  cast = lambda g, x: None if g is None else g.astype(x.dtype)
  return total, (cast(grad_hidden, hidden), cast(grad_head, head),
                 tuple(cast(g, c) for g, c in zip(grad_consts, consts)))


def _onepass_bwd(config: _Config, residuals, cotangent):
  del config
  grad_hidden, grad_head, grad_consts = residuals
  zero = isinstance(cotangent, SymbolicZero)

  def scale(g):
    if g is None or zero:
      return None
    return (cotangent.astype(jnp.float32) * g.astype(jnp.float32)).astype(g.dtype)
  return (scale(grad_hidden), scale(grad_head), None, None, None,
          tuple(scale(g) for g in grad_consts))


_onepass.defvjp(_onepass_fwd, _onepass_bwd, symbolic_zeros=True)


# ----------------------------------------------------------------------------------------------
# Public API.


def _positive_int(value, name: str, allow_none: bool = False) -> int | None:
  """A static positive Python or NumPy integer as ``int`` (``None`` passes when allowed)."""
  if value is None and allow_none:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
      or value < 1:
    raise ValueError(f"`{name}` must be a positive Python or NumPy int"
                     f"{' or None' if allow_none else ''} (got {value!r}).")
  return int(value)


def _check_options(per_token, reduction, token_chunk_size, vocab_block_size):
  if not callable(per_token):
    raise TypeError(f"`per_token` must be a function f(nll, emo, lse) (got {per_token!r}).")
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS} (got {reduction!r}).")
  return (_positive_int(token_chunk_size, "token_chunk_size", allow_none=True),
          _positive_int(vocab_block_size, "vocab_block_size"))


def _convert_per_token(per_token, rows: int, with_emo: bool, entropy: bool):
  """``per_token`` as ``f(nll, emo, lse, entropy, *consts)`` for ``[rows]`` inputs, and the
  values it closes over that may be differentiated (``jax.closure_convert``): these become
  explicit arguments of the custom VJP, so ``per_token`` may close over a value being
  differentiated (e.g. a learned weight) and gets its gradient."""
  def full(nll, emo, lse, ent):
    return per_token(nll, emo, lse, ent) if entropy else per_token(nll, emo, lse)
  x = jnp.zeros((rows,), jnp.float32)
  example = (x, x if with_emo else None, x, x if entropy else None)
  out = jax.eval_shape(full, *example)
  if not hasattr(out, "shape") or out.shape != (rows,):
    raise ValueError("`per_token` must return one value per token (an array of the shape of "
                     f"`nll`, here ({rows},)), got {out}.")
  converted, consts = jax.closure_convert(full, *example)
  return converted, tuple(consts)


def _call(hidden, head, labels, cost_embeddings, where, *, per_token, reduction,
          token_chunk_size, vocab_block_size, softcap, temperature, label_smoothing, entropy,
          freeze_head, mesh=None, data_axis=None, model_axis=None):
  """The shared body of :func:`onepass_loss` and :func:`sharded_onepass_loss`."""
  token_chunk_size, vocab_block_size = _check_options(per_token, reduction, token_chunk_size,
                                                      vocab_block_size)
  if not isinstance(entropy, (bool, np.bool_)):
    raise TypeError(f"`entropy` must be a bool (got {entropy!r}).")
  options = core.make_options(softcap, temperature, label_smoothing, entropy=bool(entropy))
  hidden, head, labels, where = chunked._check_inputs(hidden, head, labels, cost_embeddings,
                                                      where, token_chunk_size or 1)
  data_size = model_size = 1
  if mesh is not None:
    model_size = chunked._check_mesh(hidden, head, mesh, data_axis, model_axis)
    data_size = chunked._axis_size(mesh, data_axis)
  hidden, head, labels, cost_embeddings, rows = chunked._prepare(
      hidden, head, labels, cost_embeddings, where, chunked._check_freeze(freeze_head))
  weights = _weights(where, labels.shape, reduction)
  chunk = token_chunk_size or default_token_chunk_size(head.shape[0] // model_size)
  hidden = hidden.reshape(-1, hidden.shape[-1])
  _, chunk_rows = _token_chunks(hidden.shape[0] // data_size, chunk)
  converted, consts = _convert_per_token(per_token, chunk_rows, cost_embeddings is not None,
                                         options.entropy)
  config = _Config(per_token=converted, token_chunk_size=chunk,
                   vocab_block_size=vocab_block_size, mesh=mesh, data_axis=data_axis,
                   model_axis=model_axis, options=options)
  loss = _onepass(config, hidden, head, labels.reshape(-1), weights.reshape(-1),
                  cost_embeddings, consts)
  return _label_rule(loss, rows)


def _weights(where, shape, reduction):
  """Per-token reduction weights: ``where / max(count, 1)`` for a mean, ``where`` for a sum."""
  mask = jnp.ones(shape, jnp.float32) if where is None else where.astype(jnp.float32)
  if reduction == "sum":
    return mask
  return mask / jnp.maximum(jnp.sum(mask), 1.0)


def onepass_loss(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike | None = None,
    *,
    per_token: PerToken = ce_per_token,
    reduction: str = "mean",
    where: ArrayLike | None = None,
    token_chunk_size: int | None = None,
    vocab_block_size: int = VOCAB_BLOCK,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    entropy: bool = False,
    freeze_head: bool = False,
) -> jax.Array:
  r"""Scalar ``mean`` or ``sum`` over tokens of ``f(nll, emo, lse)`` of ``z = h Wᵀ``, its value
  and gradient computed in one pass over token chunks (nothing recomputed).

  .. math::
    L = \sum_n w_n\, f(\mathrm{nll}_n, \mathrm{EMO}_n, \mathrm{lse}_n), \quad
    w_n = \frac{[n \text{ unmasked}]}{\max(\#\text{unmasked}, 1)} \text{ (mean) or }
    [n \text{ unmasked}] \text{ (sum)}

  with ``lse = logsumexp(z)``, ``nll = lse - z_y`` and ``EMO = 1 - (softmax(z) Ê) · ê_y`` as in
  :func:`emoloss.fused_ce_emo`. Because the reduction is linear with fixed weights, each token's
  cotangent ``w_n ∂f/∂(nll, emo, lse)`` is known as soon as its statistics are, so the forward
  pass of the custom VJP computes, for each chunk of ``token_chunk_size`` tokens, the chunk's
  ``[n, V]`` logits once, its loss, its rows of ``∂h`` and its contribution to ``∂W``; the
  backward pass only scales them. Cost: ``3 N V d`` multiply-adds for CE (``+ N V k`` with EMO),
  the minimum, against ``4 N V d (+ 2 N V k)`` for :func:`emoloss.fused_ce_emo`'s recompute
  schedule. Memory: ``O(n V + N (d + k) + b d)`` temporaries (one or two ``[n, V]`` float32
  blocks, the ``∂h`` rows and a ``[b, d]`` block of ``∂W`` with ``b = vocab_block_size``; ``∂W``
  is accumulated in place in float32, which for a float32 head is the gradient output itself and
  for a bfloat16 head one extra ``[V, d]`` float32 buffer), against ``O(N (d + k) + N · chunk)``
  for ``fused_ce_emo``.

  Trade-off against :func:`emoloss.fused_ce_emo`: that function returns per-token outputs and
  accepts any cotangent for them (any downstream use, at ``4/3`` the FLOPs of CE); this one
  returns a single scalar of a fixed, elementwise ``per_token`` and reduction, and computes the
  gradient eagerly: when only the value is needed (no ``grad``) it runs the vocabulary-chunked
  forward pass alone; under ``grad``/``value_and_grad`` it does the whole work in the forward
  pass. Use it for the training loss; use ``fused_ce_emo`` for per-token outputs (metrics,
  non-linear reductions, higher-order derivatives, which this custom VJP does not support).

  ``per_token`` must act elementwise on ``[n]`` vectors (token ``i`` of the output depends only
  on token ``i`` of the inputs) and may use ``jax.lax.stop_gradient`` (per-token weights such as
  the EMO/CE ratio of :func:`emo_ce_per_token` or TaiLr's ``p_y``-based weight via
  ``exp(-nll)``); ``emo`` is ``None`` without ``cost_embeddings``. With ``entropy=True`` it is
  called as ``f(nll, emo, lse, entropy)`` with the per-token entropy ``-Σ p log p`` (an entropy
  bonus: ``per_token=lambda nll, emo, lse, entropy: nll - 0.01 * entropy``). It receives ``nll``,
  ``emo`` and ``entropy`` clamped at 0 on both the value-only and the gradient path (float32
  rounding makes them about -1e-6 for confident tokens), so ``sqrt`` or ``log`` of them is safe.
  It may close over arrays, including values being differentiated (a learned weight under
  ``jax.grad``): such values are passed to the custom VJP as explicit arguments
  (``jax.closure_convert``) and get their gradient, ``Σ_n w_n ∂f_n/∂a``.

  The options act on ``z = h Wᵀ`` in this order: ``softcap`` (``z' = c · tanh(z / c)``), then
  ``temperature`` (``z' / T``), then ``label_smoothing`` (``nll`` against the targets
  ``(1 - ε) onehot(y) + ε / V``); ``lse``, EMO and the entropy are of ``softmax(z')``, the
  distribution the model predicts. ``freeze_head=True`` (or simply not differentiating with
  respect to ``head``) skips the ``∂W`` accumulation, a third of the work, and gives the head a
  zero cotangent. Matmuls run in the promoted dtype of ``hidden`` and ``head`` with float32
  accumulation; statistics, the loss and the ``∂W`` accumulator are float32, and so are the
  normalised cost embedding rows whatever the embeddings' dtype. Labels are not shifted (pass
  ``hidden[:, :-1]``, ``tokens[:, 1:]`` for a causal LM) and must lie in ``[0, V)``.

  Args:
    hidden: ``[..., d]`` final hidden states (float32 or bfloat16).
    head: ``[V, d]`` LM head, ``z = hidden @ head.T``.
    labels: ``[...]`` integer target ids.
    cost_embeddings: optional ``[V, k]`` frozen EMO cost embeddings (no gradient).
    per_token: elementwise ``f(nll, emo, lse) -> [n]`` loss per token (default: ``nll``).
    reduction: ``"mean"`` over unmasked tokens (0 when all are masked) or ``"sum"``.
    where: optional boolean mask ``[...]``; masked tokens contribute nothing and get zero
      gradient whatever their content.
    token_chunk_size: tokens per chunk (static; a Python or NumPy integer); default
      :func:`default_token_chunk_size` of ``V``. Temporary memory grows as
      ``token_chunk_size * V``.
    vocab_block_size: rows of the ``∂W`` accumulator updated in place per step (static); a
      temporary ``[vocab_block_size, d]`` float32 block.
    softcap: ``c`` of the logit soft-cap ``c · tanh(z / c)`` (Gemma 2: 30.0), or ``None``.
    temperature: ``T`` dividing the (soft-capped) logits.
    label_smoothing: ``ε ∈ [0, 1]`` of the cross-entropy targets (EMO keeps the target ``y``).
    entropy: if True, ``per_token`` takes a fourth argument, the per-token entropy.
    freeze_head: if True, no gradient (and no ``∂W`` work) for ``head``.

  Returns:
    float32 scalar loss.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import optax
    >>> import emoloss
    >>> rng = np.random.default_rng(0)
    >>> hidden = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    >>> head = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    >>> labels = jnp.asarray(rng.integers(0, 32, 16))
    >>> loss, grads = jax.value_and_grad(emoloss.onepass_loss, argnums=(0, 1))(
    ...     hidden, head, labels, token_chunk_size=4)
    >>> ce = optax.losses.softmax_cross_entropy_with_integer_labels
    >>> dense = lambda h, w: ce(h @ w.T, labels).mean()  # the logits materialised
    >>> dense_loss, dense_grads = jax.value_and_grad(dense, argnums=(0, 1))(hidden, head)
    >>> print(jnp.allclose(loss, dense_loss, atol=1e-5))
    True
    >>> print(jnp.allclose(grads[1], dense_grads[1], atol=1e-5))
    True

  References:
    Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training" (arXiv 2410.10989),
    fused linear cross-entropy; Wijmans et al., "Cut Your Losses in Large-Vocabulary Language
    Models" (arXiv 2411.09009); Ren et al., "EMO" (arXiv 2310.04691).
  """
  return _call(hidden, head, labels, cost_embeddings, where, per_token=per_token,
               reduction=reduction, token_chunk_size=token_chunk_size,
               vocab_block_size=vocab_block_size, softcap=softcap, temperature=temperature,
               label_smoothing=label_smoothing, entropy=entropy, freeze_head=freeze_head)


def _label_rule(loss: jax.Array, rows) -> jax.Array:
  """The label rule of :func:`emoloss.check_label_range` for a reduced loss: NaN when any
  unmasked label lies outside ``[0, V)`` (selected on the output, where XLA keeps it)."""
  return jnp.where(jnp.any(rows.invalid), jnp.nan, loss)


def sharded_onepass_loss(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike | None = None,
    *,
    mesh: Mesh,
    data_axis: AxisName = "data",
    model_axis: AxisName = "model",
    per_token: PerToken = ce_per_token,
    reduction: str = "mean",
    where: ArrayLike | None = None,
    token_chunk_size: int | None = None,
    vocab_block_size: int = VOCAB_BLOCK,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    entropy: bool = False,
    freeze_head: bool = False,
) -> jax.Array:
  r""":func:`onepass_loss` with tokens split over ``data_axis`` and the vocabulary (rows of
  ``head`` and ``cost_embeddings``) over ``model_axis`` of ``mesh``.

  Each device runs the one-pass kernel on its ``[N / D, d]`` tokens and ``[V / M, d]`` head rows.
  Per token chunk, the row maximum is combined over ``model_axis`` with a ``pmax`` and the sum of
  exponentials, target logit and ``p Ê`` partial (``[n]`` vectors, and the ``[n, k]`` target
  cost rows) with ``psum``; every device then knows the chunk's statistics and cotangents and
  computes its own ``∂z`` block. At the end ``∂h`` is summed over ``model_axis``, ``∂W`` and the
  loss over ``data_axis`` (one ``psum`` each). Neither the head nor any logits are gathered.
  Call under ``jax.jit``; inputs are resharded on entry when needed (as
  :func:`emoloss.sharded_fused_ce_emo`).

  Args:
    hidden: ``[N, d]`` hidden states; ``N`` divisible by the size of ``data_axis``.
    head: ``[V, d]`` LM head; ``V`` divisible by the size of ``model_axis``.
    labels: ``[N]`` integer target ids (global vocabulary ids).
    cost_embeddings: optional ``[V, k]`` frozen EMO cost embeddings.
    mesh: the device mesh.
    data_axis: mesh axis name(s) splitting the tokens, or ``None``.
    model_axis: mesh axis name(s) splitting the vocabulary, or ``None``.
    per_token: elementwise ``f(nll, emo, lse)`` (see :func:`onepass_loss`).
    reduction: ``"mean"`` over unmasked tokens or ``"sum"``.
    where: optional boolean mask ``[N]``.
    token_chunk_size: tokens per chunk on each device (default from the local vocabulary).
    vocab_block_size: rows of the local ``∂W`` accumulator updated per step.
    softcap: logit soft-cap ``c`` or ``None`` (see :func:`onepass_loss`).
    temperature: logit temperature ``T``.
    label_smoothing: ``ε`` of the smoothed targets (``ε / V`` with the global ``V``).
    entropy: if True, ``per_token`` takes the per-token entropy as a fourth argument.
    freeze_head: if True, no gradient (and no ``∂W`` work) for ``head``.

  Returns:
    float32 scalar loss (replicated).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> import emoloss
    >>> from jax.sharding import AxisType
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    >>> rng = np.random.default_rng(0)
    >>> hidden = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    >>> head = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    >>> labels = jnp.asarray(rng.integers(0, 32, 16))
    >>> run = jax.jit(lambda h, w: emoloss.sharded_onepass_loss(h, w, labels, mesh=mesh))
    >>> print(jnp.allclose(run(hidden, head), emoloss.onepass_loss(hidden, head, labels), atol=1e-5))
    True

  References:
    Hsu et al., "Liger Kernel" (arXiv 2410.10989); Shoeybi et al., "Megatron-LM"
    (arXiv 1909.08053), vocabulary-parallel cross-entropy.
  """
  return _call(hidden, head, labels, cost_embeddings, where, per_token=per_token,
               reduction=reduction, token_chunk_size=token_chunk_size,
               vocab_block_size=vocab_block_size, softcap=softcap, temperature=temperature,
               label_smoothing=label_smoothing, entropy=entropy, freeze_head=freeze_head,
               mesh=mesh, data_axis=data_axis, model_axis=model_axis)


def emo_ce_per_token(mode: int = 1, max_ratio: float | None = 3.0) -> PerToken:
  r"""The published per-token EMO + CE mix as a ``per_token`` function for
  :func:`onepass_loss` (NaN-safe for confident tokens).

  * ``mode=1`` ("more weight on MLE"): ``½ (min(sg(CE / EMO), max_ratio) · EMO + CE)``
  * ``mode=2`` ("more weight on EMO"): ``sg(EMO / CE) · CE + EMO``

  The stop-gradient ratio is computed with ``jnp.where``/``jnp.maximum`` instead of a ``+ 1e-10``
  guard (which XLA folds away): when the denominator is 0 (a token predicted with ``p_y`` rounding
  to 1 gives ``EMO = CE = 0``) the ratio is 0 instead of ``0 / 0``; CE and EMO are clamped at 0
  (rounding can make them slightly negative). The cap ``max_ratio`` (mode 1) is that of the
  packaged loss; ``None`` leaves the ratio uncapped, as in the paper's language-modelling runs.

  Args:
    mode: 1 or 2.
    max_ratio: cap of the mode-1 ratio, or ``None``.

  Returns:
    ``f(nll, emo, lse) -> [n]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> f = emoloss.emo_ce_per_token(mode=1, max_ratio=3.0)
    >>> nll, emo = jnp.array([2.0, 0.5]), jnp.array([0.4, 0.1])
    >>> print(f(nll, emo, None))  # = emo_ce_combination(nll, emo)
    [1.6 0.4]

  References:
    Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language
    Modeling", ICLR 2024 (arXiv 2310.04691); code DRSY/EMO (PyPI ``EMOLoss``).
  """
  emo_module._check_mode(mode)
  emo_module._check_max_ratio(max_ratio)
  return functools.partial(_emo_ce_mix, mode=mode, max_ratio=max_ratio)


def _emo_ce_mix(nll, emo, lse, *, mode, max_ratio):
  """The per-token mix of :func:`emoloss.losses.emo_ce_combination` (same numerics)."""
  del lse
  if emo is None:
    raise ValueError("the EMO + CE mix needs `cost_embeddings`.")
  return emo_module.emo_ce_combination(nll, emo, mode=mode, max_ratio=max_ratio)
