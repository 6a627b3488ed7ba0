"""MixCE: against a NumPy reference, its gradient, extreme inputs, masks, bf16, jit, and the
fused counterpart (emoloss.fused_mixce_loss) against the loss on materialised logits."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import emoloss
from tests.losses.reference import SIZES_N, SIZES_V, log_softmax, random_problem


def numpy_mixce(logits, labels, eta):
  """(η + (1 - η) p_y) · (-log p_y) in float64."""
  logp_y = log_softmax(logits)[np.arange(len(labels)), labels]
  return (eta + (1 - eta) * np.exp(logp_y)) * -logp_y


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.5, 1.0])
def test_matches_numpy_eager_and_jit(eta):
  logits, labels = random_problem(n=10, v=6, seed=1)
  want = numpy_mixce(logits, labels, eta)
  f = lambda z, y: emoloss.mixce_loss(z, y, eta=eta)
  np.testing.assert_allclose(f(logits, labels), want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(f)(logits, labels), want, rtol=1e-5, atol=1e-6)


def test_gradient_holds_the_weight_constant():
  """∇L = w ∇(-log p_y) with w = η + (1 - η) p_y from the current p (stop-gradient): the
  jitted gradient against a hand-written one from optax's cross-entropy."""
  logits, labels = random_problem(n=6, v=5, seed=3)
  z = jnp.asarray(logits)
  nll = lambda z: optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)
  w = 0.4 + 0.6 * np.exp(-np.asarray(nll(z), np.float64))
  want = jax.grad(lambda z: (jnp.asarray(w, jnp.float32) * nll(z)).sum())(z)
  got = jax.jit(jax.grad(lambda z: emoloss.mixce_loss(z, labels, eta=0.4).sum()))(z)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_eta_one_is_cross_entropy_with_finite_difference_gradient():
  logits, labels = random_problem(n=4, v=5)
  f = lambda z: emoloss.mixce_loss(z, labels, eta=1.0)  # w = 1: no stop-gradient at play
  check_grads(f, (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2,
                            rtol=2e-2)


def test_saturated_and_minus_inf_logits_are_finite():
  margins = np.array([0.0, 1.0, 10.0, 100.0], np.float32)
  logits = np.zeros((4, 3), np.float32)
  logits[:, 0] = margins  # target 0 wins by the margin (p_y -> 1, loss -> 0)
  labels = np.zeros(4, np.int32)
  got = np.asarray(emoloss.mixce_loss(logits, labels, eta=0.5))
  # float32 log-softmax: absolute error about eps · (1 + margin) in -log p_y.
  want = numpy_mixce(logits, labels, 0.5)
  assert np.all(np.abs(got - want) <= 1e-5 * want + 2 * 6e-8 * (1 + margins)), (got, want)
  huge = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], np.float32)
  labels = np.array([0, 0])
  value, grad = jax.value_and_grad(lambda z: emoloss.mixce_loss(z, labels).sum())(huge)
  assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
  # Row 1 is badly wrong: p_y = e^-2e4 -> weight η, loss η · 2e4.
  np.testing.assert_allclose(emoloss.mixce_loss(huge, labels)[1], 0.5 * 2e4, rtol=1e-6)
  minus_inf = np.array([[2.0, -np.inf, 0.5]], np.float32)
  value, grad = jax.value_and_grad(lambda z: emoloss.mixce_loss(z, np.array([0])).sum())(
      minus_inf)
  np.testing.assert_allclose(value, numpy_mixce(minus_inf, [0], 0.5).sum(), rtol=1e-5)
  assert np.all(np.isfinite(grad)) and grad[0, 1] == 0.0


def test_masked_rows_give_zero_whatever_their_content():
  logits, labels = random_problem(n=5, v=4, seed=4)
  logits[1] = np.nan
  logits[3] = np.inf
  where = np.array([True, False, True, False, True])
  f = lambda z: emoloss.mixce_loss(z, labels, where=where)
  value = np.asarray(f(logits))
  grad = np.asarray(jax.grad(lambda z: f(z).sum())(jnp.asarray(logits)))
  assert np.all(value[~where] == 0.0) and np.all(grad[~where] == 0.0)
  np.testing.assert_allclose(value[where], numpy_mixce(logits[where], labels[where], 0.5),
                             rtol=1e-5)
  assert np.all(np.asarray(f(np.zeros_like(logits)) * 0 == 0))
  all_masked = emoloss.mixce_loss(logits, labels, where=np.zeros(5, bool))
  assert np.all(np.asarray(all_masked) == 0.0)


def test_bfloat16_is_computed_in_float32():
  logits, labels = random_problem(n=6, v=7, seed=5, scale=3.0)
  low = jnp.asarray(logits, jnp.bfloat16)
  got = emoloss.mixce_loss(low, labels)
  assert got.dtype == jnp.float32
  want = numpy_mixce(np.asarray(low.astype(jnp.float32)), labels, 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_named():
  logits, labels = random_problem()
  for eta in (-0.1, 1.5):
    with pytest.raises(ValueError, match="eta"):
      emoloss.mixce_loss(logits, labels, eta=eta)
  with pytest.raises(TypeError, match="labels"):
    emoloss.mixce_loss(logits, np.eye(logits.shape[1], dtype=np.float32)[labels])
  with pytest.raises(ValueError, match="labels"):
    emoloss.mixce_loss(logits, labels[:-1])


@hypothesis.settings(deadline=None, max_examples=10, derandomize=True)
@hypothesis.given(v=SIZES_V, n=SIZES_N, scale=st.floats(0.0, 40.0),
                  seed=st.integers(0, 2**16), eta=st.floats(0.0, 1.0))
def test_lies_between_tv_and_cross_entropy(v, n, scale, seed, eta):
  """w ∈ [p_y, 1]: p_y · CE <= MixCE <= CE, with equality at η = 0 and η = 1."""
  logits, labels = random_problem(n, v, seed, scale)
  ce = np.asarray(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels),
                  np.float64)
  got = np.asarray(emoloss.mixce_loss(logits, labels, eta=eta), np.float64)
  tol = 1e-5 * (1 + ce)
  assert np.all(got <= ce + tol) and np.all(got >= np.exp(-ce) * ce - tol)
  np.testing.assert_allclose(emoloss.mixce_loss(logits, labels, eta=1.0), ce, rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_fused_counterpart_matches_materialised_logits(with_mask):
  """fused_mixce_loss(h, W, y) = mixce_loss(h Wᵀ, y): values and gradients in h and W, the
  vocabulary (37) not a multiple of the chunk (8)."""
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.standard_normal((12, 8)), jnp.float32)
  head = jnp.asarray(rng.standard_normal((37, 8)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 37, 12), jnp.int32)
  where = np.arange(12) % 3 != 1 if with_mask else None

  def naive(h, w):
    return emoloss.mixce_loss(h @ w.T, labels, eta=0.3, where=where)

  def fused(h, w):
    return emoloss.fused_mixce_loss(h, w, labels, eta=0.3, where=where, chunk_size=8)

  np.testing.assert_allclose(jax.jit(fused)(hidden, head), naive(hidden, head), rtol=1e-5,
                             atol=1e-6)
  grad = lambda f: jax.grad(lambda h, w: f(h, w).sum(), argnums=(0, 1))(hidden, head)
  for got, want in zip(grad(fused), grad(naive)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
