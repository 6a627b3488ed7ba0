import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import emoloss
from tests.losses.reference import value_and_grad_function


def _binary(n=12, seed=0, columns=None):
  rng = np.random.default_rng(seed)
  shape = (n,) if columns is None else (n, columns)
  return (rng.normal(size=shape) * 2).astype(np.float32), rng.integers(0, 2, size=shape)


def hand_f1_weighted(logits, labels, keep):
  """Weights computed by hand from the kept examples; log p and log(1-p) from plain sigmoid."""
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  f1 = 2 * np.sum(labels * p * keep, 0) / np.sum((labels + p) * keep, 0)
  w_pos, w_neg = 1 - f1 / 2, f1 / 2
  loss = -(labels * w_pos * np.log(p) + (1 - labels) * w_neg * np.log(1 - p))
  return np.where(keep, loss, 0.0), f1


@pytest.mark.parametrize("columns", [None, 3])
def test_matches_hand_weights_with_mask(columns):
  logits, labels = _binary(columns=columns)
  keep = np.random.default_rng(1).random(logits.shape) > 0.3
  want, f1 = hand_f1_weighted(logits, labels, keep)
  got = emoloss.f1_weighted_binary_cross_entropy(logits, labels, where=keep)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(emoloss.smooth_f1_loss(logits, labels, where=keep), 1 - f1,
                             rtol=1e-5)


def test_gradient_matches_spec_closed_form():
  logits, labels = _binary(seed=2)
  p = jax.nn.sigmoid(logits)
  f1 = emoloss.smooth_f1_score(logits, labels)
  want = np.where(labels == 1, -(1 - f1 / 2) * (1 - p), (f1 / 2) * p)
  got = jax.grad(lambda z: emoloss.f1_weighted_binary_cross_entropy(z, labels).sum())(logits)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_smooth_f1_loss_equals_optax_dice_and_finite_differences():
  logits, labels = _binary(n=10, seed=3, columns=2)
  # optax applies the sigmoid itself to a trailing class axis of size 1; axis=1 is our batch.
  dice = optax.losses.dice_loss(logits.T[..., None], labels.T[..., None].astype(np.float32),
                                smooth=0.0, reduction="none", axis=1)
  np.testing.assert_allclose(emoloss.smooth_f1_loss(logits, labels), dice.reshape(-1),
                             rtol=1e-5)
  f = lambda z: emoloss.smooth_f1_loss(z, labels)
  check_grads(f, (jnp.asarray(logits),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  check_grads(jax.jit(f), (jnp.asarray(logits),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


_f1_value_and_grad = value_and_grad_function(emoloss.f1_weighted_binary_cross_entropy)


def test_a_nan_logit_makes_the_batch_nan_not_zero():
  """Issue 20, item 2: one NaN logit made every example's loss exactly 0 (with NaN gradients).
  A NaN in an unmasked entry makes its column's F1 NaN, hence every unmasked entry of that column
  NaN in value and gradient (eagerly and under jit; bf16 and float64 inputs: the NaN rule of
  tests/test_reliability.py); other columns are unchanged bit for bit; a masked NaN entry is
  inert; ``smooth_f1_loss`` is NaN too."""
  issue = emoloss.f1_weighted_binary_cross_entropy(jnp.array([jnp.nan, 1.0, -1.0, 2.0]),
                                                   jnp.array([1, 0, 1, 1]))
  assert np.isnan(issue).all(), issue
  logits, labels = _binary(seed=5, columns=3)  # the shapes of the tests above
  where = np.arange(12)[:, None] != np.array([[6, -1, -1]])  # entry (6, 0) masked
  bad = logits.copy()
  bad[2, 0] = np.nan
  for fn in (jax.jit(_f1_value_and_grad), _f1_value_and_grad):
    clean_value, clean_grad = fn(logits, labels, where)
    value, grad = map(np.asarray, fn(bad, labels, where))
    column = where[:, 0]
    assert np.isnan(value[column, 0]).all() and np.isnan(grad[column, 0]).all(), (value, grad)
    assert value[6, 0] == 0 and grad[6, 0] == 0
    np.testing.assert_array_equal(value[:, 1:], clean_value[:, 1:])
    np.testing.assert_array_equal(grad[:, 1:], clean_grad[:, 1:])
    # The NaN entry masked: as if it held 0.
    masked = where & (np.arange(12)[:, None] != 2)
    np.testing.assert_array_equal(fn(bad, labels, masked)[0],
                                  fn(np.nan_to_num(bad), labels, masked)[0])
  smooth = emoloss.smooth_f1_loss(bad, labels, where=where)
  np.testing.assert_array_equal(smooth[1:],
                                emoloss.smooth_f1_loss(logits, labels, where=where)[1:])
  assert np.isnan(smooth[0])
  smooth_grad = jax.grad(lambda z: emoloss.smooth_f1_loss(z, labels, where=where).sum())(bad)
  assert np.isnan(smooth_grad[where[:, 0], 0]).all() and smooth_grad[6, 0] == 0


def test_vmap_over_independent_batches():
  logits, labels = _binary(n=24, seed=4)
  batched = jax.vmap(emoloss.f1_weighted_binary_cross_entropy)(logits.reshape(3, 8),
                                                               labels.reshape(3, 8))
  for i in range(3):
    np.testing.assert_allclose(
        batched[i], emoloss.f1_weighted_binary_cross_entropy(logits[8 * i:8 * i + 8],
                                                             labels[8 * i:8 * i + 8]), rtol=1e-6)


def test_bad_input():
  logits, labels = _binary()
  with pytest.raises(ValueError, match="labels"):
    emoloss.f1_weighted_binary_cross_entropy(logits, labels[:-1])
  with pytest.raises(ValueError, match="logits"):
    emoloss.smooth_f1_loss(np.float32(1.0), np.float32(1.0))
  with pytest.raises(TypeError, match="logits"):
    emoloss.f1_weighted_binary_cross_entropy(labels, labels)


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(n=st.sampled_from([1, 2, 7, 12]), seed=st.integers(0, 2**16), scale=st.floats(0, 50))
def test_properties(n, seed, scale):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=n) * scale).astype(np.float32)
  labels = rng.integers(0, 2, size=n)
  f1 = float(emoloss.smooth_f1_score(logits, labels))
  assert 0.0 <= f1 <= 1.0 + 1e-6
  loss = np.asarray(emoloss.f1_weighted_binary_cross_entropy(logits, labels))
  bce = np.asarray(optax.losses.sigmoid_binary_cross_entropy(logits, labels.astype(np.float32)))
  assert np.all(np.isfinite(loss)) and np.all(loss <= bce + 1e-5)  # weights in [0, 1]
