"""Tests of the batch-level ``-log E_D[p]`` objective and EXACT's version of it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from scipy import special

import emoloss
from emoloss.losses import exact_batch_loss, negative_log_mean_likelihood
from tests.losses.reference import exact_deltas, exact_log_prob


def _reference(nll, where=None):
  """-log of the mean of exp(-nll) over the kept rows, float64 NumPy, written the direct way."""
  nll = np.asarray(nll, np.float64)
  keep = np.ones(nll.shape, bool) if where is None else np.asarray(where)
  return -np.log(np.mean(np.exp(-nll[keep])))


def test_exported():
  assert emoloss.negative_log_mean_likelihood is negative_log_mean_likelihood
  assert emoloss.exact_batch_loss is exact_batch_loss


@pytest.mark.parametrize("scale", [0.3, 3.0, 300.0])
def test_reduction_matches_numpy_with_and_without_mask(scale):
  rng = np.random.default_rng(int(scale * 10))
  nll = (rng.exponential(size=(3, 5)) * scale).astype(np.float32)
  where = rng.random((3, 5)) < 0.6
  got = negative_log_mean_likelihood(nll)
  if scale < 100:  # the direct NumPy formula underflows exp(-ℓ) beyond ~700
    np.testing.assert_allclose(got, _reference(nll), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(negative_log_mean_likelihood(nll, where=where),
                               _reference(nll, where), rtol=2e-6, atol=2e-6)
  else:  # log-space reference: log n - (max(-ℓ) + log Σ exp(-ℓ - max))
    x = -nll.astype(np.float64).ravel()
    want = np.log(x.size) - (x.max() + np.log(np.sum(np.exp(x - x.max()))))
    np.testing.assert_allclose(got, want, rtol=2e-6)
  assert got.dtype == jnp.float32 and got.shape == ()


def test_jensen_bound_and_equality_for_equal_likelihoods():
  nll = np.array([0.1, 2.0, 7.0, 0.5], np.float32)
  assert float(negative_log_mean_likelihood(nll)) < float(np.mean(nll))
  equal = np.full(4, 1.3, np.float32)
  np.testing.assert_allclose(negative_log_mean_likelihood(equal), 1.3, rtol=1e-6)


def test_gradient_is_each_examples_share_of_the_likelihood():
  """∂L/∂ℓ_i = p_i / Σ_j p_j over the kept rows, 0 for masked ones (whatever they hold)."""
  nll = np.array([0.2, 1.0, 5.0, np.nan, 30.0], np.float32)
  where = np.array([True, True, True, False, True])
  grad = jax.grad(lambda x: negative_log_mean_likelihood(x, where=where))(nll)
  p = np.exp(-np.where(where, nll, np.inf).astype(np.float64))
  np.testing.assert_allclose(grad, p / p.sum(), rtol=1e-5, atol=1e-12)
  value = negative_log_mean_likelihood(nll, where=where)
  np.testing.assert_allclose(value, _reference(nll, where), rtol=1e-6)


def test_reduction_gradients_by_finite_differences_eager_and_jit():
  nll = jnp.asarray([0.3, 1.2, 2.5, 0.05, 4.0])
  where = jnp.asarray([True, False, True, True, True])
  f = lambda x: negative_log_mean_likelihood(x, where=where)
  tol = {"order": 2, "modes": ["rev", "fwd"], "atol": 1e-2, "rtol": 1e-2, "eps": 1e-2}
  check_grads(f, (nll,), **tol)
  check_grads(jax.jit(f), (nll,), **tol)


def test_fully_masked_empty_infinite_and_nan():
  nll = jnp.asarray([np.nan, np.inf, 1.0])
  none = jnp.zeros(3, bool)
  value, grad = jax.value_and_grad(lambda x: negative_log_mean_likelihood(x, where=none))(nll)
  assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)
  assert float(negative_log_mean_likelihood(jnp.zeros((0,)))) == 0.0
  # p = 0 for one row: it counts in n with zero likelihood, gradient 0 for it.
  with_inf = jnp.asarray([np.inf, 0.5])
  value, grad = jax.value_and_grad(negative_log_mean_likelihood)(with_inf)
  np.testing.assert_allclose(value, np.log(2.0) + 0.5, rtol=1e-6)
  np.testing.assert_allclose(grad, [0.0, 1.0], atol=1e-7)
  assert np.isnan(float(negative_log_mean_likelihood(jnp.asarray([np.nan, 0.5]))))
  with pytest.raises(ValueError, match="`where`"):
    negative_log_mean_likelihood(jnp.ones(3), where=jnp.ones(2, bool))
  with pytest.raises(TypeError, match="`neg_log_likelihood`"):
    negative_log_mean_likelihood(jnp.ones(3, jnp.int32))


def test_with_cross_entropy_is_minus_log_of_the_smoothed_accuracy():
  """With softmax CE, L = -log mean_i p_{y_i}, i.e. -log(1 - mean smoothed-accuracy loss)."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 2
  labels = rng.integers(0, 4, 6)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  smoothed = emoloss.smoothed_accuracy_loss(logits, labels)
  np.testing.assert_allclose(negative_log_mean_likelihood(ce), -np.log(1 - np.mean(smoothed)),
                             rtol=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_exact_batch_loss_matches_quadpack_reference(sigma):
  rng = np.random.default_rng(7)
  logits = (rng.normal(size=(5, 4)) * 2).astype(np.float32)
  labels = rng.integers(0, 4, 5)
  where = np.array([True, True, False, True, True])
  log_p = np.array([exact_log_prob(exact_deltas(z, y, sigma)) for z, y in zip(logits, labels)])
  for mask in (None, where):
    keep = np.ones(5, bool) if mask is None else mask
    want = -np.log(np.mean(np.exp(log_p[keep])))
    got = exact_batch_loss(logits, labels, sigma=sigma, num_nodes=32, where=mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_exact_batch_loss_two_classes_closed_form():
  """V = 2: P(y) = Φ((z_y - z_other) / (σ √2))."""
  diffs = np.array([-3.0, -0.5, 0.0, 1.0, 4.0], np.float32)
  logits = np.stack([diffs, np.zeros_like(diffs)], axis=-1)
  labels = np.zeros(5, np.int32)
  want = -np.log(np.mean(special.ndtr(diffs.astype(np.float64) / (1.5 * np.sqrt(2.0)))))
  np.testing.assert_allclose(exact_batch_loss(logits, labels, sigma=1.5), want, rtol=1e-5)


def test_exact_batch_loss_gradients_and_masked_garbage():
  rng = np.random.default_rng(3)
  logits = jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32))
  labels = jnp.asarray([0, 3, 1, 4])
  where = jnp.asarray([True, True, False, True])
  f = lambda z, s: exact_batch_loss(z, labels, sigma=s, num_nodes=32, margin=2.0, where=where)
  tol = {"order": 1, "modes": ["rev"], "atol": 1e-2, "rtol": 1e-2, "eps": 1e-2}
  check_grads(f, (logits, jnp.float32(0.8)), **tol)
  check_grads(jax.jit(f), (logits, jnp.float32(0.8)), **tol)
  garbage = logits.at[2].set(jnp.asarray([np.nan, np.inf, -np.inf, 1e30, 0.0]))
  value, grad = jax.value_and_grad(f)(garbage, jnp.float32(0.8))
  want, want_grad = jax.value_and_grad(f)(logits, jnp.float32(0.8))
  np.testing.assert_array_equal(value, want)
  np.testing.assert_array_equal(grad[2], 0.0)
  np.testing.assert_allclose(grad, want_grad.at[2].set(0.0), rtol=1e-6, atol=1e-7)
