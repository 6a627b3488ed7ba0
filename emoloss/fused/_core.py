"""The one place that knows what a fused option does: logits to per-token statistics, and
per-token cotangents back to the logits' gradient. Both schedules use it on their blocks of logits
(:mod:`emoloss.fused.chunked`: a vocabulary chunk of all tokens, with online merging;
:mod:`emoloss.fused.onepass`: a token chunk over the whole local vocabulary).

**Logit transform** (:func:`transform`), applied to the raw logits ``z = h Wᵀ`` in this order:

* soft-cap ``c``: ``z ↦ c · tanh(z / c)`` (Gemma 2 uses ``c = 30``),
* temperature ``T``: ``z ↦ z / T``,

so ``z' = c tanh(z / c) / T`` with ``dz'/dz = (1 - tanh²(z / c)) / T`` (``1 / T`` without cap).
The linear factor (``1 / T``, or ``1 / c`` inside the cap) is applied to the hidden states before
the matmul when they are float32 (:class:`Scaling`), so a temperature costs no pass over the
logits; without a cap the mean logit of label smoothing is ``h · Σ_v W_v`` (:func:`head_sum`),
``O(n d)`` instead of a pass over the block.

**Per-token statistics** of ``p = softmax(z')`` (:class:`Partial` over a block of columns,
relative to the block's maximum ``m``; :func:`merge` and :func:`merge_over` combine disjoint blocks
exactly, :func:`finish` turns them into outputs):

* ``lse = m + log s`` with ``s = Σ_v e^{z'_v - m}``,
* ``nll = lse - (1 - ε) z'_y - ε mean_v z'_v`` (cross-entropy against the label-smoothed targets
  ``q = (1 - ε) onehot(y) + ε / V``; ``ε = 0``: ``lse - z'_y``),
* ``EMO = 1 - (p Ê)·ê_y = 1 - t / s`` with ``t = Σ_v e^{z'_v - m} (ê_v · ê_y)``,
* ``entropy = -Σ p log p = lse - Σ p z' = log s - u / s`` with ``u = Σ_v e^{z'_v - m} (z'_v - m)``.

**Logit gradient** (:func:`logit_grad`) for cotangents ``(g_nll, g_emo, g_lse, g_ent)`` of the
per-token outputs, with ``c'_v = ê_v · ê_y``:

  ``∂/∂z'_v = p_v [g_nll + g_lse + g_emo ((p Ê)·ê_y - c'_v) - g_ent (log p_v + H)] - g_nll q_v``

then ``∂/∂z_v = ∂/∂z'_v · dz'/dz_v``. A cotangent that is ``None`` (a symbolic zero: the output
is unused) drops its term at trace time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from emoloss.losses._emo import normalize_embeddings

AxisName = str | tuple[str, ...] | None


class Options(NamedTuple):
  """Static (hashable) options of a fused call (see the module docstring for the formulas).

  Attributes:
    softcap: ``c`` of ``c · tanh(z / c)``, or ``None`` (no cap).
    temperature: ``T`` dividing the (capped) logits.
    label_smoothing: ``ε`` of the targets ``(1 - ε) onehot + ε / V``.
    entropy: whether per-token entropy is wanted (its statistic is accumulated).
  """
  softcap: float | None = None
  temperature: float = 1.0
  label_smoothing: float = 0.0
  entropy: bool = True


def _static_number(value, name: str) -> float:
  """A static real number as ``float``: a Python or NumPy scalar, or a concrete 0-d array
  (``jnp.float32(0.7)``, ``np.array(0.7)``). A traced value is refused with the remedy."""
  if isinstance(value, jax.core.Tracer):
    raise TypeError(f"`{name}` is a traced value ({value}); it selects the compiled program, so "
                    "it must be a concrete number: pass a Python float from outside `jit` (a "
                    "closure, `functools.partial`, or `static_argnames`).")
  dtype = getattr(value, "dtype", None)
  if isinstance(value, (bool, np.bool_)) or (dtype is not None and (
      np.ndim(value) != 0 or not (jnp.issubdtype(dtype, jnp.integer)
                                  or jnp.issubdtype(dtype, jnp.floating)))) \
      or (dtype is None and not isinstance(value, (int, float))):
    raise TypeError(f"`{name}` must be a real number: a Python float or a 0-d array (got "
                    f"{value!r}).")
  value = float(value)
  if not math.isfinite(value):
    raise ValueError(f"`{name}` must be finite (got {value}).")
  return value


def _finite_in_float32(*values: float) -> bool:
  with np.errstate(over="ignore"):
    return all(np.isfinite(np.float32(v)) for v in values)


def make_options(softcap, temperature, label_smoothing, entropy: bool = True) -> Options:
  """Checks the options and returns them as :class:`Options` (static floats).

  Each may be a Python or NumPy scalar or a concrete 0-d array; ``softcap`` ``None`` or ``0``
  means no cap (MaxText's ``final_logits_soft_cap = 0.0``). ``softcap`` and ``temperature`` must
  be positive with ``c``, ``T``, their reciprocals and ``c / T`` finite in float32 (``1e-40``
  would turn every output into NaN through ``1 / c = inf``)."""
  if softcap is not None:
    softcap = _static_number(softcap, "softcap")
    if softcap == 0.0:
      softcap = None
    elif softcap < 0:
      raise ValueError(f"`softcap` must be positive, 0 or None (no cap) (got {softcap}).")
  temperature = _static_number(temperature, "temperature")
  if temperature <= 0:
    raise ValueError(f"`temperature` must be positive (got {temperature}).")
  for name, value in (("softcap", softcap), ("temperature", temperature)):
    if value is not None and not _finite_in_float32(value, 1.0 / value):
      raise ValueError(f"`{name}` = {value} is out of float32 range: it and its reciprocal "
                       "must be finite in float32.")
  if softcap is not None and not _finite_in_float32(softcap / temperature):
    raise ValueError(f"`softcap / temperature` = {softcap / temperature} overflows float32.")
  label_smoothing = _static_number(label_smoothing, "label_smoothing")
  if not 0.0 <= label_smoothing <= 1.0:
    raise ValueError(f"`label_smoothing` must lie in [0, 1] (got {label_smoothing}).")
  return Options(softcap=softcap, temperature=temperature, label_smoothing=label_smoothing,
                 entropy=bool(entropy))


class Scaling(NamedTuple):
  """Where the linear part of the transform, ``z ↦ s z`` with ``s = 1 / T`` (no cap) or
  ``1 / c`` (cap), is applied: ``pre`` multiplies the hidden states before the matmul (an
  ``[n, d]`` operation instead of ``[n, V]``; float32 only, where it changes ``z`` by rounding
  alone), ``post`` the raw logits (bfloat16 inputs, whose scaled copy would round). ``∂h`` of
  the scaled hidden states is multiplied by ``pre``."""
  pre: float
  post: float


NO_SCALING = Scaling(1.0, 1.0)


def scaling(options: Options, dtype) -> Scaling:
  """:class:`Scaling` of the options for matmul inputs of ``dtype``."""
  s = 1.0 / (options.temperature if options.softcap is None else options.softcap)
  if s == 1.0:
    return NO_SCALING
  return Scaling(s, 1.0) if jnp.dtype(dtype) == jnp.float32 else Scaling(1.0, s)


def scale_hidden(hidden: jax.Array, scale: Scaling) -> jax.Array:
  """The hidden states times ``scale.pre`` (the matmul then yields ``z · pre``)."""
  return hidden if scale.pre == 1.0 else hidden * jnp.asarray(scale.pre, hidden.dtype)


def transform(raw: jax.Array, options: Options, scale: Scaling = NO_SCALING
              ) -> tuple[jax.Array, jax.Array | None]:
  """``(z', dz'/draw)`` for float32 raw logits ``raw = (h · pre) Wᵀ``: with ``u = raw · post``
  (so ``u = z / c`` with a cap, ``z / T`` without), ``z' = u`` or ``z' = (c / T) tanh(u)``.
  The derivative is ``None`` when it is 1, a scalar ``post`` without cap, else the array
  ``post · (c / T)(1 - tanh²(u))``, computed from ``z'`` so that only ``z'`` stays live."""
  u = raw if scale.post == 1.0 else raw * scale.post
  if options.softcap is None:
    return u, (None if scale.post == 1.0 else jnp.float32(scale.post))
  ratio = options.softcap / options.temperature
  logits = jnp.tanh(u) * ratio
  return logits, (ratio - logits * logits * (1.0 / ratio)) * scale.post


class Partial(NamedTuple):
  """Per-token statistics ``[n]`` of a block of columns, relative to its maximum ``max`` (see the
  module docstring); ``None`` fields are not tracked."""
  max: jax.Array
  sum_exp: jax.Array
  cos_sum: jax.Array | None
  ent_sum: jax.Array | None
  logit_sum: jax.Array | None


def sums_logits(options: Options) -> bool:
  """Whether a block's ``Σ_v z'_v`` must be summed over its columns: only with label smoothing
  and a soft-cap. Without a cap ``z'`` is linear in ``h`` and :func:`linear_logit_sum` gives the
  sum over the whole vocabulary from ``h · Σ_v W_v`` in ``O(n d)``."""
  return bool(options.label_smoothing) and options.softcap is not None


def head_sum(head: jax.Array, options: Options) -> jax.Array | None:
  """``Σ_v W_v`` (float32 ``[d]``) when :func:`linear_logit_sum` will need it, else ``None``."""
  if not options.label_smoothing or sums_logits(options):
    return None
  return jnp.sum(head.astype(jnp.float32), axis=0)


def linear_logit_sum(hidden: jax.Array, column_sum: jax.Array | None, scale: Scaling
                     ) -> jax.Array | None:
  """``Σ_v z'_v`` for uncapped logits, ``(h · pre) · Σ_v W_v · post`` (float32 ``[n]``) from
  :func:`head_sum` (``None`` passes through)."""
  if column_sum is None:
    return None
  return jnp.dot(hidden.astype(jnp.float32), column_sum) * scale.post


def empty(num_tokens: int, options: Options, with_emo: bool) -> Partial:
  """Statistics of no column (the initial carry of an online merge)."""
  zeros = jnp.zeros((num_tokens,), jnp.float32)
  return Partial(max=jnp.full((num_tokens,), -jnp.inf, jnp.float32), sum_exp=zeros,
                 cos_sum=zeros if with_emo else None,
                 ent_sum=zeros if options.entropy else None,
                 logit_sum=zeros if sums_logits(options) else None)


def partial_stats(logits: jax.Array, options: Options, cosines: jax.Array | None = None,
                  valid: jax.Array | None = None, row_max: jax.Array | None = None
                  ) -> tuple[Partial, jax.Array]:
  """Statistics of a block of transformed logits ``z' [n, c]`` and its ``e^{z' - m} [n, c]``.

  ``cosines [n, c]`` are ``ê_y · ê_v`` (EMO), ``valid [c]`` masks columns out of every sum (the
  overlap of a moved-back last chunk), ``row_max [n]`` replaces the block's own maximum (a
  maximum already combined over devices, so that the exponentials are final)."""
  masked = logits if valid is None else jnp.where(valid[None, :], logits, -jnp.inf)
  if row_max is None:
    row_max = jnp.max(masked, axis=-1)
  exps = jnp.exp(masked - row_max[:, None])
  total = lambda x: jnp.sum(x, axis=-1)
  return Partial(
      max=row_max, sum_exp=total(exps),
      cos_sum=None if cosines is None else total(exps * cosines),
      ent_sum=total(exps * (logits - row_max[:, None])) if options.entropy else None,
      logit_sum=(total(logits if valid is None else jnp.where(valid[None, :], logits, 0.0))
                 if sums_logits(options) else None),
  ), exps


def _rescaled(p: Partial, new_max: jax.Array) -> Partial:
  """``p`` re-expressed relative to ``new_max >= p.max``: sums scale by ``r = e^{max - new}``;
  ``u = Σ e^{z - m}(z - m)`` becomes ``r (u + (m - new) s)`` (0 for an empty ``p``, whose
  ``m - new`` is ``-inf``)."""
  shift = p.max - new_max
  r = jnp.exp(shift)
  scale = lambda x: None if x is None else r * x
  ent = None
  if p.ent_sum is not None:
    ent = jnp.where(r > 0, r * (p.ent_sum + jnp.where(r > 0, shift, 0.0) * p.sum_exp), 0.0)
  return Partial(max=new_max, sum_exp=r * p.sum_exp, cos_sum=scale(p.cos_sum), ent_sum=ent,
                 logit_sum=p.logit_sum)


def _add(a: Partial, b: Partial) -> Partial:
  plus = lambda x, y: None if x is None else x + y
  return Partial(a.max, a.sum_exp + b.sum_exp, plus(a.cos_sum, b.cos_sum),
                 plus(a.ent_sum, b.ent_sum), plus(a.logit_sum, b.logit_sum))


def merge(a: Partial, b: Partial) -> Partial:
  """Statistics of the union of two disjoint blocks of columns (online softmax)."""
  new_max = jnp.maximum(a.max, b.max)
  return _add(_rescaled(a, new_max), _rescaled(b, new_max))


def psum(x, axis: AxisName):
  """``jax.lax.psum`` over ``axis`` (identity for ``None``; ``None`` leaves stay ``None``)."""
  return x if axis is None or x is None else jax.lax.psum(x, axis)


def pmax(x, axis: AxisName):
  return x if axis is None else jax.lax.pmax(x, axis)


def merge_over(p: Partial, axis: AxisName) -> Partial:
  """Statistics of the union of the blocks held along mesh ``axis`` (one ``pmax``, then ``psum``
  of rescaled ``[n]`` vectors)."""
  if axis is None:
    return p
  p = _rescaled(p, pmax(p.max, axis))
  return Partial(p.max, *(psum(x, axis) for x in p[1:]))


# ----------------------------------------------------------------------------------------------
# Per-device layout and the per-block computation shared by both schedules. ``vocab_axis`` names
# the mesh axis over which the head's rows are split (None on one device); collectives are only
# issued for named axes.


def axis_count(axis: AxisName):
  """Number of devices along a mesh axis inside ``shard_map`` (1 for ``None``)."""
  return 1 if axis is None else jax.lax.axis_size(axis)


def vocab_offset(local_vocab: int, axis: AxisName) -> jax.Array:
  """First global vocabulary id held by this device."""
  if axis is None:
    return jnp.zeros((), jnp.int32)
  return (jax.lax.axis_index(axis) * local_vocab).astype(jnp.int32)


class Local(NamedTuple):
  """One device's view of a call: the matmul ``dtype`` (promoted from ``hidden`` and ``head``),
  the :class:`Scaling`, the scaled hidden states in ``dtype``, the first global vocabulary id
  held here and the global vocabulary size."""
  dtype: jnp.dtype
  scale: Scaling
  hidden: jax.Array
  offset: jax.Array
  num_classes: int


def local_setup(hidden: jax.Array, head: jax.Array, options: Options, vocab_axis: AxisName
                ) -> Local:
  """The preamble of every per-device kernel (see :class:`Local`)."""
  dtype = jnp.result_type(hidden.dtype, head.dtype)
  scale = scaling(options, dtype)
  local_vocab = head.shape[0]
  return Local(dtype=dtype, scale=scale, hidden=scale_hidden(hidden.astype(dtype), scale),
               offset=vocab_offset(local_vocab, vocab_axis),
               num_classes=local_vocab * axis_count(vocab_axis))


def chunk_starts(size: int, chunk: int) -> tuple[jax.Array, jax.Array]:
  """Chunk ``i`` covers rows ``[start_i, start_i + chunk)`` and is responsible for the rows from
  ``fresh_i = i * chunk`` on. When ``chunk`` does not divide ``size`` the last chunk is moved back
  to end at ``size`` (``start = size - chunk < fresh``), so every chunk has the same static size,
  nothing is padded, and its first ``fresh - start`` rows (already covered by the previous chunk)
  are masked out of every sum (:func:`fresh_columns`)."""
  num_chunks = -(-size // chunk)
  fresh = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
  return jnp.minimum(fresh, size - chunk), fresh


def fresh_columns(start, fresh, size):
  """Columns of a chunk not already covered by the previous chunk (see :func:`chunk_starts`)."""
  return start + jnp.arange(size, dtype=jnp.int32) >= fresh


def held_rows(table, labels, offset):
  """Rows ``table[y - offset]`` of the targets this device holds (zeros elsewhere)."""
  local_vocab = table.shape[0]
  local = labels - offset
  held = (local >= 0) & (local < local_vocab)
  rows = jnp.take(table, jnp.clip(local, 0, local_vocab - 1), axis=0)
  return jnp.where(held[:, None], rows, jnp.zeros((), rows.dtype))


def unit_rows(rows: jax.Array) -> jax.Array:
  """Rows L2-normalised in float32 whatever their dtype (a zero row stays zero): rounding the
  unit rows of bfloat16 embeddings back to bfloat16 would cost EMO ~1e-3."""
  return normalize_embeddings(rows)


def inverse_norms(cost_embeddings: jax.Array) -> jax.Array:
  """``1 / ||e_v||`` as float32 ``[V]`` (0 for a zero row, whose cosines are then 0)."""
  norms = jnp.linalg.norm(cost_embeddings.astype(jnp.float32), axis=-1)
  return jnp.where(norms > 0, 1.0 / jnp.maximum(norms, 1e-30), 0.0)


def target_unit(cost_embeddings, labels, offset, vocab_axis: AxisName) -> jax.Array:
  """``ê_y [n, k]`` (float32): each device gathers the targets it holds; a ``psum`` completes
  the rows."""
  return psum(unit_rows(held_rows(cost_embeddings, labels, offset)), vocab_axis)


def dot_rows(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a bᵀ`` in float32 for ``a [n, d]``, ``b [c, d]`` (contracting the rows, no transpose)."""
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def block_logits(local: Local, rows: jax.Array, options: Options
                 ) -> tuple[jax.Array, jax.Array | None]:
  """Transformed logits ``z' [n, c]`` of a block of head ``rows [c, d]`` (matmul in
  ``local.dtype``, float32 accumulation) and their slope (:func:`transform`)."""
  return transform(dot_rows(local.hidden, rows.astype(local.dtype)), options, local.scale)


