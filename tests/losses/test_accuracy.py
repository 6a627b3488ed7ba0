import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

import emoloss
from tests.losses.reference import SIZES_N, random_problem, softmax


def test_multiclass_matches_numpy_integer_and_soft():
  logits, labels = random_problem()
  p = softmax(logits)
  np.testing.assert_allclose(emoloss.smoothed_accuracy_loss(logits, labels),
                             1 - p[np.arange(len(labels)), labels], rtol=1e-5)
  soft = softmax(np.random.default_rng(3).normal(size=logits.shape)).astype(np.float32)
  np.testing.assert_allclose(emoloss.smoothed_accuracy_loss(logits, soft),
                             1 - np.sum(soft * p, -1), rtol=1e-5)


def test_binary_matches_numpy():
  rng = np.random.default_rng(1)
  z = rng.normal(size=10).astype(np.float32)
  y = rng.integers(0, 2, 10)
  p = 1 / (1 + np.exp(-z.astype(np.float64)))
  want = 1 - (y * p + (1 - y) * (1 - p))
  np.testing.assert_allclose(emoloss.binary_smoothed_accuracy_loss(z, y), want, rtol=1e-5)
  # Binary form = multi-class form on logits [0, z].
  two_class = np.stack([np.zeros_like(z), z], -1)
  np.testing.assert_allclose(emoloss.binary_smoothed_accuracy_loss(z, y),
                             emoloss.smoothed_accuracy_loss(two_class, y), rtol=1e-5, atol=1e-7)


def test_gradient_vanishes_for_badly_wrong_examples():
  """The loss-design principle (Su, kexue.fm/archives/9098): ∂(1 - p_y)/∂z_y = -p_y (1 - p_y)
  -> 0 as p_y -> 0."""
  logits, labels = random_problem(n=4, v=5)
  f = lambda z: emoloss.smoothed_accuracy_loss(z, labels)
  check_grads(f, (jnp.asarray(logits),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  check_grads(jax.jit(f), (jnp.asarray(logits),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  wrong = jnp.array([[-30.0, 0.0, 0.0]])
  g = jax.grad(lambda z: emoloss.smoothed_accuracy_loss(z, jnp.array([0])).sum())(wrong)
  assert abs(float(g[0, 0])) < 1e-12
  per_row = jax.vmap(emoloss.smoothed_accuracy_loss)(logits, labels)
  np.testing.assert_allclose(per_row, f(logits), rtol=1e-6)


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(v=st.sampled_from([1, 2, 5, 8]), n=SIZES_N, scale=st.floats(0, 50),
                  seed=st.integers(0, 2**16))
def test_properties(v, n, scale, seed):
  logits, labels = random_problem(n, v, seed, scale)
  loss = np.asarray(emoloss.smoothed_accuracy_loss(logits, labels))
  assert np.all(loss >= 0) and np.all(loss <= 1)
  # Summed over all possible targets, the smoothed accuracies are V - 1.
  total = sum(np.asarray(emoloss.smoothed_accuracy_loss(logits, np.full(n, c))) for c in range(v))
  np.testing.assert_allclose(total, v - 1, atol=1e-5)
