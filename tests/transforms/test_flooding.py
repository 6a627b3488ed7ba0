"""Tests of flooding: the `flood` transformation, `flooded`, `iflood_loss`, `iflooded`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from emoloss.transforms import flood, flooded, iflood_loss, iflooded

RNG = np.random.default_rng(0)
A = RNG.normal(size=(4, 4))
A = (A @ A.T / 4 + np.eye(4)).astype(np.float32)  # positive definite
TARGET = RNG.normal(size=4).astype(np.float32)


def quadratic(theta):
  d = theta - TARGET
  return 0.5 * d @ A @ d


def quadratic_np(theta):
  d = np.asarray(theta, np.float64) - TARGET
  return 0.5 * d @ A @ d, A @ d  # value, gradient


def test_sgd_steps_above_flood_level_descend_and_below_ascend():
  flood_level = 0.7
  inner = optax.sgd(0.1)
  tx = optax.chain(flood(flood_level), inner)
  theta = jnp.asarray(TARGET + RNG.normal(size=4).astype(np.float32))
  regimes = set()
  for scale in (3.0, 1.0, 0.3, 0.1, 1.0):  # losses above and below the flood level
    point = TARGET + scale * (theta - TARGET)
    value, grad_np = quadratic_np(point)
    regimes.add(value >= flood_level)
    grad = jnp.asarray(grad_np, jnp.float32)
    updates, _ = tx.update(grad, tx.init(point), point, value=jnp.float32(value))
    inner_updates, _ = inner.update(grad, inner.init(point), point)
    expected = inner_updates if value >= flood_level else -inner_updates
    np.testing.assert_allclose(updates, expected, rtol=1e-6)
    np.testing.assert_allclose(updates, (1.0 if value >= flood_level else -1.0) * -0.1 * grad_np,
                               rtol=1e-5)
  assert regimes == {True, False}


def test_value_equal_to_flood_level_is_descent():
  tx = optax.chain(flood(0.25), optax.sgd(1.0))
  grad = jnp.array([1.0, -2.0])
  updates, state = tx.update(grad, tx.init(grad), value=jnp.float32(0.25))
  np.testing.assert_array_equal(updates, -grad)
  assert int(optax.tree_utils.tree_get(state, "ascent_steps")) == 0
  # Same convention as `flooded`: jax.grad(|x|) at 0 is +1.
  assert float(jax.grad(flooded(lambda x: x, 0.25))(0.25)) == 1.0


def test_adam_trajectory_equals_adam_on_flooded_loss_and_counts_ascent_steps():
  """Flood first in the chain == Adam on the gradient of |L - b| + b, over a trajectory."""
  flood_level = 0.4
  tx = optax.chain(flood(flood_level), optax.adam(0.05))
  reference = optax.adam(0.05)
  flooded_grad = jax.grad(flooded(quadratic, flood_level))
  theta = theta_ref = jnp.asarray(TARGET + 0.8)
  state, ref_state = tx.init(theta), reference.init(theta)
  step = jax.jit(lambda g, s, p, v: tx.update(g, s, p, value=v))
  n_below = 0
  for _ in range(25):
    value, grad = jax.value_and_grad(quadratic)(theta)
    n_below += int(value < flood_level)
    updates, state = step(grad, state, theta, value)
    theta = optax.apply_updates(theta, updates)
    ref_updates, ref_state = reference.update(flooded_grad(theta_ref), ref_state, theta_ref)
    theta_ref = optax.apply_updates(theta_ref, ref_updates)
    np.testing.assert_allclose(theta, theta_ref, rtol=1e-5, atol=1e-6)
  assert 0 < n_below < 25  # the trajectory crossed the flood level
  assert int(optax.tree_utils.tree_get(state, "ascent_steps")) == n_below
  assert int(state[0].step) == 25


def test_negating_adam_output_is_a_different_algorithm():
  """Why flood must come first: after the loss crosses b the two placements disagree."""
  first = optax.chain(flood(0.5), optax.adam(0.1))
  last = optax.chain(optax.adam(0.1), flood(0.5))
  grads = [jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])]
  values = [jnp.float32(1.0), jnp.float32(0.1)]
  s_first, s_last = first.init(grads[0]), last.init(grads[0])
  for g, v in zip(grads, values):
    u_first, s_first = first.update(g, s_first, value=v)
    u_last, s_last = last.update(g, s_last, value=v)
  assert not np.allclose(u_first, u_last, rtol=1e-3)


def test_missing_or_bad_value_is_refused():
  tx = optax.chain(flood(0.1), optax.sgd(0.1))
  grad = jnp.ones(3)
  state = tx.init(grad)
  with pytest.raises(ValueError, match="value=loss"):
    tx.update(grad, state, grad)
  with pytest.raises(ValueError, match="value=loss"):
    jax.jit(lambda g, s: tx.update(g, s, g))(grad, state)
  with pytest.raises(ValueError, match="scalar"):
    tx.update(grad, state, grad, value=jnp.ones(3))
  with pytest.raises(TypeError, match="float"):
    tx.update(grad, state, grad, value=jnp.int32(1))
  with pytest.raises(ValueError, match="flood_level"):
    flood(-0.1)


def test_inject_hyperparams_flood_level():
  tx = optax.inject_hyperparams(flood)(flood_level=0.5)
  grad = jnp.array([1.0, -1.0])
  state = tx.init(grad)
  step = jax.jit(lambda s, v: tx.update(grad, s, value=v))
  updates, state = step(state, jnp.float32(0.3))
  np.testing.assert_array_equal(updates, -grad)
  state.hyperparams["flood_level"] = jnp.float32(0.2)
  updates, state = step(state, jnp.float32(0.3))
  np.testing.assert_array_equal(updates, grad)
  assert int(optax.tree_utils.tree_get(state, "ascent_steps")) == 1


def test_multisteps_with_mean_value_equals_one_step_on_the_whole_batch():
  """Flooding inside MultiSteps, given the mean loss of the accumulated micro-batches."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=8), jnp.float32)

  def loss(w, xb, yb):
    return jnp.mean((jnp.tanh(xb @ w) - yb) ** 2)

  w = jnp.asarray(rng.normal(size=3), jnp.float32)
  full_value = float(loss(w, x, y))
  flood_level = full_value + 0.05  # the whole batch is below the flood level
  tx = optax.MultiSteps(optax.chain(flood(flood_level), optax.sgd(0.1)), every_k_schedule=2)
  state = tx.init(w)
  halves = [(x[:4], y[:4]), (x[4:], y[4:])]
  values = [loss(w, xb, yb) for xb, yb in halves]
  mean_value = (values[0] + values[1]) / 2
  for xb, yb in halves:
    updates, state = tx.update(jax.grad(loss)(w, xb, yb), state, w, value=mean_value)
  expected = -0.1 * jax.grad(flooded(loss, flood_level))(w, x, y)
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(updates, 0.1 * jax.grad(loss)(w, x, y), rtol=1e-5, atol=1e-7)


