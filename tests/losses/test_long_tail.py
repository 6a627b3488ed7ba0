import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import emoloss
from tests.losses.reference import SIZES_N, SIZES_V, log_softmax, random_problem, softmax


def pairwise_logit_adjusted(logits, labels, prior, tau):
  """Menon et al.'s pairwise form log[1 + Σ_{y'≠y} (π_{y'}/π_y)^τ e^{z_{y'} - z_y}]."""
  z = np.asarray(logits, np.float64)
  out = []
  for row, y in zip(z, labels):
    others = [k for k in range(len(row)) if k != y]
    terms = (prior[others] / prior[y]) ** tau * np.exp(row[others] - row[y])
    out.append(np.log1p(terms.sum()))
  return np.array(out)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjusted_matches_pairwise_form(tau):
  logits, labels = random_problem(n=9, v=6)
  prior = np.array([0.5, 0.2, 0.12, 0.1, 0.05, 0.03])
  got = emoloss.logit_adjusted_cross_entropy(logits, labels, prior * 17.0, tau=tau)  # counts ok
  np.testing.assert_allclose(got, pairwise_logit_adjusted(logits, labels, prior, tau),
                             rtol=1e-5, atol=1e-6)


def test_zero_count_class_is_finite_and_soft_labels():
  logits, labels = random_problem(n=5, v=4, seed=3)
  prior = np.array([3.0, 1.0, 0.0, 6.0])
  loss = emoloss.logit_adjusted_cross_entropy(logits, labels, prior)
  g = jax.grad(lambda z: emoloss.logit_adjusted_cross_entropy(z, labels, prior).sum())(logits)
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(g))
  soft = softmax(np.random.default_rng(0).normal(size=logits.shape))
  adjusted = logits + np.log((prior / prior.sum()) + 1e-12)
  want = -np.sum(soft * log_softmax(adjusted), -1)
  np.testing.assert_allclose(emoloss.logit_adjusted_cross_entropy(logits, soft, prior), want,
                             rtol=1e-5)


def test_posthoc_adjustment_favours_rare_classes():
  prior = np.array([0.9, 0.1])
  logits = np.array([[1.0, 0.0]], np.float32)  # plain argmax: class 0
  adjusted = emoloss.posthoc_logit_adjustment(logits, prior, tau=1.0)
  np.testing.assert_allclose(adjusted, logits - np.log(prior), rtol=1e-6)
  assert int(np.argmax(adjusted)) == 1  # 1 - log .9 < 0 - log .1


