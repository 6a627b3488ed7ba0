import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import emoloss
from tests.losses.reference import SIZES_N, SIZES_V, one_hot, random_problem, softmax


def numpy_focal(logits, target, gamma):
  p = softmax(logits)
  return -np.sum(target * (1 - p) ** gamma * np.log(p), axis=-1)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_matches_numpy(gamma):
  logits, labels = random_problem()
  want = numpy_focal(logits, one_hot(labels, logits.shape[1]), gamma)
  np.testing.assert_allclose(emoloss.softmax_focal_loss(logits, labels, gamma=gamma), want,
                             rtol=1e-5, atol=1e-6)
  soft = softmax(np.random.default_rng(1).normal(size=logits.shape))
  np.testing.assert_allclose(emoloss.softmax_focal_loss(logits, soft, gamma=gamma),
                             numpy_focal(logits, soft, gamma), rtol=1e-5, atol=1e-6)


def test_gradients_finite_differences_jit_and_vmap():
  logits, labels = random_problem(n=4, v=5)
  f = lambda z: emoloss.softmax_focal_loss(z, labels, gamma=2.0)
  check_grads(f, (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  check_grads(jax.jit(f), (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  per_row = jax.vmap(lambda z, y: emoloss.softmax_focal_loss(z, y))(logits, labels)
  np.testing.assert_allclose(per_row, emoloss.softmax_focal_loss(logits, labels), rtol=1e-6)


def test_small_gamma_has_finite_gradient_at_certainty():
  logits = jnp.array([[1e4, -1e4, 0.0]])
  g = jax.grad(lambda z: emoloss.softmax_focal_loss(z, jnp.array([0]), gamma=0.5).sum())(logits)
  assert np.all(np.isfinite(g))


def test_negative_gamma_rejected():
  logits, labels = random_problem()
  with pytest.raises(ValueError, match="gamma"):
    emoloss.softmax_focal_loss(logits, labels, gamma=-1.0)


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(v=SIZES_V, n=SIZES_N, scale=st.floats(0.0, 20.0),
                  seed=st.integers(0, 2**16), gamma=st.floats(0.0, 4.0))
def test_properties(v, n, scale, seed, gamma):
  logits, labels = random_problem(n, v, seed, scale)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(emoloss.softmax_focal_loss(logits, labels, gamma=0.0), ce,
                             rtol=1e-5, atol=1e-5)
  focal = np.asarray(emoloss.softmax_focal_loss(logits, labels, gamma=gamma))
  assert np.all(focal >= 0) and np.all(focal <= np.asarray(ce) + 1e-5)  # (1-p)^γ <= 1


def numpy_focal_alpha(logits, target, gamma, alpha):
  p = softmax(logits)
  weights = np.broadcast_to(np.asarray(alpha, np.float64), (logits.shape[-1],))
  return -np.sum(weights * target * (1 - p) ** gamma * np.log(p), axis=-1)


@pytest.mark.parametrize("alpha", [0.25, np.array([0.1, 0.5, 1.0, 2.0, 0.0, 3.0, 0.7])])
def test_alpha_class_weights_match_numpy(alpha):
  logits, labels = random_problem()  # V = 7
  target = one_hot(labels, 7)
  f = lambda z, y: emoloss.softmax_focal_loss(z, y, gamma=2.0, alpha=alpha)
  want = numpy_focal_alpha(logits, target, 2.0, alpha)
  np.testing.assert_allclose(f(logits, labels), want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jax.jit(f)(logits, labels), want, rtol=1e-5, atol=1e-7)
  soft = softmax(np.random.default_rng(2).normal(size=logits.shape))
  np.testing.assert_allclose(f(logits, soft), numpy_focal_alpha(logits, soft, 2.0, alpha),
                             rtol=1e-5, atol=1e-7)
  # α_y times the unweighted loss, per example; masked rows stay 0.
  plain = np.asarray(emoloss.softmax_focal_loss(logits, labels, gamma=2.0))
  np.testing.assert_allclose(f(logits, labels), np.broadcast_to(alpha, (7,))[labels] * plain,
                             rtol=1e-6, atol=1e-7)
  where = np.arange(len(labels)) % 3 != 0
  masked = emoloss.softmax_focal_loss(logits, labels, gamma=2.0, alpha=alpha, where=where)
  np.testing.assert_allclose(masked, np.where(where, want, 0.0), rtol=1e-5, atol=1e-7)


def test_alpha_checks_and_zero_weight_class_with_minus_inf_logit():
  logits, labels = random_problem(v=4)
  with pytest.raises(ValueError, match="alpha"):
    emoloss.softmax_focal_loss(logits, labels, alpha=np.ones(3))
  with pytest.raises(ValueError, match="alpha"):
    emoloss.softmax_focal_loss(logits, labels, alpha=-0.5)
  # A class with α = 0 contributes nothing: as if its soft-label mass were removed.
  q = softmax(np.random.default_rng(3).normal(size=logits.shape))
  alpha = np.array([1.0, 0.0, 1.0, 1.0])
  dropped = q * alpha
  np.testing.assert_allclose(emoloss.softmax_focal_loss(logits, q, alpha=alpha),
                             emoloss.softmax_focal_loss(logits, dropped), rtol=1e-6)
