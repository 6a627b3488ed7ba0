"""Tests of emoloss.fused_token_stats (the recompute schedule) and the per-token losses built on
it, against the naive path (the logits materialised, tests/fused/helpers.py)."""


import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest

import emoloss
from emoloss.losses import emo_ce_loss
from tests.fused import helpers

RTOL = helpers.RTOL
assert_close = helpers.assert_close


def make_problem(n=12, v=37, d=8, k=5, seed=0, scale=1.0):
  """hidden, head, labels, cost and the per-output cotangents (tests/fused/helpers.py)."""
  return (*helpers.make_problem(n, v, d, k, seed, scale), helpers.cotangents(n, seed))


OPTIONS = {  # name: keyword arguments of the fused functions (the reference applies the same)
    "plain": {},
    "softcap": {"softcap": 2.0},
    "temperature": {"temperature": 0.6},
    "label smoothing": {"label_smoothing": 0.1},
    "all three": {"softcap": 3.0, "temperature": 1.7, "label_smoothing": 0.2},
}


def naive_outputs(hidden, head, labels, cost, where=None, **options):
  return tuple(helpers.naive_token_stats(hidden, head, labels, cost, where, **options))


def fused_outputs(hidden, head, labels, cost, where=None, chunk_size=8, **options):
  return tuple(emoloss.fused_token_stats(hidden, head, labels, cost, where=where,
                                         chunk_size=chunk_size, **options))


def weighted_sum(outputs, weights):
  """A scalar using every output with its own per-token cotangent (z-loss style on lse)."""
  nll, emo, lse, entropy = outputs
  total = (jnp.sum(weights[0] * nll) + jnp.sum(weights[2] * lse) + 0.1 * jnp.sum(lse ** 2)
           + 0.3 * jnp.sum(weights[1] * entropy))
  return total if emo is None else total + jnp.sum(weights[1] * emo)


def values_and_grads(fn, hidden, head, weights):
  """The outputs and the gradient of their weighted sum, as one jitted program (eager execution
  of every fused loss is compared with jit in tests/test_reliability.py)."""
  def run(h, w):
    grads = jax.grad(lambda h, w: weighted_sum(fn(h, w), weights), argnums=(0, 1))(h, w)
    return fn(h, w), grads
  return jax.jit(run)(hidden, head)


def assert_match(fused, naive, rtol=RTOL):
  (f_out, f_grads), (n_out, n_grads) = fused, naive
  for name, a, b in zip(("nll", "emo", "lse", "entropy"), f_out, n_out):
    if b is None:
      assert a is None, name
    else:
      assert_close(a, b, rtol, name)
  for name, a, b in zip(("d hidden", "d head"), f_grads, n_grads):
    assert a.dtype == b.dtype, name
    assert_close(a, b, rtol, name)


@pytest.mark.parametrize("vocab, chunk_size", [(37, 8), (40, 8), (37, 64), (37, 37), (64, 16)])
@pytest.mark.parametrize("masked", [False, True])
def test_values_and_grads_match_naive(vocab, chunk_size, masked):
  hidden, head, labels, cost, weights = make_problem(v=vocab)
  where = (jnp.arange(hidden.shape[0]) % 3 != 1) if masked else None
  fused = values_and_grads(
      lambda h, w: fused_outputs(h, w, labels, cost, where, chunk_size), hidden, head, weights)
  naive = values_and_grads(
      lambda h, w: naive_outputs(h, w, labels, cost, where), hidden, head, weights)
  assert_match(fused, naive)


@pytest.mark.parametrize("option, vocab, chunk_size, masked",
                         [(option, 37, 8, True) for option in OPTIONS if option != "plain"]
                         + [("all three", 40, 8, False)])
def test_options_match_naive(option, vocab, chunk_size, masked):
  """Soft-cap, temperature and label smoothing: every output (entropy included) and the
  gradient of a scalar using all of them equal the naive path on the transformed logits, with V
  a multiple of the chunk or not, with and without a mask."""
  options = OPTIONS[option]
  hidden, head, labels, cost, weights = make_problem(v=vocab, scale=3.0)  # logits near the cap
  where = (jnp.arange(hidden.shape[0]) % 3 != 1) if masked else None
  fused = values_and_grads(
      lambda h, w: fused_outputs(h, w, labels, cost, where, chunk_size, **options), hidden, head,
      weights)
  naive = values_and_grads(
      lambda h, w: naive_outputs(h, w, labels, cost, where, **options), hidden, head, weights)
  assert_match(fused, naive)