def block_cosines(unit_targets: jax.Array, cost_rows: jax.Array, inverse: jax.Array
                  ) -> jax.Array:
  """``ê_y · ê_v [n, c]`` for a block of cost rows ``[c, k]`` and their :func:`inverse_norms`
  ``[c]``: ``(ê_y · e_v) / ||e_v||`` in float32, so no normalised ``[V, k]`` copy is held."""
  return dot_rows(unit_targets, cost_rows.astype(jnp.float32)) * inverse[None, :]


def with_linear_logit_sum(p: Partial, hidden: jax.Array, column_sum: jax.Array | None,
                          scale: Scaling) -> Partial:
  """``p`` with the whole vocabulary's ``Σ_v z'_v`` from :func:`linear_logit_sum` (label
  smoothing without a cap; unchanged otherwise)."""
  total = linear_logit_sum(hidden, column_sum, scale)
  return p if total is None else p._replace(logit_sum=total)


class Stats(NamedTuple):
  """Per-token outputs ``[n]`` (float32; ``None`` when not computed) and the residuals the
  gradient needs (``lse``, ``expected_cos = (p Ê)·ê_y``, ``entropy``)."""
  nll: jax.Array
  emo: jax.Array | None
  lse: jax.Array
  entropy: jax.Array | None
  expected_cos: jax.Array | None


