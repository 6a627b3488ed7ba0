"""One-pass value and gradient of a reduced loss straight from hidden states (no recompute).

For a loss that is a masked mean or sum over tokens of a per-token function of the token's
statistics (cross-entropy, the EMO + CE mix, z-loss, per-token stop-gradient weights), the
cotangent of each token's statistics is known as soon as the token's statistics are: it is
``w_n ∂f/∂(nll, emo, lse, entropy)`` with the reduction weight ``w_n`` (``1 / count`` for a masked
mean, ``1`` for a sum, ``0`` for masked tokens). So the tokens are processed in chunks of ``n``
rows, each chunk's logits ``[n, V]`` are computed once over the whole vocabulary, and the same
pass turns them into the chunk's loss, its ``∂h`` rows and its contribution to ``∂W`` (Liger's
fused linear cross-entropy schedule): ``3 N V d`` multiply-adds for CE and ``3 N V d + N V k`` for
CE + EMO (each chunk's cosine row ``ê_y · ê_v`` is formed once and serves both ``(p Ê) · ê_y`` and
the gradient), instead of the ``4 N V d (+ 2 N V k)`` of the recompute schedule
(:mod:`emoloss.fused._chunked`). The per-block computation is :mod:`emoloss.fused._core`,
everything around the schedule :mod:`emoloss.fused._plumbing`.

The custom VJP's forward pass computes the scalar loss and saves ``(∂h, ∂W)``; its backward pass
only scales them by the incoming scalar cotangent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values
from jax.sharding import Mesh

from emoloss.fused import _chunked
from emoloss.fused import _core as core
from emoloss.fused import _plumbing as plumbing
from emoloss.fused._core import AxisName
from emoloss.fused._plumbing import VOCAB_BLOCK, Config, TokenStats
from emoloss.losses._emo import MODE1_MAX_RATIO, emo_ce_combination

ArrayLike = jax.typing.ArrayLike
PerToken = Callable[[TokenStats], jax.Array]

# Tokens per chunk: each chunk holds one [n, V] float32 block (two with EMO: the cosine row), so
# the default keeps n * V near DEFAULT_CHUNK_ELEMENTS (32 MiB) and n within [MIN_TOKEN_CHUNK,
# MAX_TOKEN_CHUNK] (at least 64 tokens for the contraction of the ∂W matmul). Set on a shared
# 2-core CPU, where 128-256 tokens at V = 32768 were the fastest of 64-256 within the noise.
DEFAULT_CHUNK_ELEMENTS = 2 ** 23
MIN_TOKEN_CHUNK = 64
MAX_TOKEN_CHUNK = 512
REDUCTIONS = ("mean", "sum")


def ce_per_token(stats: TokenStats) -> jax.Array:
  """Per-token function of plain cross-entropy for :func:`fused_loss`: ``stats.nll``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> stats = emoloss.TokenStats(nll=jnp.array([0.5, 2.0]), emo=None,
    ...                            lse=jnp.array([3.0, 4.0]), entropy=jnp.array([1.0, 1.0]))
    >>> print(emoloss.ce_per_token(stats))
    [0.5 2. ]
  """
  return stats.nll


def default_token_chunk_size(vocab_size: int) -> int:
  """Tokens per chunk for a vocabulary of ``vocab_size`` (see ``DEFAULT_CHUNK_ELEMENTS``)."""
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


def _add_head_grad(grad_head, grad_logits, h, block):
  """``grad_head + grad_logitsᵀ h`` (float32 ``[V, d]``), updated in place ``block`` rows at a
  time (equal blocks, the last moved back with its overlap zeroed, as in the recompute path)."""
  vocab = grad_head.shape[0]
  contract = (((0,), (0,)), ((), ()))
  if block >= vocab:
    return grad_head + jax.lax.dot_general(grad_logits, h, contract,
                                           preferred_element_type=jnp.float32)
  starts, fresh = core.chunk_starts(vocab, block)
  overlaps = vocab % block != 0

  def step(acc, xs):
    start, first = xs
    g = jax.lax.dynamic_slice_in_dim(grad_logits, start, block, axis=1)
    if overlaps:
      g = jnp.where(core.fresh_columns(start, first, block)[None, :], g, 0)
    rows = jax.lax.dot_general(g, h, contract, preferred_element_type=jnp.float32)
    current = jax.lax.dynamic_slice_in_dim(acc, start, block, axis=0)
    return jax.lax.dynamic_update_slice_in_dim(acc, current + rows, start, axis=0), None

  grad_head, _ = jax.lax.scan(step, grad_head, (starts, fresh))
  return grad_head


def _apply_per_token(config: Config, stats: core.Stats, consts):
  """``f(record, *consts)`` on ``[n]`` statistics; ``nll``, ``emo`` and ``entropy`` clamped at 0
  (so a ``sqrt`` or ``log`` in ``f`` never sees -1e-6); an entropy that ``f`` does not read is
  not computed (zeros stand in)."""
  nn = lambda x: jnp.maximum(x, 0.0)
  entropy = nn(stats.entropy) if stats.entropy is not None else jnp.zeros_like(stats.lse)
  record = TokenStats(nll=nn(stats.nll), emo=core.nonnegative(stats.emo), lse=stats.lse,
                      entropy=entropy)
  assert config.per_token is not None  # set by reduced_loss
  return config.per_token(record, *consts)


def _local_onepass(hidden, head, labels, weights, cost_embeddings, consts, *, config: Config,
                   vocab_axis: AxisName, token_axis: AxisName, wants):
  """Per-device loss (summed over ``token_axis``), ``∂h`` (summed over ``vocab_axis``), ``∂W``
  (summed over ``token_axis``) and the cotangents of ``per_token``'s hoisted constants of
  ``Σ_n w_n f(stats_n)``, one token chunk at a time. ``wants`` (static) says which of ``∂h``,
  ``∂W`` and each constant's gradient to compute (``None`` otherwise)."""
  want_hidden, want_head, want_consts = wants
  num_tokens, dim = hidden.shape
  options = config.options
  local = core.local_setup(hidden, head, options, vocab_axis)
  head_c = head.astype(local.dtype)
  local_vocab = head.shape[0]
  columns = local.offset + jnp.arange(local_vocab, dtype=jnp.int32)
  with_emo = cost_embeddings is not None
  if with_emo:  # the whole table in float32 once, and its inverse norms
    inverse = core.inverse_norms(cost_embeddings)
    cost_f32 = cost_embeddings.astype(jnp.float32)
  column_sum = core.head_sum(head_c, options)  # label smoothing without a cap: Σ_v W_v, once
  num_chunks, rows = _token_chunks(num_tokens, config.chunk_size)
  xs = tuple(_chunked_rows(x, num_chunks, rows) for x in (local.hidden, labels, weights))

  def body(carry, chunk):
    total, grad_head, grad_consts = carry
    h, y, w = chunk
    logits, slope = core.block_logits(local._replace(hidden=h), head_c, options)  # [n, V_local]
    target = columns[None, :] == y[:, None]
    row_max = core.pmax(jnp.max(logits, axis=-1), vocab_axis)
    cosines = None
    if with_emo:
      cosines = core.block_cosines(core.target_unit(cost_embeddings, y, local.offset, vocab_axis),
                                   cost_f32, inverse)
    part, exps = core.partial_stats(logits, options, cosines, row_max=row_max)
    part = core.with_linear_logit_sum(part, h, column_sum, local.scale)
    part = core.Partial(part.max, *(core.psum(x, vocab_axis) for x in part[1:]))
    target_logit = core.psum(jnp.sum(jnp.where(target, logits, 0.0), axis=-1), vocab_axis)
    stats = core.finish(part, target_logit, local.num_classes, options)
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
    grad_logits = core.logit_grad(logits, slope, probs, target, stats, cot, local.num_classes,
                                  options, cosines).astype(local.dtype)
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
    grad_hidden = core.psum(grad_hidden, vocab_axis) * local.scale.pre
  grad_head = None if grad_head is None else core.psum(grad_head, token_axis)
  grad_consts = [None if g is None else core.psum(g, token_axis) for g in grad_consts]
  return core.psum(total, token_axis), grad_hidden, grad_head, tuple(grad_consts)


