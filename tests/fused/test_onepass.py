"""Tests of emoloss.fused_loss: the one-pass reduced loss against the naive path."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emoloss
from emoloss.fused import _onepass
from emoloss.losses import emo_ce_combination, emo_loss
from tests.fused import helpers

RTOL = helpers.RTOL
assert_close = helpers.assert_close
naive_loss = helpers.naive_loss


def make_problem(n=13, v=37, d=8, k=5, seed=0, scale=1.0):
  """hidden, head, labels and cost (tests/fused/helpers.py)."""
  return helpers.make_problem(n, v, d, k, seed, scale)


# Per-token functions f(stats) and independently written dense references of the same loss on
# materialised logits (emoloss.losses / optax, or the formula written out).
def z_loss(s):
  return s.nll + 0.1 * s.lse ** 2


def tailr_like(s):
  """A stop-gradient per-token weight from p_y = exp(-nll) (TaiLr-style)."""
  p_y = jax.lax.stop_gradient(jnp.exp(-s.nll))
  return p_y / (0.5 + 0.5 * p_y) * s.nll


def mode1_uncapped_reference(ce, emo):
  return 0.5 * (jax.lax.stop_gradient(ce / emo) * emo + ce)


PER_TOKEN = {
    "ce": (emoloss.ce_per_token, lambda s: s.nll, False),
    "z-loss": (z_loss, lambda s: s.nll + 0.1 * s.lse ** 2, False),
    "tailr-like": (tailr_like, tailr_like, False),
    "emo-ce mode 1": (emoloss.emo_ce_per_token(1),
                      lambda s: emo_ce_combination(s.nll, s.emo, mode=1), True),
    "emo-ce mode 1 uncapped": (emoloss.emo_ce_per_token(1, max_ratio=None),
                               lambda s: mode1_uncapped_reference(s.nll, s.emo), True),
    "emo-ce mode 2": (emoloss.emo_ce_per_token(2),
                      lambda s: emo_ce_combination(s.nll, s.emo, mode=2), True),
}


def blocked_loss(hidden, head, labels, cost_embeddings=None, *, vocab_block_size,
                 per_token=emoloss.ce_per_token, reduction="mean", where=None, chunk_size=None,
                 softcap=None, temperature=1.0, label_smoothing=0.0):
  """fused_loss with ``vocab_block_size`` rows of ∂W updated per step (an internal setting)."""
  return _onepass.reduced_loss(
      hidden, head, labels, cost_embeddings, where, per_token=per_token, reduction=reduction,
      chunk_size=chunk_size, softcap=softcap, temperature=temperature,
      label_smoothing=label_smoothing, mesh=None, data_axis=None, model_axis=None,
      vocab_block_size=vocab_block_size)


def value_and_grads(fn, hidden, head, jit=True):
  """Value and gradients w.r.t. hidden and head, under ``jax.jit`` unless ``jit=False``."""
  fn = jax.value_and_grad(fn, argnums=(0, 1))
  return (jax.jit(fn) if jit else fn)(hidden, head)


def assert_match(got, expected, rtol=RTOL):
  for name, a, b in zip(("loss", "d hidden", "d head"), jax.tree.leaves(got),
                        jax.tree.leaves(expected)):
    assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
    assert_close(a, b, rtol, name)


@pytest.mark.parametrize("name, masked", [(name, True) for name in PER_TOKEN]
                         + [("ce", False), ("emo-ce mode 1", False)])
def test_values_and_grads_match_naive(name, masked):
  per_token, reference, with_emo = PER_TOKEN[name]
  hidden, head, labels, cost = make_problem()
  cost = cost if with_emo else None
  where = (jnp.arange(hidden.shape[0]) % 3 != 1) if masked else None
  onepass = functools.partial(emoloss.fused_loss, labels=labels, cost_embeddings=cost,
                              per_token=per_token, where=where, chunk_size=4)
  naive = functools.partial(naive_loss, labels=labels, cost=cost, per_token=reference,
                            where=where)
  expected = value_and_grads(naive, hidden, head)
  assert_match(value_and_grads(onepass, hidden, head), expected)
  assert_close(jax.jit(onepass)(hidden, head), expected[0], name="value only")


def test_eager_matches_naive():
  per_token, reference, _ = PER_TOKEN["emo-ce mode 1"]
  hidden, head, labels, cost = make_problem(n=6, v=11)
  where = jnp.arange(6) != 2
  got = value_and_grads(lambda h, w: emoloss.fused_loss(
      h, w, labels, cost, per_token=per_token, where=where, chunk_size=4), hidden, head,
      jit=False)
  expected = value_and_grads(lambda h, w: naive_loss(h, w, labels, cost, reference, where),
                             hidden, head, jit=False)
  assert_match(got, expected)


@pytest.mark.parametrize("num_tokens, vocab, chunk, block, reduction", [
    (13, 37, 4, 8, "sum"), (16, 40, 8, 10, "mean"), (5, 37, 64, 4096, "sum"),
    (7, 37, 1, 37, "mean")])
def test_chunkings_and_reductions(num_tokens, vocab, chunk, block, reduction):
  """Token chunks that do or do not divide N (padding), ∂W blocks that do or do not divide V
  (the last block moved back over an overlap), or one block for the whole vocabulary."""
  per_token, reference, _ = PER_TOKEN["emo-ce mode 1"]
  hidden, head, labels, cost = make_problem(n=num_tokens, v=vocab, seed=1)
  where = jnp.arange(num_tokens) % 4 != 3
  got = value_and_grads(
      lambda h, w: blocked_loss(h, w, labels, cost, per_token=per_token, where=where,
                                reduction=reduction, chunk_size=chunk, vocab_block_size=block),
      hidden, head)
  expected = value_and_grads(
      lambda h, w: naive_loss(h, w, labels, cost, reference, where, reduction), hidden, head)
  assert_match(got, expected)


def test_gradient_matches_closed_form_in_float64_numpy():
  """∂/∂z_v of Σ_n (a nll + b EMO + c lse)/N, written out in NumPy, pulled back through h Wᵀ."""
  hidden, head, labels, cost = make_problem(n=9, v=23, d=6, k=4, seed=3)
  a, b, c = 0.7, 1.3, 0.2
  per_token = lambda s: a * s.nll + b * s.emo + c * s.lse
  loss, (d_hidden, d_head) = value_and_grads(
      lambda h, w: emoloss.fused_loss(h, w, labels, cost, per_token=per_token,
                                        chunk_size=4), hidden, head)
  h, w, e = (np.asarray(x, np.float64) for x in (hidden, head, cost))
  y = np.asarray(labels)
  logits = h @ w.T
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  unit = e / np.linalg.norm(e, axis=1, keepdims=True)
  cos_y = unit[y] @ unit.T
  onehot = np.eye(w.shape[0])[y]
  nll = -np.log(probs[np.arange(len(y)), y])
  emo = 1.0 - (probs * cos_y).sum(1)
  lse = np.log(np.exp(logits).sum(1))
  d_logits = (a * (probs - onehot) + c * probs
              + b * probs * ((probs * cos_y).sum(1, keepdims=True) - cos_y)) / len(y)
  assert_close(loss, np.mean(a * nll + b * emo + c * lse), name="loss")
  assert_close(d_hidden, d_logits @ w, name="d hidden")
  assert_close(d_head, d_logits.T @ h, name="d head")


def test_bfloat16_hidden_and_head():
  """bf16 matmul inputs, float32 accumulation: the loss equals the float32 naive path on the same
  (upcast) numbers to float32 accuracy (bf16 x bf16 products are exact in float32); the
  gradients come back in bfloat16 and agree to bf16 rounding (1e-2 of the largest entry)."""
  per_token, reference, _ = PER_TOKEN["emo-ce mode 1"]
  hidden, head, labels, cost = make_problem(n=16, v=50, d=16, k=8, seed=5)
  hidden16, head16 = hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16)
  where = jnp.arange(16) != 3
  loss, grads = value_and_grads(
      lambda h, w: emoloss.fused_loss(h, w, labels, cost, per_token=per_token, where=where,
                                        chunk_size=8), hidden16, head16)
  ref_loss, ref_grads = value_and_grads(
      lambda h, w: naive_loss(h, w, labels, cost, reference, where),
      hidden16.astype(jnp.float32), head16.astype(jnp.float32))
  assert loss.dtype == jnp.float32
  assert_close(loss, ref_loss, name="loss")
  for name, a, b in zip(("d hidden", "d head"), grads, ref_grads):
    assert a.dtype == jnp.bfloat16, name
    assert_close(a, b, 1e-2, name)


@pytest.mark.parametrize("mode, max_ratio", [(1, 3.0), (1, None), (2, None)])
def test_confident_tokens_are_finite_under_jit(mode, max_ratio):
  """Margins of 30-100 between the target logit and the rest: p_y rounds to 1, so CE and EMO
  are 0 (or round below 0) for those tokens; the mix must not divide 0 by 0."""
  hidden, head, labels, cost = make_problem(n=8, v=20, d=20, seed=7)
  head = jnp.eye(20)
  margins = jnp.linspace(30.0, 100.0, 8)
  hidden = margins[:, None] * jax.nn.one_hot(labels, 20)  # z_y = margin, every other z_v = 0
  per_token = emoloss.emo_ce_per_token(mode, max_ratio=max_ratio)
  loss_fn = lambda h, w: emoloss.fused_loss(h, w, labels, cost, per_token=per_token,
                                              chunk_size=3)
  loss, grads = value_and_grads(loss_fn, hidden, head)
  assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads)
  # Independent check: with p_v = exp(-margin) for v ≠ y, CE ≈ (V - 1) exp(-margin) ≈ 0 and
  # EMO ≈ 0 up to the float32 rounding of 1 - (p Ê)·ê_y (a few 1e-8).
  assert 0.0 <= float(loss) <= 1e-6
  assert float(jnp.max(jnp.abs(grads[0]))) <= 1e-6


OPTIONS = {"softcap": 2.0, "temperature": 0.7, "label_smoothing": 0.1}


@pytest.mark.parametrize("name, options", [
    ("ce", OPTIONS), ("ce", {"softcap": 30.0}), ("ce", {"label_smoothing": 0.3}),
    ("emo-ce mode 1", OPTIONS), ("z-loss", {"temperature": 1.5})])
def test_options_match_naive(name, options):
  """Soft-cap, temperature, label smoothing (applied in that order; EMO sees the same
  distribution) against the naive computation on the transformed logits; masked, token chunks
  not dividing N, ∂W blocks not dividing V."""
  per_token, reference, with_emo = PER_TOKEN[name]
  hidden, head, labels, cost = make_problem(scale=3.0)
  cost = cost if with_emo else None
  where = jnp.arange(hidden.shape[0]) % 3 != 1
  onepass = functools.partial(blocked_loss, labels=labels, cost_embeddings=cost,
                              per_token=per_token, where=where, chunk_size=4,
                              vocab_block_size=16, **options)
  naive = functools.partial(naive_loss, labels=labels, cost=cost, per_token=reference,
                            where=where, **options)
  expected = value_and_grads(naive, hidden, head)
  assert_match(value_and_grads(onepass, hidden, head), expected)
  assert_close(jax.jit(onepass)(hidden, head), expected[0], name="value only")


def entropy_bonus(s):
  """CE minus an entropy bonus (the one-liner of the docs)."""
  return s.nll - 0.1 * s.entropy


@pytest.mark.parametrize("options", [{}, OPTIONS])
def test_entropy_per_token_matches_naive(options):
  hidden, head, labels, _ = make_problem(scale=2.0)
  where = jnp.arange(hidden.shape[0]) != 5
  onepass = functools.partial(emoloss.fused_loss, labels=labels, per_token=entropy_bonus,
                              where=where, chunk_size=5, **options)
  naive = functools.partial(naive_loss, labels=labels, cost=None, per_token=entropy_bonus,
                            where=where, **options)
  expected = value_and_grads(naive, hidden, head)
  assert_match(value_and_grads(onepass, hidden, head), expected)
  assert_close(jax.jit(onepass)(hidden, head), expected[0], name="value only")


def test_bfloat16_with_options():
  per_token, reference, _ = PER_TOKEN["emo-ce mode 1"]
  hidden, head, labels, cost = make_problem(n=16, v=50, d=16, k=8, seed=5, scale=2.0)
  hidden16, head16 = hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16)
  loss, grads = value_and_grads(
      lambda h, w: emoloss.fused_loss(h, w, labels, cost, per_token=per_token,
                                        chunk_size=8, **OPTIONS), hidden16, head16)
  ref_loss, ref_grads = value_and_grads(
      lambda h, w: naive_loss(h, w, labels, cost, reference, **OPTIONS),
      hidden16.astype(jnp.float32), head16.astype(jnp.float32))
  assert_close(loss, ref_loss, name="loss")
  for name, a, b in zip(("d hidden", "d head"), grads, ref_grads):
    assert a.dtype == jnp.bfloat16, name
    assert_close(a, b, 1e-2, name)


def test_bfloat16_cost_embeddings_keep_float32_unit_rows():
  """bf16 cost embeddings: EMO + CE and its gradients equal the naive path on the same bf16
  values (upcast) to float32 accuracy (bf16 unit rows were off by 2-3e-4 relative)."""
  per_token, reference, _ = PER_TOKEN["emo-ce mode 2"]
  hidden, head, labels, cost = make_problem(n=16, v=50, d=16, k=8, seed=5)
  cost16 = cost.astype(jnp.bfloat16)
  got = value_and_grads(lambda h, w: emoloss.fused_loss(
      h, w, labels, cost16, per_token=per_token, chunk_size=8), hidden, head)
  expected = value_and_grads(lambda h, w: naive_loss(
      h, w, labels, cost16.astype(jnp.float32), reference), hidden, head)
  assert_match(got, expected)
  emo_only = lambda s: s.emo
  value = emoloss.fused_loss(hidden, head, labels, cost16, per_token=emo_only)
  logits = hidden @ head.T
  assert abs(float(value) - float(jnp.mean(emo_loss(logits, labels, cost16)))) <= 2e-6


def test_stop_gradient_head_skips_the_head_gradient():
  """A head under jax.lax.stop_gradient (frozen): zero head cotangent, the same ∂h, and 2 N V d
  (+ N V k) matmul work instead of 3 N V d (+ N V k): the ∂W accumulation is not traced."""
  n, v, d, k, chunk = 24, 40, 6, 5, 8
  hidden, head, labels, cost = make_problem(n=n, v=v, d=d, k=k)
  loss = lambda h, w, freeze: emoloss.fused_loss(
      h, jax.lax.stop_gradient(w) if freeze else w, labels, cost,
      per_token=emoloss.emo_ce_per_token(1), chunk_size=chunk)
  trained = value_and_grads(functools.partial(loss, freeze=False), hidden, head)
  frozen = value_and_grads(functools.partial(loss, freeze=True), hidden, head)
  np.testing.assert_array_equal(frozen[1][1], np.zeros_like(head))
  assert_close(frozen[0], trained[0], name="loss")
  assert_close(frozen[1][0], trained[1][0], name="d hidden")
  jaxpr = jax.make_jaxpr(jax.value_and_grad(functools.partial(loss, freeze=True),
                                            argnums=(0, 1)))(hidden, head).jaxpr
  assert helpers.dot_flops(jaxpr) == 2 * (2 * n * v * d + n * v * k)


@pytest.mark.parametrize("with_grad", [False, True])
def test_per_token_never_sees_a_negative_nll_or_emo(with_grad):
  """Confident tokens (margins 30-100): lse - z_y and 1 - (p Ê)·ê_y round to about -1e-6 in
  float32; per_token gets them clamped at 0 on both the value-only and the gradient path, so a
  sqrt (or a NaN flag for negatives, as here) stays finite."""
  hidden, head, labels, cost = make_problem(n=8, v=20, d=20, seed=7)
  head = jnp.eye(20)
  hidden = jnp.linspace(30.0, 100.0, 8)[:, None] * jax.nn.one_hot(labels, 20)
  def flag(s):
    bad = (s.nll < 0) | (s.emo < 0) | (s.entropy < 0)
    return jnp.where(bad, jnp.nan, jnp.sqrt(s.nll) + jnp.sqrt(s.emo) + s.entropy)
  loss = lambda h: emoloss.fused_loss(h, head, labels, cost, per_token=flag, chunk_size=3)
  value = jax.jit(jax.value_and_grad(loss))(hidden)[0] if with_grad else jax.jit(loss)(hidden)
  assert np.isfinite(float(value)) and float(value) >= 0.0


def test_per_token_may_close_over_a_differentiated_value():
  """jax.grad through a weight that per_token closes over (the custom VJP takes it as an
  explicit argument): d/da of mean(a nll + a² EMO) = mean(nll) + 2 a mean(EMO), eagerly and
  under jit, together with the gradient with respect to the hidden states."""
  hidden, head, labels, cost = make_problem()
  def loss(a, h):
    per_token = lambda s: a * s.nll + a ** 2 * s.emo
    return emoloss.fused_loss(h, head, labels, cost, per_token=per_token, chunk_size=4)
  def naive(a, h):
    return naive_loss(h, head, labels, cost, lambda s: a * s.nll + a ** 2 * s.emo)
  for fn in (jax.grad(loss, argnums=(0, 1)), jax.jit(jax.grad(loss, argnums=(0, 1)))):
    got = fn(jnp.float32(2.0), hidden)
    expected = jax.grad(naive, argnums=(0, 1))(jnp.float32(2.0), hidden)
    assert_close(got[0], expected[0], name="d a")
    assert_close(got[1], expected[1], name="d hidden")
  # The example: a scalar Python float closed over under jax.grad.
  d_a = jax.grad(lambda a: emoloss.fused_loss(hidden, head, labels,
                                              per_token=lambda s: a * s.nll))(2.0)
  assert_close(d_a, naive_loss(hidden, head, labels, None, lambda s: s.nll), name="d a")


def test_numpy_integer_chunk_sizes():
  hidden, head, labels, cost = make_problem()
  fn = lambda c, b: value_and_grads(lambda h, w: blocked_loss(
      h, w, labels, cost, chunk_size=c, vocab_block_size=b), hidden, head)
  for a, b in zip(jax.tree.leaves(fn(np.int64(4), np.int32(16))), jax.tree.leaves(fn(4, 16))):
    np.testing.assert_array_equal(a, b)


def test_masked_tokens_are_inert_and_fully_masked_is_zero():
  per_token, _, _ = PER_TOKEN["emo-ce mode 2"]
  hidden, head, labels, cost = make_problem(v=30)
  where = jnp.arange(hidden.shape[0]) % 2 == 0
  garbage = hidden.at[1].set(jnp.nan).at[3].set(jnp.inf)
  bad_labels = labels.at[1].set(-100).at[3].set(10_000)
  loss = lambda h, w, y, m: emoloss.fused_loss(h, w, y, cost, per_token=per_token, where=m,
                                                 chunk_size=4)
  clean = value_and_grads(lambda h, w: loss(h, w, labels, where), hidden, head)
  dirty = value_and_grads(lambda h, w: loss(h, w, bad_labels, where), garbage, head)
  assert_match(dirty, clean)
  assert np.all(np.asarray(dirty[1][0])[~np.asarray(where)] == 0.0)
  none = jnp.zeros_like(where)
  value, (d_hidden, d_head) = value_and_grads(lambda h, w: loss(h, w, bad_labels, none),
                                              garbage, head)
  assert float(value) == 0.0
  assert np.all(np.asarray(d_hidden) == 0.0) and np.all(np.asarray(d_head) == 0.0)


def test_leading_batch_dimensions_and_outer_scaling():
  hidden, head, labels, cost = make_problem(n=12)
  flat = lambda h, w: 3.0 * emoloss.fused_loss(h, w, labels, cost, chunk_size=5)
  batched = lambda h, w: 3.0 * emoloss.fused_loss(
      h.reshape(3, 4, -1), w, labels.reshape(3, 4), cost, chunk_size=5)
  assert_match(value_and_grads(batched, hidden, head), value_and_grads(flat, hidden, head))
  expected = value_and_grads(
      lambda h, w: 3.0 * naive_loss(h, w, labels, cost, PER_TOKEN["ce"][1]), hidden, head)
  assert_match(value_and_grads(flat, hidden, head), expected)


def test_no_gradient_to_cost_embeddings():
  hidden, head, labels, cost = make_problem()
  d_cost = jax.grad(lambda e: emoloss.fused_loss(
      hidden, head, labels, e, per_token=emoloss.emo_ce_per_token(1)))(cost)
  np.testing.assert_array_equal(d_cost, np.zeros_like(cost))


@pytest.mark.parametrize("with_emo", [False, True])
def test_logits_are_computed_once(with_emo):
  """The value-and-grad program's matmuls do exactly the multiply-adds of the one-pass schedule,
  3 N V d for the logits, ∂h and ∂W (+ N V k for EMO: each chunk's cosine row ê_y · ê_v is
  computed once and serves both p Ê · ê_y and the gradient), i.e. no chunk's logits are
  recomputed (the recompute schedule adds N V d)."""
  n, v, d, k, chunk = 24, 40, 6, 5, 8
  hidden, head, labels, cost = make_problem(n=n, v=v, d=d, k=k)
  cost = cost if with_emo else None
  per_token = emoloss.emo_ce_per_token(1) if with_emo else emoloss.ce_per_token
  loss = lambda h, w: emoloss.fused_loss(h, w, labels, cost, per_token=per_token,
                                           chunk_size=chunk)
  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(hidden, head).jaxpr
  expected = 2 * (3 * n * v * d + (n * v * k if with_emo else 0))
  assert helpers.dot_flops(jaxpr) == expected
  recompute = jax.make_jaxpr(jax.value_and_grad(
      lambda h, w: jnp.mean(emoloss.fused_token_stats(h, w, labels, cost, chunk_size=8).nll),
      argnums=(0, 1)))(hidden, head).jaxpr
  assert helpers.dot_flops(recompute) >= expected + 2 * n * v * d  # the check can tell them apart


def test_compiled_memory_is_a_few_token_chunks():
  """XLA's buffer assignment for value-and-grad at N=4096, V=16384, d=k=64 with 128-token chunks:
  temporaries within two [n, V] float32 blocks, one [vocab block, d] ∂W block and O(N (d + k))
  rows and O(N) per-token vectors (the float32 ∂W accumulator is the output itself), far below the
  [N, V] logits of the naive path."""
  n, v, d, k, chunk = 4096, 16384, 64, 64, 128
  s = jax.ShapeDtypeStruct
  args = (s((n, d), jnp.float32), s((v, d), jnp.float32), s((n,), jnp.int32),
          s((v, k), jnp.float32))
  loss = lambda h, w, y, e: emoloss.fused_loss(
      h, w, y, e, per_token=emoloss.emo_ce_per_token(1), chunk_size=chunk)
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  # ... plus up to 16 [N] per-token vectors (statistics, weights, labels, label-rule masks).
  bound = 4 * (2 * chunk * v + emoloss.fused._plumbing.VOCAB_BLOCK * d + 4 * n * (d + k) + 16 * n)
  assert temp <= bound, (temp, bound)
  assert temp < 0.1 * (n * v * 4), temp


def test_argument_errors():
  hidden, head, labels, _ = make_problem()
  with pytest.raises(ValueError, match="reduction"):
    emoloss.fused_loss(hidden, head, labels, reduction="max")
  with pytest.raises(TypeError, match="per_token"):
    emoloss.fused_loss(hidden, head, labels, per_token="ce")
  with pytest.raises(ValueError, match="chunk_size"):
    emoloss.fused_loss(hidden, head, labels, chunk_size=0)
  with pytest.raises(ValueError, match="chunk_size"):
    emoloss.fused_loss(hidden, head, labels, chunk_size=-3)
  with pytest.raises(ValueError, match="head"):
    emoloss.fused_loss(hidden, head[:, :3], labels)
  with pytest.raises(ValueError, match="where"):
    emoloss.fused_loss(hidden, head, labels, where=jnp.ones(3, bool))
  with pytest.raises(ValueError, match="vocab_block_size"):
    blocked_loss(hidden, head, labels, vocab_block_size=0)
  with pytest.raises(ValueError, match="chunk_size"):
    emoloss.fused_loss(hidden, head, labels, chunk_size=np.float64(4.0))
  with pytest.raises(ValueError, match="per_token"):
    emoloss.fused_loss(hidden, head, labels, per_token=lambda s: jnp.sum(s.nll))
  with pytest.raises(ValueError, match="softcap"):
    emoloss.fused_loss(hidden, head, labels, softcap=-30.0)
  with pytest.raises(ValueError, match="label_smoothing"):
    emoloss.fused_loss(hidden, head, labels, label_smoothing=-0.1)
  with pytest.raises(ValueError, match="mode"):
    emoloss.emo_ce_per_token(3)
  with pytest.raises(ValueError, match="max_ratio"):
    emoloss.emo_ce_per_token(1, max_ratio=-1.0)
  with pytest.raises(ValueError, match="cost_embeddings"):
    emoloss.fused_loss(hidden, head, labels, per_token=emoloss.emo_ce_per_token(1))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  with pytest.raises(ValueError, match="model"):
    emoloss.fused_loss(hidden, head, labels, mesh=mesh)


@pytest.mark.experiments  # 8-device subprocess: second test lane
def test_sharded_matches_single_device_on_8_cpu_devices():
  """tests/fused/onepass_sharded_check.py in a subprocess with 8 simulated CPU devices."""
  helpers.run_on_8_cpu_devices("onepass_sharded_check.py")