def finish(p: Partial, target_logit: jax.Array, num_classes: int, options: Options) -> Stats:
  """Outputs from the statistics of all ``num_classes`` columns and the transformed target logit
  ``z'_y``. Not clamped: rounding can make ``nll``, ``emo``, ``entropy`` slightly negative
  (:func:`nonnegative` clamps the values handed to users)."""
  log_sum = jnp.log(p.sum_exp)
  lse = p.max + log_sum
  eps = options.label_smoothing
  target = target_logit
  if eps:
    assert p.logit_sum is not None  # tracked whenever label_smoothing > 0
    target = (1.0 - eps) * target_logit + (eps / num_classes) * p.logit_sum
  expected_cos = None if p.cos_sum is None else p.cos_sum / p.sum_exp
  return Stats(nll=lse - target, emo=None if expected_cos is None else 1.0 - expected_cos,
               lse=lse, entropy=None if p.ent_sum is None else log_sum - p.ent_sum / p.sum_exp,
               expected_cos=expected_cos)


def nonnegative(x: jax.Array | None) -> jax.Array | None:
  """``max(x, 0)``: cross-entropy, EMO and entropy are non-negative; in float32 a confident
  token's ``lse - z_y`` can round to -2e-6."""
  return None if x is None else jnp.maximum(x, 0.0)