def _local_value(hidden, head, labels, weights, cost_embeddings, consts, *, config: Config,
                 vocab_axis: AxisName, token_axis: AxisName):
  """The loss alone (no gradient wanted): the vocabulary-chunked forward pass of the recompute
  schedule (``N V d`` FLOPs, ``O(N (d + k))`` memory), then ``per_token`` on chunks of the same
  ``[n]`` shape as the gradient path, and the weighted sum."""
  stats = _chunked.local_forward(hidden, head, labels, cost_embeddings, config.options,
                                 _chunked.DEFAULT_CHUNK_SIZE, vocab_axis)
  num_chunks, rows = _token_chunks(hidden.shape[0], config.chunk_size)
  pieces = jax.tree.map(lambda x: _chunked_rows(x, num_chunks, rows), stats)
  values = jax.vmap(lambda s: _apply_per_token(config, s, consts))(pieces).reshape(-1)
  weights = _chunked_rows(weights, num_chunks, rows).reshape(-1)
  total = jnp.sum(jnp.where(weights != 0, weights * values.astype(jnp.float32), 0.0))
  return core.psum(total, token_axis)


# ----------------------------------------------------------------------------------------------
# The custom VJP: the forward pass computes the loss and the gradients; the backward pass scales.


def _in_specs(config: Config, args):
  spec = plumbing.specs(config)
  with_emo = args[4] is not None
  return (spec.token_rows, spec.vocab_rows, spec.tokens, spec.tokens,
          spec.vocab_rows if with_emo else None, (spec.scalar,) * len(args[5]))