@pytest.mark.parametrize("name", ["fused_emo_ce_loss", "fused_mixce_loss"])
def test_losses_built_on_the_fused_path_take_the_options(name):
  options = OPTIONS["all three"]
  hidden, head, labels, cost, weights = make_problem(v=41, seed=8, scale=3.0)
  where = jnp.arange(hidden.shape[0]) != 2

  def naive(h, w):
    nll, emo, _, _ = naive_outputs(h, w, labels, cost, where, **options)
    if name == "fused_emo_ce_loss":
      return jnp.where(where, emoloss.emo_ce_combination(nll, emo), 0.0)
    return jnp.where(where, emoloss.mixce_weight(-nll, 0.5) * nll, 0.0)

  def fused(h, w):
    if name == "fused_emo_ce_loss":
      return emoloss.fused_emo_ce_loss(h, w, labels, cost, where=where, chunk_size=8, **options)
    return emoloss.fused_mixce_loss(h, w, labels, where=where, chunk_size=8, **options)

  def run(fn):
    return jax.jit(lambda h, w: (fn(h, w), jax.grad(
        lambda h, w: jnp.sum(weights[0] * fn(h, w)), argnums=(0, 1))(h, w)))(hidden, head)
  for a, b in zip(jax.tree.leaves(run(fused)), jax.tree.leaves(run(naive))):
    assert_close(a, b)


def test_entropy_matches_float64_numpy_and_its_gradient_the_closed_form():
  """H = -Σ p log p and ∂H/∂z_v = -p_v (log p_v + H), written out in float64 NumPy."""
  hidden, head, labels, _, weights = make_problem(n=9, v=23, d=6, seed=3, scale=2.0)
  g = weights[0]
  out = emoloss.fused_token_stats(hidden, head, labels, chunk_size=5)
  d_hidden = jax.grad(lambda h: jnp.sum(
      g * emoloss.fused_token_stats(h, head, labels, chunk_size=5).entropy))(hidden)
  h, w, gn = (np.asarray(x, np.float64) for x in (hidden, head, g))
  logits = h @ w.T
  log_p = logits - logits.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  p = np.exp(log_p)
  entropy = -(p * log_p).sum(1)
  assert_close(out.entropy, entropy, name="entropy")
  d_logits = -gn[:, None] * p * (log_p + entropy[:, None])
  assert_close(d_hidden, d_logits @ w, name="d hidden")


def test_softcap_gradient_matches_finite_differences():
  """The soft-cap's derivative (1 - tanh²) / T through the custom VJP, against float32 finite
  differences of the fused outputs themselves (``jax.test_util.check_grads``, reverse mode)."""
  hidden, head, labels, cost, weights = make_problem(n=5, v=13, d=4, k=3, seed=9, scale=2.0)
  fn = lambda h, w: weighted_sum(fused_outputs(h, w, labels, cost, None, 4, softcap=2.5,
                                               temperature=0.8, label_smoothing=0.1), weights)
  jax.test_util.check_grads(fn, (hidden, head), order=1, modes=["rev"], atol=2e-2, rtol=2e-2,
                            eps=1e-2)


def test_stop_gradient_head_skips_the_head_gradient():
  """A head under jax.lax.stop_gradient (a frozen head): zero cotangent for the head, the same ∂h,
  and one N V d matmul fewer in the value-and-grad program (the ∂W matmul is not traced)."""
  n, v, d, k = 12, 40, 6, 5
  hidden, head, labels, cost, weights = make_problem(n=n, v=v, d=d, k=k)

  def loss(h, w, freeze):
    w = jax.lax.stop_gradient(w) if freeze else w
    out = emoloss.fused_token_stats(h, w, labels, cost, chunk_size=8)
    return weighted_sum(tuple(out), weights)
  trained = jax.grad(loss, argnums=(0, 1))(hidden, head, False)
  frozen = jax.grad(loss, argnums=(0, 1))(hidden, head, True)
  np.testing.assert_array_equal(frozen[1], np.zeros_like(head))
  assert_close(frozen[0], trained[0], name="d hidden")
  flops = {freeze: helpers.dot_flops(jax.make_jaxpr(jax.value_and_grad(
      functools.partial(loss, freeze=freeze), argnums=(0, 1)))(hidden, head).jaxpr)
      for freeze in (False, True)}
  assert flops[False] - flops[True] == 2 * n * v * d, flops


