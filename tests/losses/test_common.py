"""Behaviour shared by every loss: extreme logits, masks, bf16, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emoloss
from tests.losses.registry import LOSSES

V = 6

# Every registered loss (tests/losses/registry.py, shared with tests/test_reliability.py); the
# ill-conditioned ones are not compared across dtypes (float32 rounding is amplified there).
ALL = [(name, loss.call, loss.binary) for name, loss in LOSSES.items()]
IDS = list(LOSSES)
WELL_CONDITIONED = {name for name, loss in LOSSES.items() if loss.well_conditioned}


def _problem(binary, n=8, scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  if binary:
    return (rng.normal(size=n) * scale).astype(np.float32), rng.integers(0, 2, n)
  return (rng.normal(size=(n, V)) * scale).astype(np.float32), rng.integers(0, V, n)


def _value_and_grad(fn, logits, labels, where=None):
  return jax.jit(jax.value_and_grad(lambda z: jnp.sum(fn(z, labels, where))))(logits)


@pytest.mark.parametrize("name,fn,binary", ALL, ids=IDS)
def test_extreme_logits_give_finite_values_and_gradients(name, fn, binary):
  logits, labels = _problem(binary)
  extreme = np.where(np.random.default_rng(1).random(logits.shape) > 0.5, 1e4, -1e4)
  extreme = extreme.astype(np.float32)
  value, grad = _value_and_grad(fn, jnp.asarray(extreme), labels)
  assert np.isfinite(value) and np.all(np.isfinite(grad)), name
  per_example = fn(extreme, labels)
  assert np.all(np.isfinite(per_example)), name


@pytest.mark.parametrize("name,fn,binary", ALL, ids=IDS)
def test_fully_masked_batch_is_zero_with_zero_gradient(name, fn, binary):
  logits, labels = _problem(binary)
  # Garbage in masked rows must not leak: inf/nan logits there.
  logits = logits.copy()
  logits.flat[::3] = np.inf
  logits.flat[1::3] = np.nan
  where = np.zeros(labels.shape, bool)
  value, grad = _value_and_grad(fn, jnp.asarray(logits), labels, where)
  assert float(value) == 0.0, name
  assert np.all(np.asarray(grad) == 0.0), name


@pytest.mark.parametrize("name,fn,binary", ALL, ids=IDS)
def test_masked_examples_do_not_change_the_others(name, fn, binary):
  logits, labels = _problem(binary, n=10, seed=2)
  where = np.arange(10) % 4 != 1
  masked = np.asarray(fn(logits, labels, where))
  kept = np.asarray(fn(logits[where], labels[where]))
  if masked.ndim == 0:  # a batch statistic (smooth F1): equal to the kept-only batch
    np.testing.assert_allclose(masked, kept, rtol=1e-5, atol=1e-6)
    return
  assert np.all(masked[~where] == 0.0)
  if name not in WELL_CONDITIONED:  # rounding of another batch shape is amplified: finite only
    assert np.all(np.isfinite(masked))
    return
  np.testing.assert_allclose(masked[where], kept, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,binary", ALL, ids=IDS)
def test_bfloat16_inputs_agree_with_float32(name, fn, binary):
  """bf16 inputs are upcast, so the only difference is bf16's rounding of the logits (8 bits of
  mantissa): compare with float32 on the bf16-rounded logits exactly, and with the unrounded
  ones within 2e-2 (a relative rounding of 2^-8 on logits of size ~3)."""
  logits, labels = _problem(binary, scale=1.0, seed=3)
  low = jnp.asarray(logits, jnp.bfloat16)
  out = fn(low, labels)
  assert out.dtype == jnp.float32, name
  np.testing.assert_allclose(out, fn(np.asarray(low, np.float32), labels), rtol=1e-6, atol=1e-6)
  if name in WELL_CONDITIONED:
    np.testing.assert_allclose(out, fn(logits, labels), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name,fn,binary", ALL, ids=IDS)
def test_bad_input_raises_clear_errors(name, fn, binary):
  logits, labels = _problem(binary)
  with pytest.raises(TypeError, match="logits"):
    fn(logits.astype(np.int32), labels)
  with pytest.raises(ValueError, match="labels"):
    fn(logits, labels[:-1])
  with pytest.raises(ValueError, match="where"):
    fn(logits, labels, np.ones(labels.shape[0] + 1, bool))
  if not binary:
    with pytest.raises(ValueError, match="rank"):
      fn(np.float32(1.0), np.int32(0))


def test_check_label_range():
  emoloss.check_label_range(np.array([0, 5, 2]), 6)
  with pytest.raises(ValueError, match=r"labels.*\[0, 6\).*6"):
    emoloss.check_label_range(np.array([0, 6, 2]), 6)
  with pytest.raises(ValueError, match="-1"):
    emoloss.check_label_range(np.array([-1]), 6)
  with pytest.raises(TypeError, match="labels"):
    emoloss.check_label_range(np.array([0.5]), 6)


def test_check_label_range_with_a_mask():
  """Issue 20, item 10: on a padded batch (label -100 under the mask), which every loss accepts,
  ``check_label_range`` raised and told the user to mask with ``where``. With ``where`` it checks
  what the losses read: masked positions are not checked, unmasked ones are (positions named)."""
  labels = np.array([[0, 5, -100], [2, -100, 6]])
  where = labels != -100
  with pytest.raises(ValueError, match=r"pass the mask here too"):
    emoloss.check_label_range(labels, 6)
  emoloss.check_label_range(labels % 6, 6, where=where)  # no padding: passes either way
  emoloss.check_label_range(np.where(labels == 6, 1, labels), 6, where=where)
  emoloss.check_label_range(jnp.asarray(np.where(labels == 6, 1, labels)), 6,
                            where=jnp.asarray(where))
  with pytest.raises(ValueError, match=r"1 of 6 are out of range \(unmasked\).*labels\[1, 2\] = 6"):
    emoloss.check_label_range(labels, 6, where=where)
  unmasked = where.copy()
  unmasked[0, 2] = True
  with pytest.raises(ValueError, match=r"2 of 6 .*labels\[0, 2\] = -100, labels\[1, 2\] = 6"):
    emoloss.check_label_range(labels, 6, where=unmasked)
  with pytest.raises(ValueError, match="`where` must have the shape"):
    emoloss.check_label_range(labels, 6, where=where[0])
  with pytest.raises(TypeError, match="boolean"):
    emoloss.check_label_range(labels, 6, where=where.astype(np.int32))
  with pytest.raises(TypeError, match="call it eagerly"):
    jax.jit(lambda w: emoloss.check_label_range(labels, 6, where=w))(where)
  # The losses agree: the padded batch gives finite values, zero at the padding.
  logits = np.random.default_rng(0).normal(size=(2, 3, 6)).astype(np.float32)
  fixed = np.where(labels == 6, 1, labels)
  value = emoloss.softmax_focal_loss(logits, fixed, where=where)
  assert np.all(np.isfinite(value)) and np.all(value[~where] == 0)
