"""EXACT as its authors train it: logit batch normalisation, margin, scheduled σ.

The reference is an independent NumPy version of the official criterion (tinkoff-ai/exact,
``src/exact_pytorch/criterion.py``): normalise the whole logit tensor by its mean and (unbiased)
standard deviation, clip ``z_y - z_i`` at the margin, divide by σ, and estimate the orthant
probability ``P(N(Δ, I + 11ᵀ) > 0)`` with Genz's separation-of-variables Monte Carlo (the
official ``integral.py`` uses the same estimator with 16 samples; here 20000, so the comparison
is within a few standard errors).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from scipy import special

from emoloss.losses import exact_loss


def batch_norm_numpy(logits, where=None):
  """``(z - mean) / std`` over every entry of the unmasked rows (``std`` with ``n - 1``)."""
  z = np.asarray(logits, np.float64)
  kept = z if where is None else z[np.asarray(where)]
  return (z - kept.mean()) / kept.std(ddof=1)


def genz_orthant_probability(deltas, num_samples=20000, seed=0):
  """``P(X > 0)`` for ``X ~ N(Δ, I + 11ᵀ)`` by Genz's Monte Carlo: ``(estimate, std error)``."""
  d = len(deltas)
  chol = np.linalg.cholesky(np.eye(d) + np.ones((d, d)))
  u = np.random.default_rng(seed).random((num_samples, d))
  w = np.zeros((num_samples, d))
  weight = np.ones(num_samples)
  for i in range(d):
    # X_i = Δ_i + Σ_{j<i} L_ij w_j + L_ii w_i > 0  <=>  w_i > a_i.
    lower = -(deltas[i] + w[:, :i] @ chol[i, :i]) / chol[i, i]
    cdf_lower = special.ndtr(lower)
    weight *= 1.0 - cdf_lower
    w[:, i] = special.ndtri(np.minimum(cdf_lower + u[:, i] * (1.0 - cdf_lower), 1 - 1e-16))
  return weight.mean(), weight.std(ddof=1) / np.sqrt(num_samples)


def official_criterion_numpy(logits, labels, sigma, margin=None, batch_norm=True, where=None):
  """Per-example ``1 - P(y)`` of the official criterion and the Monte Carlo standard errors."""
  z = batch_norm_numpy(logits, where) if batch_norm else np.asarray(logits, np.float64)
  losses, errors = [], []
  for row, y in zip(z, labels):
    deltas = row[y] - np.delete(row, y)
    if margin is not None:
      deltas = np.minimum(deltas, margin)
    prob, error = genz_orthant_probability(deltas / sigma)
    losses.append(1.0 - prob)
    errors.append(error)
  return np.array(losses), np.array(errors)


def _problem(seed, n=6, v=5, scale=3.0, shift=2.0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(n, v)) * scale + shift).astype(np.float32)
  return logits, rng.integers(0, v, n)


@pytest.mark.parametrize("sigma,margin", [(1.0, 0.5), (0.3, None), (2.0, 5.0)])
def test_matches_the_official_criterion(sigma, margin):
  logits, labels = _problem(0)
  want, error = official_criterion_numpy(logits, labels, sigma, margin)
  got = np.asarray(exact_loss(logits, labels, sigma=sigma, margin=margin, batch_norm=True))
  assert np.all(np.abs(got - want) <= 4 * error + 1e-5), (got, want, error)


def test_batch_norm_is_invariant_to_the_logit_scale_and_shift():
  logits, labels = _problem(1)
  f = jax.jit(lambda z: exact_loss(z, labels, sigma=0.8, margin=1.0, batch_norm=True))
  np.testing.assert_allclose(f(logits * 7.0 - 3.0), f(logits), rtol=2e-5, atol=1e-6)
  # Without the batch norm the scale matters.
  assert not np.allclose(exact_loss(logits * 7.0, labels, sigma=0.8),
                         exact_loss(logits, labels, sigma=0.8), atol=1e-3)
  # Equal logits (zero spread): no division by zero, P = 1/V.
  flat = np.full((6, 5), 2.5, np.float32)
  np.testing.assert_allclose(exact_loss(flat, labels, batch_norm=True), 0.8, rtol=1e-5)