def test_bfloat16_cost_embeddings_keep_float32_unit_rows():
  """bf16 cost embeddings: the normalised rows stay float32, so EMO equals emo_loss on the same
  bf16 values (upcast) to float32 accuracy (rounding the unit rows to bf16 was off by ~1e-3)."""
  hidden, head, labels, cost, weights = make_problem(n=16, v=50, d=16, k=8, seed=5)
  cost16 = cost.astype(jnp.bfloat16)
  fused = values_and_grads(lambda h, w: fused_outputs(h, w, labels, cost16, chunk_size=16),
                           hidden, head, weights)
  naive = values_and_grads(lambda h, w: naive_outputs(h, w, labels, cost16.astype(jnp.float32)),
                           hidden, head, weights)
  assert float(jnp.max(jnp.abs(fused[0][1] - naive[0][1]))) <= 2e-6
  assert_match(fused, naive)


def test_without_cost_embeddings_is_plain_cross_entropy():
  hidden, head, labels, _, weights = make_problem(v=45)
  fused = values_and_grads(lambda h, w: fused_outputs(h, w, labels, None, chunk_size=16),
                           hidden, head, weights)
  naive = values_and_grads(lambda h, w: naive_outputs(h, w, labels, None), hidden, head, weights)
  assert fused[0][1] is None
  assert_match(fused, naive)


def test_values_match_float64_numpy_reference():
  """Independent reference: explicit probabilities and the [V, V] cosine cost matrix."""
  hidden, head, labels, cost, _ = make_problem(n=9, v=23, d=6, k=4, seed=3)
  out = emoloss.fused_token_stats(hidden, head, labels, cost, chunk_size=5)
  h, w, e = (np.asarray(x, np.float64) for x in (hidden, head, cost))
  y = np.asarray(labels)
  logits = h @ w.T
  lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
  probs = np.exp(logits - lse[:, None])
  unit = e / np.linalg.norm(e, axis=1, keepdims=True)
  cost_matrix = 1.0 - unit @ unit.T  # c(i, j) = 1 - cos(e_i, e_j)
  emo = np.array([probs[n] @ cost_matrix[:, y[n]] for n in range(len(y))])
  assert_close(out.lse, lse, name="lse")
  assert_close(out.nll, lse - logits[np.arange(len(y)), y], name="nll")
  assert_close(out.emo, emo, name="emo")


def test_gradient_matches_closed_form():
  """∂(Σ g·EMO)/∂z_v = g p_v ((p Ê)·ê_y - ê_v·ê_y), pulled back through z = h Wᵀ."""
  hidden, head, labels, cost, weights = make_problem(n=7, v=19, d=5, k=3, seed=4)
  g = weights[1]
  d_hidden = jax.grad(
      lambda h: jnp.sum(g * emoloss.fused_token_stats(h, head, labels, cost, chunk_size=4).emo))(hidden)
  h, w, e, gn = (np.asarray(x, np.float64) for x in (hidden, head, cost, g))
  logits = h @ w.T
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  unit = e / np.linalg.norm(e, axis=1, keepdims=True)
  cos_y = unit[np.asarray(labels)] @ unit.T  # [N, V]
  d_logits = gn[:, None] * probs * ((probs * cos_y).sum(1, keepdims=True) - cos_y)
  assert_close(d_hidden, d_logits @ w, name="d hidden")