def test_margin_cross_entropy_matches_numpy():
  logits, labels = random_problem(n=7, v=5, seed=5)
  margins = np.array([0.1, 0.5, 1.0, 0.0, 2.0])
  z = logits.astype(np.float64).copy()
  z[np.arange(7), labels] -= margins[labels]
  want = -log_softmax(z)[np.arange(7), labels]
  np.testing.assert_allclose(emoloss.margin_cross_entropy(logits, labels, margins), want,
                             rtol=1e-5)
  f = lambda z: emoloss.margin_cross_entropy(z, labels, margins)
  check_grads(f, (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  check_grads(jax.jit(f), (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  per_row = jax.vmap(lambda z, y: emoloss.margin_cross_entropy(z, y, margins))(logits, labels)
  np.testing.assert_allclose(per_row, f(logits), rtol=1e-6)


def test_bad_prior_and_tau():
  logits, labels = random_problem(v=4)
  with pytest.raises(ValueError, match="class_prior"):
    emoloss.logit_adjusted_cross_entropy(logits, labels, np.ones(3))
  with pytest.raises(ValueError, match="class_prior"):
    emoloss.logit_adjusted_cross_entropy(logits, labels, np.array([1.0, -1.0, 1.0, 1.0]))
  with pytest.raises(ValueError, match="tau"):
    emoloss.logit_adjusted_cross_entropy(logits, labels, np.ones(4), tau=-1.0)
  with pytest.raises(ValueError, match="margins"):
    emoloss.margin_cross_entropy(logits, labels, np.ones(5))


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(v=SIZES_V, n=SIZES_N, scale=st.floats(0.0, 30.0),
                  seed=st.integers(0, 2**16), tau=st.floats(0.0, 3.0))
def test_uniform_prior_and_zero_margin_give_cross_entropy(v, n, scale, seed, tau):
  logits, labels = random_problem(n, v, seed, scale)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(
      emoloss.logit_adjusted_cross_entropy(logits, labels, np.ones(v), tau=tau), ce,
      rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(emoloss.margin_cross_entropy(logits, labels, np.zeros(v)), ce,
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Norm-aware margin: the worst feature perturbation of radius r_y, logit by logit.


def norm_aware_numpy(logits, labels, norms, radii):
  """-log softmax(z')_y with z'_y = z_y - r_y‖u_y‖, z'_i = z_i + r_y‖u_i‖, in float64."""
  z = np.asarray(logits, np.float64).copy()
  n = len(labels)
  r = np.asarray(radii, np.float64)[labels][:, None]
  z += r * np.asarray(norms, np.float64)[None, :]
  z[np.arange(n), labels] -= 2 * r[:, 0] * np.asarray(norms, np.float64)[labels]
  return -log_softmax(z)[np.arange(n), labels]


def circle(radius, count=20001):
  angles = np.linspace(0.0, 2 * np.pi, count)
  return radius * np.stack([np.cos(angles), np.sin(angles)], -1)  # [count, 2]


def test_norm_aware_margin_matches_numpy_and_gradients():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(7, 3)).astype(np.float32)
  weights = rng.normal(size=(5, 3)).astype(np.float32)  # U [V, k]
  labels = rng.integers(0, 5, size=7)
  radii = np.array([0.1, 0.5, 1.0, 0.0, 2.0], np.float32)
  logits = features @ weights.T
  norms = np.linalg.norm(weights, axis=-1)
  want = norm_aware_numpy(logits, labels, norms, radii)
  f = lambda z, u: emoloss.norm_aware_margin_cross_entropy(z, labels, u, radii)
  np.testing.assert_allclose(f(logits, norms), want, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(f)(logits, norms), want, rtol=1e-5)
  check_grads(jax.jit(f), (jnp.asarray(logits), jnp.asarray(norms)), order=1, modes=["rev"],
              atol=2e-2, rtol=2e-2)
  # From features and the weight matrix: the gradient reaches U through the logits and norms.
  def from_features(u):
    return jnp.sum(emoloss.norm_aware_margin_cross_entropy(
        features @ u.T, labels, jnp.linalg.norm(u, axis=-1), radii))
  check_grads(jax.jit(from_features), (jnp.asarray(weights),), order=1, modes=["rev"], atol=2e-2,
              rtol=2e-2)
  # Zero radii: cross-entropy; equal radii r and norms 1: a constant pairwise margin 2r.
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(
      emoloss.norm_aware_margin_cross_entropy(logits, labels, norms, np.zeros(5)), ce, rtol=1e-5)
  np.testing.assert_allclose(
      emoloss.norm_aware_margin_cross_entropy(logits, labels, np.ones(5), np.full(5, 0.3)),
      emoloss.margin_cross_entropy(logits, labels, np.full(5, 0.6)), rtol=1e-5)


def test_norm_aware_margin_recipe_with_a_zero_initialised_head():
  """Issue 20, item 7: the docstring's recipe gave NaN gradients when a class row of the head is
  zero (a zero-initialised head), even with zero radii (``jnp.linalg.norm`` has a 0/0 gradient
  there). With the documented ``optax.safe_norm(U, 0.0, axis=-1)`` the gradient is finite and,
  where no row is zero, equal to that of ``jnp.linalg.norm``; eagerly and under jit."""
  rng = np.random.default_rng(4)
  features = rng.normal(size=(6, 3)).astype(np.float32)
  labels = rng.integers(0, 5, size=6)

  def recipe(u, radii, norm=lambda u: optax.safe_norm(u, 0.0, axis=-1)):
    return jnp.sum(emoloss.norm_aware_margin_cross_entropy(features @ u.T, labels, norm(u),
                                                           radii))

  naive = lambda u, radii: recipe(u, radii, norm=lambda u: jnp.linalg.norm(u, axis=-1))
  grad, jit_grad, naive_grad = jax.grad(recipe), jax.jit(jax.grad(recipe)), jax.jit(jax.grad(naive))
  zero_head = np.zeros((5, 3), np.float32)
  partly_zero = rng.normal(size=(5, 3)).astype(np.float32)
  partly_zero[2] = 0.0
  for radii in (np.zeros(5, np.float32), np.linspace(0.0, 1.0, 5, dtype=np.float32)):
    assert np.isnan(naive_grad(zero_head, radii)).any()  # the old recipe
    for head in (zero_head, partly_zero):
      for fn in (grad, jit_grad):
        assert np.all(np.isfinite(fn(head, radii)))
    # Zero head: the loss is log V whatever the radii, its gradient that of cross-entropy.
    ce_grad = jax.grad(lambda u: jnp.sum(optax.losses.softmax_cross_entropy_with_integer_labels(
        features @ u.T, labels)))(zero_head)
    np.testing.assert_allclose(jit_grad(zero_head, radii), ce_grad, rtol=1e-6, atol=1e-7)
    head = rng.normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(jit_grad(head, radii), naive_grad(head, radii), rtol=1e-6,
                               atol=1e-7)


def test_norm_aware_margin_is_the_worst_case_of_per_logit_perturbations():
  """Brute force on a tiny problem: each logit perturbed by its own δ_i, ‖δ_i‖ = r_y (the loss
  is monotone in each logit, so the worst case takes each extreme separately), and one shared δ
  (an upper bound, reached with antiparallel weights)."""
  rng = np.random.default_rng(1)
  features = rng.normal(size=(4, 2))
  weights = rng.normal(size=(3, 2))
  labels = np.array([0, 1, 2, 1])
  radii = np.array([0.3, 0.8, 1.5])
  got = np.asarray(emoloss.norm_aware_margin_cross_entropy(
      (features @ weights.T).astype(np.float32), labels,
      np.linalg.norm(weights, axis=-1).astype(np.float32), radii.astype(np.float32)))
  for row, (f, y) in enumerate(zip(features, labels)):
    deltas = circle(radii[y])
    moves = deltas @ weights.T  # [count, V]: ⟨δ, u_i⟩ for every sampled δ
    worst = f @ weights.T + np.where(np.arange(3) == y, moves.min(0), moves.max(0))
    np.testing.assert_allclose(got[row], -log_softmax(worst)[y], rtol=1e-5)
    shared = -log_softmax((f + deltas) @ weights.T)[:, y]  # one δ for all logits
    assert shared.max() <= got[row] * (1 + 1e-6)
  # Two classes with u_1 = -2 u_0: one shared δ already reaches the bound.
  weights = np.array([[0.6, -0.8], [-1.2, 1.6]])
  labels = np.array([0, 1, 1, 0])
  radii = np.array([0.4, 1.1])
  got = emoloss.norm_aware_margin_cross_entropy(
      (features @ weights.T).astype(np.float32), labels,
      np.linalg.norm(weights, axis=-1).astype(np.float32), radii.astype(np.float32))
  for row, (f, y) in enumerate(zip(features, labels)):
    shared = -log_softmax((f + circle(radii[y])) @ weights.T)[:, y]
    np.testing.assert_allclose(got[row], shared.max(), rtol=1e-5)


def test_norm_aware_margin_mask_and_checks():
  logits, labels = random_problem(n=6, v=4, seed=2)
  norms, radii = np.array([1.0, 2.0, 0.5, 1.5]), np.array([0.2, 0.4, 0.6, 0.8])
  where = np.array([True, False, True, True, False, True])
  garbage = logits.copy()
  garbage[~where] = np.nan
  f = lambda z: emoloss.norm_aware_margin_cross_entropy(z, labels, norms, radii, where=where)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(f(z))))(jnp.asarray(garbage))
  full = emoloss.norm_aware_margin_cross_entropy(logits, labels, norms, radii)
  np.testing.assert_allclose(f(garbage), np.where(where, full, 0.0), rtol=1e-6)
  assert np.all(np.asarray(grad)[~where] == 0) and np.all(np.isfinite(grad))
  with pytest.raises(ValueError, match="class_weight_norms"):
    emoloss.norm_aware_margin_cross_entropy(logits, labels, np.ones(3), radii)
  with pytest.raises(ValueError, match="radii"):
    emoloss.norm_aware_margin_cross_entropy(logits, labels, norms, -radii)
  with pytest.raises(TypeError, match="labels"):
    emoloss.norm_aware_margin_cross_entropy(logits, logits, norms, radii)