def test_masked_rows_are_left_out_of_the_statistic_and_inert():
  logits, labels = _problem(2, n=8)
  where = np.array([True, True, False, True, False, True, True, True])
  garbage = logits.copy()
  garbage[~where] = np.array([np.nan, np.inf, -np.inf, 1e30, 0.0])
  f = jax.jit(lambda z, w=where: exact_loss(z, labels, sigma=0.7, margin=0.5, batch_norm=True,
                                            where=w))
  got = np.asarray(f(garbage))
  kept = exact_loss(logits[where], labels[where], sigma=0.7, margin=0.5, batch_norm=True)
  np.testing.assert_allclose(got[where], kept, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[~where], 0.0)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(f(z))))(garbage)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~where] == 0.0)
  assert np.all(np.asarray(f(garbage, np.zeros(8, bool))) == 0.0)


def test_gradients_through_the_batch_statistic():
  logits, labels = _problem(3, scale=1.0, shift=0.0)
  f = jax.jit(lambda z: exact_loss(z, labels, sigma=0.9, margin=0.8, batch_norm=True))
  check_grads(f, (jnp.asarray(logits, jnp.float32),), order=1, modes=["rev"], atol=2e-2,
              rtol=2e-2, eps=1e-2)
  # The statistic is differentiated: the summed loss is invariant to a common shift and scale,
  # so its gradient is orthogonal to both directions.
  g = np.asarray(jax.grad(lambda z: jnp.sum(f(z)))(jnp.asarray(logits)), np.float64)
  assert abs(np.sum(g)) < 1e-4 * np.abs(g).sum()
  assert abs(np.sum(g * logits)) < 1e-3 * np.abs(g * logits).sum()


def test_scheduled_sigma_under_jit():
  """σ may be a traced scalar, e.g. a schedule of the step inside a jitted training step."""
  logits, labels = _problem(4)
  schedule = optax.exponential_decay(10.0, 100, 0.1)  # the authors' σ: 10 → 1 log-linearly
  f = jax.jit(lambda z, step: exact_loss(z, labels, sigma=schedule(step), margin=0.5,
                                         batch_norm=True))
  for step in (0, 50, 99):
    np.testing.assert_allclose(
        f(logits, step), exact_loss(logits, labels, sigma=float(schedule(step)), margin=0.5,
                                    batch_norm=True), rtol=1e-5, atol=1e-6)
  # Correctly classified examples: less noise, fewer expected errors as σ decays.
  correct = np.argmax(logits, -1)
  errors = [np.asarray(exact_loss(logits, correct, sigma=float(schedule(t)), margin=0.5,
                                  batch_norm=True)) for t in (0, 50, 99)]
  assert np.all(np.diff(errors, axis=0) < 0)


def test_minus_inf_and_extreme_logits_with_batch_norm():
  """A -inf logit (vocabulary mask) stays out of the statistic and loses for sure; ±1e4 logits
  stay finite."""
  logits, labels = _problem(5)
  masked_vocab = logits.copy()
  masked_vocab[:, 4] = -np.inf
  labels = np.where(labels == 4, 0, labels)
  # (No margin here: a margin caps z_y - z_i at m even for z_i = -inf, so that class competes.)
  f = jax.jit(lambda z: exact_loss(z, labels, sigma=0.7, batch_norm=True))
  loss, grad = jax.value_and_grad(lambda z: jnp.sum(f(z)))(jnp.asarray(masked_vocab))
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  # Same as normalising the four finite classes only (the -inf class never wins).
  want, error = official_criterion_numpy(logits[:, :4], labels, 0.7)
  assert np.all(np.abs(np.asarray(f(masked_vocab)) - want) <= 4 * error + 1e-5)
  extreme = np.where(np.random.default_rng(6).random(logits.shape) > 0.5, 1e4, -1e4)
  loss, grad = jax.value_and_grad(lambda z: jnp.sum(f(z)))(jnp.asarray(extreme, jnp.float32))
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