def test_masked_tokens_give_zero_and_no_nan():
  hidden, head, labels, cost, weights = make_problem(v=30)
  where = jnp.arange(hidden.shape[0]) % 2 == 0
  hidden = hidden.at[1].set(jnp.nan).at[3].set(jnp.inf)  # garbage in padding rows
  labels = labels.at[1].set(-100).at[3].set(10_000)  # ignore-index style labels
  loss = lambda h, w: weighted_sum(fused_outputs(h, w, labels, cost, where), weights)
  out = fused_outputs(hidden, head, labels, cost, where)
  d_hidden, d_head = jax.grad(loss, argnums=(0, 1))(hidden, head)
  for x in out:
    assert np.all(np.asarray(x)[~np.asarray(where)] == 0.0)
  assert np.all(np.isfinite(d_hidden)) and np.all(np.isfinite(d_head))
  assert np.all(np.asarray(d_hidden)[~np.asarray(where)] == 0.0)
  fully_masked = fused_outputs(hidden, head, labels, cost, jnp.zeros_like(where))
  assert all(np.all(np.asarray(x) == 0.0) for x in fully_masked)


def test_extreme_logits_are_finite_and_match_naive():
  hidden, head, labels, cost, weights = make_problem(v=33, scale=2e3)  # logits ~ ±1e4
  fused = values_and_grads(lambda h, w: fused_outputs(h, w, labels, cost, chunk_size=8),
                           hidden, head, weights)
  naive = values_and_grads(lambda h, w: naive_outputs(h, w, labels, cost), hidden, head, weights)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(fused))
  assert_match(fused, naive)


def test_leading_batch_dimensions():
  hidden, head, labels, cost, _ = make_problem(n=12)
  flat = emoloss.fused_token_stats(hidden, head, labels, cost, chunk_size=8)
  batched = emoloss.fused_token_stats(hidden.reshape(3, 4, -1), head, labels.reshape(3, 4), cost,
                                 chunk_size=8)
  for a, b in zip(batched, flat):
    assert a.shape == (3, 4)
    np.testing.assert_array_equal(np.asarray(a).reshape(-1), b)


@pytest.mark.parametrize("with_options", [False, True])
def test_bfloat16_hidden_and_head(with_options):
  """bf16 matmul inputs with float32 accumulation. Values are compared with the float32 naive
  path on the same (upcast) numbers to 1e-5 relative (bf16 x bf16 products are exact in float32);
  gradients come back in bfloat16, so they agree to bf16 rounding: 1e-2 relative to the largest
  entry."""
  hidden, head, labels, cost, weights = make_problem(n=16, v=50, d=16, k=8, seed=5)
  hidden16, head16 = hidden.astype(jnp.bfloat16), head.astype(jnp.bfloat16)
  options = OPTIONS["all three"] if with_options else {}
  fused = values_and_grads(
      lambda h, w: fused_outputs(h, w, labels, cost, chunk_size=16, **options),
      hidden16, head16, weights)
  exact = values_and_grads(lambda h, w: naive_outputs(h, w, labels, cost, **options),
                           hidden16.astype(jnp.float32), head16.astype(jnp.float32), weights)
  for name, a, b in zip(("nll", "emo", "lse", "entropy"), fused[0], exact[0]):
    assert a.dtype == jnp.float32
    assert_close(a, b, RTOL, name)
  for name, a, b in zip(("d hidden", "d head"), fused[1], exact[1]):
    assert a.dtype == jnp.bfloat16
    assert_close(a, b, 1e-2, name)


@pytest.mark.parametrize("mode", [1, 2])
def test_fused_emo_ce_loss_matches_emo_ce_loss(mode):
  hidden, head, labels, cost, weights = make_problem(v=41, seed=6)
  where = jnp.arange(hidden.shape[0]) != 4
  def fused(h, w):
    return emoloss.fused_emo_ce_loss(h, w, labels, cost, mode=mode, where=where, chunk_size=8)
  def naive(h, w):
    return emo_ce_loss(h @ w.T, labels, cost, mode=mode, where=where)
  @functools.partial(jax.jit, static_argnums=0)
  def value_and_grads(fn):
    grads = jax.grad(lambda h, w: jnp.sum(weights[0] * fn(h, w)), argnums=(0, 1))(hidden, head)
    return fn(hidden, head), grads
  results = [value_and_grads(fn) for fn in (fused, naive)]
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    assert_close(a, b)