def test_flooded_value_and_gradient():
  flood_level = 0.3
  f = flooded(quadratic, flood_level)
  for scale in (0.05, 0.2, 2.0):
    theta = (TARGET + scale * RNG.normal(size=4)).astype(np.float32)
    value, grad_np = quadratic_np(theta)
    expected_value = abs(value - flood_level) + flood_level
    np.testing.assert_allclose(f(jnp.asarray(theta)), expected_value, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(f)(jnp.asarray(theta)),
                               np.sign(value - flood_level) * grad_np, rtol=1e-4, atol=1e-6)
    if abs(value - flood_level) > 1e-2:  # away from the kink |.|
      check_grads(f, (jnp.asarray(theta, jnp.float32),), order=1, modes=["rev"], eps=1e-3,
                  atol=2e-2, rtol=2e-2)


def test_flooded_has_aux_and_rejects_non_scalar():
  f = flooded(lambda x: (jnp.sum(x), {"n": x.size}), 1.0, has_aux=True)
  value, aux = f(jnp.array([0.25, 0.25]))
  np.testing.assert_allclose(value, 1.5)
  assert aux == {"n": 2}
  with pytest.raises(ValueError, match="iflooded"):
    flooded(lambda x: x, 0.1)(jnp.ones(3))


def test_iflood_loss_against_numpy_with_mask():
  losses = RNG.uniform(0, 1, size=(3, 5)).astype(np.float32)
  where = RNG.uniform(size=(3, 5)) > 0.4
  b = 0.45
  expected = np.mean(np.abs(losses[where] - b) + b)
  np.testing.assert_allclose(iflood_loss(losses, b, where=where), expected, rtol=1e-6)
  np.testing.assert_allclose(iflood_loss(losses, b), np.mean(np.abs(losses - b) + b), rtol=1e-6)
  # Gradient per example: +1/n above b, -1/n below, 0 if masked.
  grad = jax.grad(lambda l: iflood_loss(l, b, where=where))(jnp.asarray(losses))
  np.testing.assert_allclose(grad, np.where(where, np.sign(losses - b + 1e-12), 0) / where.sum(),
                             rtol=1e-6)
  # bf16 input is computed in float32; a fully masked batch gives 0 and no NaN.
  assert iflood_loss(jnp.asarray(losses, jnp.bfloat16), b).dtype == jnp.float32
  empty = jnp.zeros((3, 5), bool)
  assert float(iflood_loss(losses, b, where=empty)) == 0.0
  assert np.all(np.isfinite(jax.grad(lambda l: iflood_loss(l, b, where=empty))(losses)))
  with pytest.raises(ValueError, match="where"):
    iflood_loss(losses, b, where=np.ones(5, bool))


def test_iflooded_forwards_where_and_differs_from_batch_flooding():
  def per_example(w, x, where=None):
    losses = (x @ w) ** 2
    return losses if where is None else jnp.where(where, losses, 0.0)

  w = jnp.array([0.5, -0.2])
  x = jnp.asarray(RNG.normal(size=(6, 2)), jnp.float32)
  where = jnp.array([True, True, False, True, False, True])
  losses = np.asarray((x @ w) ** 2)
  b = float(np.median(losses))
  got = iflooded(per_example, b)(w, x, where=where)
  kept = losses[np.asarray(where)]
  np.testing.assert_allclose(got, np.mean(np.abs(kept - b) + b), rtol=1e-6)
  batch = flooded(lambda w, x: jnp.mean(per_example(w, x)), b)(w, x)
  assert not np.isclose(float(iflooded(per_example, b)(w, x)), float(batch))