def _onepass_all(config: Config, wants, *args):
  spec = plumbing.specs(config)
  out_specs = (spec.scalar, spec.token_rows if wants[0] else None,
               spec.vocab_rows if wants[1] else None,
               tuple(spec.scalar if want else None for want in wants[2]))
  return plumbing.on_devices(config, functools.partial(_local_onepass, config=config,
                                                       wants=wants),
                             args, _in_specs(config, args), out_specs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _onepass(config: Config, hidden, head, labels, weights, cost_embeddings, consts):
  args = (hidden, head, labels, weights, cost_embeddings, consts)
  return plumbing.on_devices(config, functools.partial(_local_value, config=config), args,
                             _in_specs(config, args), plumbing.specs(config).scalar)


def _onepass_fwd(config: Config, hidden, head, labels, weights, cost_embeddings, consts):
  # symbolic_zeros: each argument comes as CustomVJPPrimal(value, perturbed); the gradient of an
  # unperturbed one (a head under stop_gradient, a constant of per_token not being
  # differentiated) is skipped.
  wants = (hidden.perturbed, head.perturbed, tuple(c.perturbed for c in consts))
  args = custom_vjp_primal_tree_values(
      (hidden, head, labels, weights, cost_embeddings, consts))
  total, grad_hidden, grad_head, grad_consts = _onepass_all(config, wants, *args)
  hidden, head, consts = args[0], args[1], args[5]
  cast = lambda g, x: None if g is None else g.astype(x.dtype)
  return total, (cast(grad_hidden, hidden), cast(grad_head, head),
                 tuple(cast(g, c) for g, c in zip(grad_consts, consts)))


def _onepass_bwd(config: Config, residuals, cotangent):
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
# Entry points.


def _record_example(rows: int, with_emo: bool) -> TokenStats:
  x = jnp.zeros((rows,), jnp.float32)
  return TokenStats(nll=x, emo=x if with_emo else None, lse=x, entropy=x)


@functools.lru_cache(maxsize=256)
def _reads_entropy(per_token, rows: int, with_emo: bool) -> bool:
  """Whether ``per_token``'s output depends on ``stats.entropy`` (else it is not computed)."""
  example = _record_example(rows, with_emo)
  closed = jax.make_jaxpr(per_token)(example)
  entropy = closed.jaxpr.invars[len(jax.tree.leaves(example)) - 1]
  return any(entropy is v for eqn in closed.jaxpr.eqns for v in eqn.invars) \
      or any(entropy is v for v in closed.jaxpr.outvars)


def _convert_per_token(per_token, rows: int, with_emo: bool):
  """``(f(record, *consts), consts, reads_entropy)`` for ``[rows]`` inputs: the values
  ``per_token`` closes over that may be differentiated (``jax.closure_convert``) become explicit
  arguments of the custom VJP, so ``per_token`` may close over a value being differentiated
  (e.g. a learned weight) and gets its gradient."""
  if not callable(per_token):
    raise TypeError(f"`per_token` must be a function f(stats) (got {per_token!r}).")
  example = _record_example(rows, with_emo)
  out = jax.eval_shape(per_token, example)
  if not hasattr(out, "shape") or out.shape != (rows,):
    raise ValueError("`per_token` must return one value per token (an array of the shape of "
                     f"`stats.nll`, here ({rows},)), got {out}.")
  try:
    reads_entropy = _reads_entropy(per_token, rows, with_emo)
  except TypeError:  # an unhashable callable: not cached
    reads_entropy = _reads_entropy.__wrapped__(per_token, rows, with_emo)
  converted, consts = jax.closure_convert(per_token, example)
  return converted, tuple(consts), reads_entropy


def _weights(where, shape, reduction):
  """Per-token reduction weights: ``where / max(count, 1)`` for a mean, ``where`` for a sum."""
  mask = jnp.ones(shape, jnp.float32) if where is None else where.astype(jnp.float32)
  if reduction == "sum":
    return mask
  return mask / jnp.maximum(jnp.sum(mask), 1.0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _program(config: Config, reduction: str, hidden, head, labels, cost_embeddings, where,
             consts):
  """The whole call after the checks, compiled once per configuration and shapes (so eager calls
  reuse the compiled scan; under an outer ``jit`` it is inlined)."""
  hidden, labels, cost_embeddings, rows = plumbing.prepare(hidden, head, labels, cost_embeddings,
                                                           where)
  weights = _weights(where, labels.shape, reduction)
  loss = _onepass(config, hidden.reshape(-1, hidden.shape[-1]), head, labels.reshape(-1),
                  weights.reshape(-1), cost_embeddings, consts)
  return plumbing.reduced_label_rule(loss, rows)


def reduced_loss(hidden, head, labels, cost_embeddings, where, *, per_token, reduction,
                 chunk_size, softcap, temperature, label_smoothing, mesh, data_axis, model_axis,
                 vocab_block_size=VOCAB_BLOCK):
  """The body of :func:`fused_loss` (``vocab_block_size``: rows of the ``∂W`` accumulator updated
  per step, a temporary ``[vocab_block_size, d]`` float32 block)."""
  if reduction not in REDUCTIONS:
    raise ValueError(f"`reduction` must be one of {REDUCTIONS} (got {reduction!r}).")
  chunk = plumbing.positive_int(chunk_size, "chunk_size", allow_none=True)
  block = plumbing.positive_int(vocab_block_size, "vocab_block_size")
  options = core.make_options(softcap, temperature, label_smoothing)
  hidden, head, labels, where = plumbing.check_inputs(hidden, head, labels, cost_embeddings,
                                                      where)
  data_size, model_size = plumbing.check_mesh(hidden, head, mesh, data_axis, model_axis)
  if mesh is None:
    data_axis = model_axis = None
  chunk = chunk or default_token_chunk_size(head.shape[0] // model_size)
  num_tokens = int(jnp.size(labels)) // data_size
  _, chunk_rows = _token_chunks(num_tokens, chunk)
  converted, consts, reads_entropy = _convert_per_token(per_token, chunk_rows,
                                                        cost_embeddings is not None)
  config = Config(options=options._replace(entropy=reads_entropy), chunk_size=chunk, mesh=mesh,
                  data_axis=data_axis, model_axis=model_axis, per_token=converted,
                  vocab_block_size=block or VOCAB_BLOCK)
  if cost_embeddings is not None:
    cost_embeddings = jnp.asarray(cost_embeddings)
  return _program(config, reduction, hidden, head, labels, cost_embeddings, where, consts)


def fused_loss(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike | None = None,
    *,
    per_token: PerToken = ce_per_token,
    reduction: str = "mean",
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    mesh: Mesh | None = None,
    data_axis: AxisName = "data",
    model_axis: AxisName = "model",
) -> jax.Array:
  r"""Mean or sum over tokens of ``per_token(stats)`` for ``hidden [..., d]`` and a ``[V, d]``
  head (an ``nnx.Linear`` kernel ``[d, V]`` as ``kernel.T``), value and gradient in one pass.

  .. math::
    L = \sum_n w_n\, f(\mathrm{stats}_n), \quad
    w_n = \frac{[n \text{ unmasked}]}{\max(\#\text{unmasked}, 1)} \text{ (mean) or }
    [n \text{ unmasked}] \text{ (sum)}

  with ``stats`` the :class:`TokenStats` ``(nll, emo, lse, entropy)`` of
  :func:`emoloss.fused_token_stats`. Because the reduction is linear with fixed weights, each
  token's cotangent ``w_n ∂f/∂stats`` is known as soon as its statistics are, so the forward pass
  of the custom VJP computes, for each chunk of ``chunk_size`` tokens, the chunk's ``[n, V]``
  logits once, its loss, its rows of ``∂h`` and its contribution to ``∂W``; the backward pass
  only scales them. Cost: ``3 N V d`` multiply-adds for CE (``+ N V k`` with EMO), the minimum,
  against ``4 N V d (+ 2 N V k)`` for :func:`emoloss.fused_token_stats`'s recompute schedule.
  Memory: ``O(n V + N (d + k) + b d)`` temporaries (one or two ``[n, V]`` float32 blocks, the
  ``∂h`` rows and a ``[4096, d]`` block of ``∂W``; ``∂W`` is accumulated in place in float32,
  which for a float32 head is the gradient output itself and for a bfloat16 head one extra
  ``[V, d]`` float32 buffer).

  Trade-off against :func:`emoloss.fused_token_stats`: that function returns per-token outputs
  and accepts any cotangent for them (any downstream use, at ``4/3`` the FLOPs of CE); this one
  returns a single scalar of a fixed, elementwise ``per_token`` and reduction, and computes the
  gradient eagerly: when only the value is needed (no ``grad``) it runs the vocabulary-chunked
  forward pass alone; under ``grad``/``value_and_grad`` it does the whole work in the forward
  pass. Use it for the training loss; use ``fused_token_stats`` for per-token outputs (metrics,
  non-linear reductions, higher-order derivatives, which this custom VJP does not support).

  ``per_token`` receives one :class:`TokenStats` record of ``[n]`` vectors and must act
  elementwise (token ``i`` of the output depends only on token ``i`` of the inputs); it may use
  ``jax.lax.stop_gradient`` (per-token weights such as the EMO/CE ratio of
  :func:`emo_ce_per_token` or TaiLr's ``p_y``-based weight via ``exp(-stats.nll)``). ``emo`` is
  ``None`` without ``cost_embeddings``; the entropy is computed only when ``per_token`` reads it
  (an entropy bonus: ``per_token=lambda s: s.nll - 0.01 * s.entropy``). ``nll``, ``emo`` and
  ``entropy`` arrive clamped at 0 (float32 rounding makes them about -1e-6 for confident
  tokens), so ``sqrt`` or ``log`` of them is safe. It may close over arrays, including values
  being differentiated (a learned weight under ``jax.grad``): such values are passed to the
  custom VJP as explicit arguments (``jax.closure_convert``) and get their gradient,
  ``Σ_n w_n ∂f_n/∂a``.

  The options act on ``z = h Wᵀ`` as in :func:`emoloss.fused_token_stats`. Not differentiating
  with respect to ``head`` (``jax.lax.stop_gradient(head)`` for a frozen head) skips the ``∂W``
  accumulation, a third of the work. Matmuls run in the promoted dtype of ``hidden`` and
  ``head`` with float32 accumulation; statistics, the loss and the ``∂W`` accumulator are
  float32. Labels are not shifted (pass ``hidden[:, :-1]``, ``tokens[:, 1:]`` for a causal LM)
  and an unmasked label outside ``[0, V)`` makes the loss NaN. With ``mesh``, each device runs
  the one-pass kernel on its ``[N / D, d]`` tokens and ``[V / M, d]`` head rows; per token chunk
  the row maximum is combined over ``model_axis`` with a ``pmax`` and the partial statistics with
  ``psum``; at the end ``∂h`` is summed over ``model_axis``, ``∂W`` and the loss over
  ``data_axis``. Neither the head nor any logits are gathered.

  Args:
    hidden: ``[..., d]`` final hidden states (float32 or bfloat16); ``[N, d]`` with ``mesh``.
    head: ``[V, d]`` LM head, ``z = hidden @ head.T``.
    labels: ``[...]`` integer target ids.
    cost_embeddings: optional ``[V, k]`` frozen EMO cost embeddings (no gradient).
    per_token: elementwise ``f(stats: TokenStats) -> [n]`` loss per token (default:
      :func:`ce_per_token`, ``stats.nll``).
    reduction: ``"mean"`` over unmasked tokens (0 when all are masked) or ``"sum"``.
    where: optional boolean mask ``[...]``; masked tokens contribute nothing and get zero
      gradient whatever their content.
    chunk_size: tokens per chunk (static; default from ``V``: about ``2**23 / V`` within
      ``[64, 512]``; per device with ``mesh``). Temporary memory grows as ``chunk_size * V``.
    softcap: logit soft-cap ``c`` (``None`` or ``0``: no cap), see
      :func:`emoloss.fused_token_stats`.
    temperature: ``T`` dividing the (soft-capped) logits.
    label_smoothing: ``ε ∈ [0, 1]`` of the cross-entropy targets (EMO keeps the target ``y``).
    mesh: optional ``jax.sharding.Mesh``: run sharded over it (see above).
    data_axis: mesh axis name(s) splitting the tokens, or ``None``.
    model_axis: mesh axis name(s) splitting the vocabulary, or ``None``.

  Returns:
    float32 scalar loss (replicated on a mesh).

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
    >>> loss, grads = jax.value_and_grad(emoloss.fused_loss, argnums=(0, 1))(
    ...     hidden, head, labels, chunk_size=4)
    >>> ce = optax.losses.softmax_cross_entropy_with_integer_labels
    >>> dense = lambda h, w: ce(h @ w.T, labels).mean()  # the logits materialised
    >>> dense_loss, dense_grads = jax.value_and_grad(dense, argnums=(0, 1))(hidden, head)
    >>> print(jnp.allclose(loss, dense_loss, atol=1e-5))
    True
    >>> print(jnp.allclose(grads[1], dense_grads[1], atol=1e-5))
    True
    >>> bonus = emoloss.fused_loss(hidden, head, labels, per_token=lambda s: s.nll - 0.1 * s.entropy)
    >>> frozen = jax.grad(lambda h: emoloss.fused_loss(h, jax.lax.stop_gradient(head), labels))

  References:
    Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training" (arXiv 2410.10989),
    fused linear cross-entropy; Wijmans et al., "Cut Your Losses in Large-Vocabulary Language
    Models" (arXiv 2411.09009); Shoeybi et al., "Megatron-LM" (arXiv 1909.08053); Ren et al.,
    "EMO" (arXiv 2310.04691).
  """
  return reduced_loss(hidden, head, labels, cost_embeddings, where, per_token=per_token,
                      reduction=reduction, chunk_size=chunk_size, softcap=softcap,
                      temperature=temperature, label_smoothing=label_smoothing, mesh=mesh,
                      data_axis=data_axis, model_axis=model_axis)


def emo_ce_per_token(mode: int = 1, max_ratio: float | None = MODE1_MAX_RATIO) -> PerToken:
  r"""The published per-token EMO + CE mix as a ``per_token`` function of :func:`fused_loss`
  (NaN-safe for confident tokens).

  * ``mode=1`` ("more weight on MLE"): ``½ (min(sg(CE / EMO), max_ratio) · EMO + CE)``
  * ``mode=2`` ("more weight on EMO"): ``sg(EMO / CE) · CE + EMO``

  The numerics are those of :func:`emoloss.losses.emo_ce_combination` (ratios with
  ``jnp.where``/``jnp.maximum`` instead of a ``+ 1e-10`` guard, CE and EMO clamped at 0). The cap
  ``max_ratio`` (mode 1) is that of the packaged loss; ``None`` leaves the ratio uncapped, as in
  the paper's language-modelling runs.

  Args:
    mode: 1 or 2.
    max_ratio: cap of the mode-1 ratio, or ``None``.

  Returns:
    ``f(stats: TokenStats) -> [n]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> f = emoloss.emo_ce_per_token(mode=1, max_ratio=3.0)
    >>> nll, emo = jnp.array([2.0, 0.5]), jnp.array([0.4, 0.1])
    >>> print(f(emoloss.TokenStats(nll=nll, emo=emo, lse=nll, entropy=nll)))
    [1.6 0.4]

  References:
    Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language
    Modeling", ICLR 2024 (arXiv 2310.04691); code DRSY/EMO (PyPI ``EMOLoss``).
  """
  try:
    return _emo_ce_mix_for(mode, max_ratio)
  except TypeError:  # unhashable arguments: not cached
    return _emo_ce_mix_for.__wrapped__(mode, max_ratio)


@functools.lru_cache(maxsize=64)
def _emo_ce_mix_for(mode, max_ratio) -> PerToken:
  """One function per ``(mode, max_ratio)``, so that calls with ``emo_ce_per_token(...)`` written
  inline reuse one compiled program."""
  mix = functools.partial(_emo_ce_mix, mode=mode, max_ratio=max_ratio)
  x = jnp.zeros((1,), jnp.float32)
  jax.eval_shape(mix, TokenStats(nll=x, emo=x, lse=x, entropy=x))  # checks mode and max_ratio
  return mix


def _emo_ce_mix(stats: TokenStats, *, mode, max_ratio):
  """The per-token mix of :func:`emoloss.losses.emo_ce_combination` (same numerics)."""
  if stats.emo is None:
    raise ValueError("the EMO + CE mix needs `cost_embeddings`.")
  return emo_ce_combination(stats.nll, stats.emo, mode=mode, max_ratio=max_ratio)
