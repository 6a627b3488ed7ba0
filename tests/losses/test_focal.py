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