class Cotangents(NamedTuple):
  """Per-token cotangents ``[n]`` of ``(nll, emo, lse, entropy)``; ``None`` is zero."""
  nll: jax.Array | None
  emo: jax.Array | None
  lse: jax.Array | None
  entropy: jax.Array | None


def logit_grad(logits: jax.Array, slope: jax.Array | None, probs: jax.Array,
               target: jax.Array, stats: Stats, cot: Cotangents, num_classes: int,
               options: Options, cosines: jax.Array | None = None) -> jax.Array:
  """float32 gradient ``[n, c]`` with respect to the block's raw matmul output (formula in the
  module docstring).

  ``logits`` are the block's transformed ``z'``, ``slope`` their derivative with respect to the
  raw output from :func:`transform`, ``probs = softmax(z')`` on the block, ``target [n, c]`` the one-hot of the
  labels (boolean), ``stats`` the rows' :class:`Stats` and ``cosines`` ``ê_y · ê_v`` (EMO)."""
  column = lambda x: x[:, None]
  coef = None
  def add(a, b):
    return b if a is None else a + b
  for g in (cot.nll, cot.lse):
    if g is not None:
      coef = add(coef, g)
  if cot.emo is not None:
    assert stats.expected_cos is not None and cosines is not None  # EMO's residuals
    coef = add(coef, cot.emo * stats.expected_cos)
  inner = None if coef is None else column(coef)
  if cot.emo is not None:
    inner = add(inner, -column(cot.emo) * cosines)
  if cot.entropy is not None:
    assert stats.entropy is not None  # computed whenever its cotangent can be non-zero
    log_p = logits - column(stats.lse)
    inner = add(inner, -column(cot.entropy) * (log_p + column(stats.entropy)))
  grad = jnp.zeros_like(probs) if inner is None else probs * inner
  if cot.nll is not None:
    eps = options.label_smoothing
    grad = grad - jnp.where(target, column(cot.nll * (1.0 - eps)), 0.0)
    if eps:
      grad = grad - column(cot.nll * (eps / num_classes))
  return grad if slope is None else grad * slope