def test_no_gradient_to_cost_embeddings():
  hidden, head, labels, cost, _ = make_problem()
  d_cost = jax.grad(lambda e: jnp.sum(emoloss.fused_token_stats(hidden, head, labels, e).emo))(cost)
  np.testing.assert_array_equal(d_cost, np.zeros_like(cost))


@pytest.mark.parametrize("vocab", [32768, 32000])
def test_compiled_program_never_holds_the_logits(vocab):
  """XLA's buffer assignment for value-and-grad: temporaries far below one [N, V] float32."""
  n, d, k = 1024, 64, 64
  s = jax.ShapeDtypeStruct
  args = (s((n, d), jnp.float32), s((vocab, d), jnp.float32), s((n,), jnp.int32),
          s((vocab, k), jnp.float32))
  loss = lambda h, w, y, e: jnp.mean(emoloss.fused_emo_ce_loss(h, w, y, e, chunk_size=1024))
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = n * vocab * 4
  assert temp < 0.1 * logits_bytes, (temp, logits_bytes)


def test_argument_errors():
  hidden, head, labels, cost, _ = make_problem()
  with pytest.raises(ValueError, match="head"):
    emoloss.fused_token_stats(hidden, head[:, :3], labels)
  with pytest.raises(TypeError, match="labels"):
    emoloss.fused_token_stats(hidden, head, labels.astype(jnp.float32))
  with pytest.raises(ValueError, match="labels"):
    emoloss.fused_token_stats(hidden, head, labels[:3])
  with pytest.raises(ValueError, match="cost_embeddings"):
    emoloss.fused_token_stats(hidden, head, labels, cost[:5])
  with pytest.raises(ValueError, match="chunk_size"):
    emoloss.fused_token_stats(hidden, head, labels, chunk_size=0)
  with pytest.raises(ValueError, match="where"):
    emoloss.fused_token_stats(hidden, head, labels, where=jnp.ones(3, bool))
  with pytest.raises(TypeError, match="hidden"):
    emoloss.fused_token_stats(hidden.astype(jnp.int32), head, labels)
  with pytest.raises(ValueError, match="mode"):
    emoloss.fused_emo_ce_loss(hidden, head, labels, cost, mode=3)
  with pytest.raises(ValueError, match="softcap"):
    emoloss.fused_token_stats(hidden, head, labels, softcap=-1.0)
  with pytest.raises(ValueError, match="temperature"):
    emoloss.fused_token_stats(hidden, head, labels, temperature=-1.0)
  with pytest.raises(ValueError, match="label_smoothing"):
    emoloss.fused_token_stats(hidden, head, labels, label_smoothing=1.5)
  with pytest.raises(TypeError, match="temperature"):
    jax.jit(lambda t: emoloss.fused_token_stats(hidden, head, labels, temperature=t).nll)(2.0)
  # NumPy integers and floats are static values like Python ones.
  np.testing.assert_array_equal(
      emoloss.fused_token_stats(hidden, head, labels, chunk_size=np.int64(8),
                           temperature=np.float32(2.0)).nll,
      emoloss.fused_token_stats(hidden, head, labels, chunk_size=8, temperature=2.0).nll)


@pytest.mark.experiments  # 8-device subprocess: second test lane
def test_sharded_matches_single_device_on_8_cpu_devices():
  """tests/fused/sharded_check.py in a subprocess with 8 simulated CPU devices."""
  helpers.run_on_8_cpu_devices("sharded_check.py")


def test_an_nnx_linear_kernel_transposed_is_the_head():
  """nnx.Linear(d, V) computes x @ kernel with kernel [d, V]: its transpose is the [V, d] head."""
  from flax import nnx  # pylint: disable=import-outside-toplevel

  layer = nnx.Linear(8, 32, use_bias=False, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(6, 8)).astype(np.float32)
  labels = rng.integers(0, 32, size=6)
  out = emoloss.fused_token_stats(hidden, layer.kernel[...].T, labels, chunk_size=8)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(layer(hidden), labels)
  np.testing.assert_allclose(out.nll, ce, rtol=1e-5, atol=1e-5)
