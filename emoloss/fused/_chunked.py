"""Cross-entropy and EMO straight from hidden states, chunked over the vocabulary.

The ``[N, V]`` logits ``z = h Wᵀ`` are never held: the forward pass scans over vocabulary chunks
with an online (running-max) log-sum-exp, and the backward pass recomputes each chunk's logits
(the Cut Cross-Entropy schedule). Per token, the forward pass keeps running statistics over the
chunks seen so far, relative to the running maximum (:class:`emoloss.fused._core.Partial`);
statistics of disjoint vocabulary ranges combine exactly, which is what lets a tensor-parallel
head combine its shards with one ``pmax`` and a few ``psum`` of ``[N]`` vectors.

The custom VJP takes a cotangent for each per-token output, so masks, reductions, z-loss and the
EMO/CE mixing stay outside in plain JAX; the logit gradient from those cotangents is
:func:`emoloss.fused._core.logit_grad`, accumulated into ``∂h`` (an ``[N, d]`` float32 carry) and
emitted as ``∂W`` blocks chunk by chunk. Everything around the schedule (checks, masks, specs,
the ``shard_map``) is :mod:`emoloss.fused._plumbing`; the per-block computation is
:mod:`emoloss.fused._core`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values
from jax.sharding import Mesh

from emoloss.fused import _core as core
from emoloss.fused import _plumbing as plumbing
from emoloss.fused._core import AxisName
from emoloss.fused._plumbing import Config, TokenStats

ArrayLike = jax.typing.ArrayLike

# Vocabulary rows per chunk. On 2 CPU cores at N=2048, V=32768, d=k=512, chunks of 512-1024 make
# fused CE+EMO as fast as the naive path and 2048-4096 are 15% slower (cache size); temporary
# memory grows as N * chunk_size.
DEFAULT_CHUNK_SIZE = 1024


def _for_each_chunk(body, carry, vocab_size: int, chunk_size: int, block_shape=None,
                    block_dtype=None):
  """Runs ``body(carry, start, fresh) -> (carry, block)`` over ``[0, vocab_size)`` in one
  ``lax.scan`` of equal chunks (:func:`emoloss.fused._core.chunk_starts`); the body slices its
  inputs with ``dynamic_slice``, so nothing of size ``V`` is copied or padded.

  When ``block_shape`` is given, each chunk returns a ``[chunk_size, *block_shape]`` block (its
  rows' values, correct for all rows including the overlap) and these are assembled into a
  ``[vocab_size, *block_shape]`` array: emitted by the scan when the chunks tile ``V`` exactly (a
  free reshape), else written in place into a carried buffer, where the moved-back last chunk
  rewrites its overlap with the same values. Returns ``(carry, blocks or None)``.
  """
  starts, fresh = core.chunk_starts(vocab_size, chunk_size)
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


def _rows(table, start, size):
  return jax.lax.dynamic_slice_in_dim(table, start, size, axis=0)


def _cosine_setup(cost_embeddings, labels, local: core.Local, vocab_axis: AxisName):
  """``(ê_y, 1 / ||e_v||)`` for the EMO cosines of every chunk, or ``None`` without EMO."""
  if cost_embeddings is None:
    return None
  return (core.target_unit(cost_embeddings, labels, local.offset, vocab_axis),
          core.inverse_norms(cost_embeddings))


def _chunk_cosines(cosine_setup, cost_embeddings, start, size):
  if cosine_setup is None:
    return None
  unit_targets, inverse = cosine_setup
  return core.block_cosines(unit_targets, _rows(cost_embeddings, start, size),
                            _rows(inverse, start, size))


def _target_logit(local: core.Local, head, labels, vocab_axis: AxisName):
  """Raw ``z_y = (h · pre) · W_y`` from one gathered row per token (``O(N d)``, float32
  accumulation); a ``psum`` of ``[N]`` completes it across vocabulary shards."""
  rows = core.held_rows(head, labels, local.offset).astype(local.dtype).astype(jnp.float32)
  return core.psum(jnp.sum(local.hidden.astype(jnp.float32) * rows, axis=-1), vocab_axis)


def local_forward(hidden, head, labels, cost_embeddings, options: core.Options, chunk_size: int,
                  vocab_axis: AxisName) -> core.Stats:
  """Per-token :class:`emoloss.fused._core.Stats` with the vocabulary split over
  ``vocab_axis``: the chunks' statistics merged online, then over the devices."""
  local = core.local_setup(hidden, head, options, vocab_axis)
  local_vocab = head.shape[0]
  size = min(chunk_size, local_vocab)
  overlaps = local_vocab % size != 0
  cosine_setup = _cosine_setup(cost_embeddings, labels, local, vocab_axis)

  def body(carry, start, fresh):
    logits, _ = core.block_logits(local, _rows(head, start, size), options)
    cosines = _chunk_cosines(cosine_setup, cost_embeddings, start, size)
    valid = core.fresh_columns(start, fresh, size) if overlaps else None
    chunk, _ = core.partial_stats(logits, options, cosines, valid)
    return core.merge(carry, chunk), None

  init = core.empty(hidden.shape[0], options, cost_embeddings is not None)
  stats, _ = _for_each_chunk(body, init, local_vocab, size)
  stats = core.with_linear_logit_sum(
      stats, local.hidden, core.head_sum(head.astype(local.dtype), options), local.scale)
  stats = core.merge_over(stats, vocab_axis)
  target_logit, _ = core.transform(_target_logit(local, head, labels, vocab_axis), options,
                                   local.scale)
  return core.finish(stats, target_logit, local.num_classes, options)


def _local_forward(hidden, head, labels, cost_embeddings, *, config: Config,
                   vocab_axis: AxisName, token_axis: AxisName) -> core.Stats:
  del token_axis  # the forward pass combines nothing over tokens
  return local_forward(hidden, head, labels, cost_embeddings, config.options, config.chunk_size,
                       vocab_axis)


def _local_backward(hidden, head, labels, cost_embeddings, stats: core.Stats,
                    cot: core.Cotangents, *, wants, config: Config, vocab_axis: AxisName,
                    token_axis: AxisName):
  """``(∂h or None, ∂W or None)`` for per-token cotangents ``cot``, recomputing each chunk's
  logits (:func:`emoloss.fused._core.logit_grad`). ``∂h`` is summed over ``vocab_axis``, each
  ``∂W`` chunk over ``token_axis``; ``wants = (hidden?, head?)`` skips an unneeded matmul."""
  want_hidden, want_head = wants
  options = config.options
  local = core.local_setup(hidden, head, options, vocab_axis)
  local_vocab = head.shape[0]
  size = min(config.chunk_size, local_vocab)
  overlaps = local_vocab % size != 0
  cosine_setup = _cosine_setup(cost_embeddings if cot.emo is not None else None, labels, local,
                               vocab_axis)

  def body(grad_hidden, start, fresh):
    rows = _rows(head, start, size).astype(local.dtype)
    logits, slope = core.block_logits(local, rows, options)
    probs = jnp.exp(logits - stats.lse[:, None])
    cosines = _chunk_cosines(cosine_setup, cost_embeddings, start, size)
    target = (local.offset + start + jnp.arange(size, dtype=jnp.int32))[None, :] \
        == labels[:, None]
    # The overlap of a moved-back last chunk gets its true gradient too (it is rewritten into ∂W
    # with the same values) ...
    grad_logits = core.logit_grad(logits, slope, probs, target, stats, cot, local.num_classes,
                                  options, cosines).astype(local.dtype)
    if want_hidden:
      if overlaps:  # ... but those rows must not add into ∂h twice.
        rows = jnp.where(core.fresh_columns(start, fresh, size)[:, None], rows, 0)
      grad_hidden = grad_hidden + jnp.dot(grad_logits, rows, preferred_element_type=jnp.float32)
    if not want_head:
      return grad_hidden, None
    grad_rows = jax.lax.dot_general(grad_logits, local.hidden, (((0,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
    return grad_hidden, core.psum(grad_rows, token_axis).astype(head.dtype)

  init = jnp.zeros(hidden.shape if want_hidden else (0,), jnp.float32)
  grad_hidden, grad_head = _for_each_chunk(
      body, init, local_vocab, size, head.shape[1:] if want_head else None, head.dtype)
  if want_hidden:
    grad_hidden = (core.psum(grad_hidden, vocab_axis) * local.scale.pre).astype(hidden.dtype)
  else:
    grad_hidden = None
  return grad_hidden, grad_head


# ----------------------------------------------------------------------------------------------
# The custom VJP, on one device or as shard_maps over a mesh.


def _stats_specs(config: Config, with_emo: bool) -> core.Stats:
  """Partition specs of the per-token :class:`emoloss.fused._core.Stats` (``None`` for absent
  fields)."""
  tokens = plumbing.specs(config).tokens
  emo = tokens if with_emo else None
  return core.Stats._make((tokens, emo, tokens, tokens if config.options.entropy else None, emo))


def _forward_all(config: Config, hidden, head, labels, cost_embeddings) -> core.Stats:
  spec = plumbing.specs(config)
  with_emo = cost_embeddings is not None
  in_specs = (spec.token_rows, spec.vocab_rows, spec.tokens, spec.vocab_rows if with_emo else None)
  return plumbing.on_devices(config, functools.partial(_local_forward, config=config),
                             (hidden, head, labels, cost_embeddings), in_specs,
                             _stats_specs(config, with_emo))


def _outputs(stats: core.Stats):
  """The per-token outputs ``(nll, emo, lse, entropy)`` (not yet clamped)."""
  return stats.nll, stats.emo, stats.lse, stats.entropy


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(config: Config, hidden, head, labels, cost_embeddings):
  return _outputs(_forward_all(config, hidden, head, labels, cost_embeddings))


def _fused_fwd(config: Config, hidden, head, labels, cost_embeddings):
  # symbolic_zeros: each argument comes as CustomVJPPrimal(value, perturbed). An unperturbed
  # hidden or head (under jax.lax.stop_gradient, or jax.grad with respect to the other one) needs
  # no gradient matmul; the choice reaches the backward pass in the residuals' structure.
  wants = tuple(jnp.zeros((0,)) if x.perturbed else None for x in (hidden, head))
  hidden, head, labels, cost_embeddings = custom_vjp_primal_tree_values(
      (hidden, head, labels, cost_embeddings))
  stats = _forward_all(config, hidden, head, labels, cost_embeddings)
  return _outputs(stats), (hidden, head, labels, cost_embeddings, stats, wants)


def _symbolic_zero_to_none(g):
  """A cotangent as float32, or ``None`` for a symbolic zero (an unused output)."""
  return None if g is None or isinstance(g, SymbolicZero) else g.astype(jnp.float32)


def _fused_bwd(config: Config, residuals, cotangents):
  hidden, head, labels, cost_embeddings, stats, wants = residuals
  cot = core.Cotangents(*(_symbolic_zero_to_none(g) for g in cotangents))
  wants = tuple(w is not None for w in wants)
  if cost_embeddings is None:
    cot = cot._replace(emo=None)
  spec = plumbing.specs(config)
  with_emo = cost_embeddings is not None
  in_specs = (spec.token_rows, spec.vocab_rows, spec.tokens,
              spec.vocab_rows if with_emo else None, _stats_specs(config, with_emo),
              core.Cotangents._make(plumbing.spec_like(tuple(cot), spec.tokens)))
  out_specs = (spec.token_rows if wants[0] else None, spec.vocab_rows if wants[1] else None)
  grad_hidden, grad_head = plumbing.on_devices(
      config, functools.partial(_local_backward, wants=wants, config=config),
      (hidden, head, labels, cost_embeddings, stats, cot), in_specs, out_specs)
  # No cotangent for the integer labels nor the (stop-gradient) cost embeddings.
  return grad_hidden, grad_head, None, None


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnums=0)
def _program(config: Config, hidden, head, labels, cost_embeddings, where) -> TokenStats:
  """The whole call after the checks, compiled once per configuration and shapes (so eager calls
  reuse the compiled scan; under an outer ``jit`` it is inlined)."""
  batch_shape = labels.shape
  hidden, labels, cost_embeddings, rows = plumbing.prepare(hidden, head, labels, cost_embeddings,
                                                           where)
  outputs = _fused(config, hidden.reshape(-1, hidden.shape[-1]), head, labels.reshape(-1),
                   cost_embeddings)
  flat_rows = jax.tree.map(lambda x: x.reshape(-1), rows)
  return plumbing.token_outputs(outputs, flat_rows, batch_shape)


def fused_token_stats(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike | None = None,
    *,
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
    mesh: Mesh | None = None,
    data_axis: AxisName = "data",
    model_axis: AxisName = "model",
) -> TokenStats:
  r"""Per-token CE, EMO, log-sum-exp and entropy of ``hidden [..., d] @ head.T`` for a ``[V, d]``
  head (an ``nnx.Linear`` kernel ``[d, V]`` is passed as ``kernel.T``), without the logits.

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
  pass, and neither does the gradient of an argument that is not differentiated: for a frozen
  head pass ``jax.lax.stop_gradient(head)`` (its cotangent is zero and the ``∂W`` matmul, a third
  of the backward work, is skipped). Matmuls run in the promoted dtype of their operands with
  float32 accumulation (bfloat16 ``hidden`` and ``head`` give bfloat16 matmuls); all statistics
  are float32, and the normalised cost embedding rows are kept in float32 whatever the
  embeddings' dtype. Labels are not shifted: for a causal LM pass ``hidden[:, :-1]`` and
  ``tokens[:, 1:]``. An unmasked label outside ``[0, V)`` gives NaN outputs for its token (the
  label rule of :func:`emoloss.check_label_range`); masked tokens are inert whatever their label.
  ``nll``, ``emo`` and ``entropy`` are clamped at 0 (float32 rounding can make them -1e-6). The
  computation after the argument checks is compiled once per configuration and shapes, so eager
  calls do not recompile it.

  With ``mesh``, tokens are split over ``data_axis`` and the vocabulary (rows of ``head`` and
  ``cost_embeddings``) over ``model_axis`` (a tensor-parallel head): each device runs the
  chunked kernel on its ``[N / D, d]`` tokens and ``[V / M, d]`` head rows, the per-token
  partial statistics are combined over ``model_axis`` with one ``pmax`` and ``psum`` of
  ``[N / D]`` vectors (and one ``[N / D, k]``); in the backward pass ``∂h`` is summed over
  ``model_axis`` and each ``∂W`` chunk over ``data_axis``. Neither the head nor any logits are
  all-gathered. Inputs may already be sharded as ``P(data_axis, None)`` (hidden),
  ``P(model_axis, None)`` (head, cost embeddings), ``P(data_axis)`` (labels, where), otherwise
  they are resharded on entry.

  Args:
    hidden: ``[..., d]`` final hidden states (float32 or bfloat16); ``[N, d]`` with ``mesh``,
      ``N`` divisible by the size of ``data_axis``.
    head: ``[V, d]`` LM head (output embedding), ``z = hidden @ head.T``; ``V`` divisible by the
      size of ``model_axis`` with ``mesh``.
    labels: ``[...]`` integer target ids (global vocabulary ids).
    cost_embeddings: optional ``[V, k]`` frozen embeddings defining the EMO cost
      ``1 - cos(e_i, e_j)`` (normalised here, no gradient). EMO is computed only when given.
    where: optional boolean mask ``[...]``; masked tokens output 0 and get zero gradient.
    chunk_size: vocabulary rows per chunk (static; default 1024; per device with ``mesh``).
      Peak temporary memory grows as ``N * chunk_size``.
    softcap: ``c`` of the logit soft-cap ``c · tanh(z / c)`` (Gemma 2: 30.0); ``None`` or ``0``
      for no cap (MaxText's ``final_logits_soft_cap = 0.0``).
    temperature: ``T`` dividing the (soft-capped) logits.
    label_smoothing: ``ε ∈ [0, 1]`` of the cross-entropy targets ``(1 - ε) onehot + ε / V``
      (EMO keeps the target ``y``).
    mesh: optional ``jax.sharding.Mesh``: run sharded over it (see above).
    data_axis: mesh axis name(s) splitting the tokens, or ``None`` (tokens replicated).
    model_axis: mesh axis name(s) splitting the vocabulary, or ``None`` (head replicated).

  ``softcap``, ``temperature`` and ``label_smoothing`` select the compiled program: Python
  floats or concrete 0-d arrays, not traced values.

  Returns:
    :class:`TokenStats` ``(nll, emo, lse, entropy)`` of float32 ``[...]`` arrays; ``emo`` is
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
    >>> out = emoloss.fused_token_stats(hidden, head, labels, cost_embeddings=head, chunk_size=8)
    >>> ce = optax.losses.softmax_cross_entropy_with_integer_labels(hidden @ head.T, labels)
    >>> emo = emoloss.emo_loss(hidden @ head.T, labels, head)
    >>> print(jnp.allclose(out.nll, ce, atol=1e-4), jnp.allclose(out.emo, emo, atol=1e-5))
    True True
    >>> capped = emoloss.fused_token_stats(hidden, head, labels, softcap=3.0, chunk_size=8)
    >>> z = 3.0 * jnp.tanh(hidden @ head.T / 3.0)  # the soft-capped logits
    >>> p = jax.nn.softmax(z)
    >>> entropy = -jnp.sum(p * jnp.log(p), axis=-1)
    >>> print(jnp.allclose(capped.entropy, entropy, atol=1e-5))
    True

    A Flax ``nnx.Linear(d, V)`` output layer stores its kernel as ``[d, V]`` (it computes
    ``x @ kernel``): pass its transpose, ``layer.kernel[...].T``. With a kernel laid out so:

    >>> kernel = head.T  # [d, V], the layout of nnx.Linear(8, 32, use_bias=False).kernel
    >>> out = emoloss.fused_token_stats(hidden, kernel.T, labels)
    >>> ce = optax.losses.softmax_cross_entropy_with_integer_labels(hidden @ kernel, labels)
    >>> print(jnp.allclose(out.nll, ce, atol=1e-5))
    True

    On a mesh (one device here; the same code runs on a mesh of many):

    >>> from jax.sharding import AxisType
    >>> mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    >>> run = jax.jit(lambda h, w, y: emoloss.fused_token_stats(h, w, y, mesh=mesh, chunk_size=8))
    >>> single = emoloss.fused_token_stats(hidden, head, labels, chunk_size=8)
    >>> print(jnp.allclose(run(hidden, head, labels).nll, single.nll, atol=1e-5))
    True

  References:
    Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", ICLR 2025
    (arXiv 2411.09009); Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive
    Language Modeling", ICLR 2024 (arXiv 2310.04691); Milakov & Gimelshein, "Online normalizer
    calculation for softmax" (arXiv 1805.02867); Shoeybi et al., "Megatron-LM" (arXiv
    1909.08053), vocabulary-parallel cross-entropy; Gemma Team, "Gemma 2" (arXiv 2408.00118),
    logit soft-capping; Szegedy et al., "Rethinking the Inception Architecture" (arXiv
    1512.00567), label smoothing.
  """
  hidden, head, labels, where = plumbing.check_inputs(hidden, head, labels, cost_embeddings,
                                                      where)
  chunk = plumbing.positive_int(chunk_size, "chunk_size", allow_none=True)
  options = core.make_options(softcap, temperature, label_smoothing)
  plumbing.check_mesh(hidden, head, mesh, data_axis, model_axis)
  if mesh is None:
    data_axis = model_axis = None
  config = Config(options=options, chunk_size=chunk or DEFAULT_CHUNK_SIZE, mesh=mesh,
                  data_axis=data_axis, model_axis=model_axis)
  if cost_embeddings is not None:
    cost_embeddings = jnp.asarray(cost_embeddings)
  return _program(config, hidden, head, labels, cost_embeddings, where)
