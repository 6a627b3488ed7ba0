"""Tests of the ascent/descent alternation, backstitch and the gradient-norm penalty."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emoloss.transforms import (
    alternate_ascent_descent,
    alternation_equivalent_loss,
    alternation_penalty,
    backstitch,
    gradient_norm_penalty,
    scale_by_ascent_descent,
)

RNG = np.random.default_rng(0)
DESIGN = RNG.normal(size=(6, 3))
TARGETS = RNG.normal(size=6)
THETA0 = np.array([0.7, -0.4, 0.3])


def smooth_loss(theta):
  """A smooth non-quadratic loss: sum log cosh(Xθ - y) + sum θ^4 / 4."""
  r = DESIGN @ theta - TARGETS
  return jnp.sum(jnp.log(jnp.cosh(r))) + 0.25 * jnp.sum(theta**4)


def smooth_loss_np(theta):
  """Value, gradient and Hessian of `smooth_loss`, written out by hand."""
  r = DESIGN @ theta - TARGETS
  value = np.sum(np.log(np.cosh(r))) + 0.25 * np.sum(theta**4)
  grad = DESIGN.T @ np.tanh(r) + theta**3
  hess = DESIGN.T @ (DESIGN / np.cosh(r)[:, None] ** 2) + np.diag(3 * theta**2)
  return value, grad, hess


def test_phases_and_counters():
  u = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
  for ascent_first, expected in ((False, [1, -0.25, 1, -0.25]), (True, [-0.25, 1, -0.25, 1])):
    tx = scale_by_ascent_descent(0.25, ascent_first=ascent_first)
    state = tx.init(u)
    for factor in expected:
      out, state = tx.update(u, state)
      for key, x in u.items():
        np.testing.assert_array_equal(out[key], factor * x)
    assert int(state.step) == 4 and int(state.ascent_steps) == 2


def test_flood_level_regime_alternates_only_below_it():
  tx = scale_by_ascent_descent(0.5, flood_level=0.5)
  g = jnp.array([2.0])
  state = tx.init(g)
  values = [1.0, 0.1, 0.1, 2.0, 0.1, 0.1]
  expected = [1.0, 1.0, -0.5, 1.0, 1.0, -0.5]  # above: descent, phase frozen; below: alternate
  step = jax.jit(lambda s, v: tx.update(g, s, value=v))
  for value, factor in zip(values, expected):
    out, state = step(state, jnp.float32(value))
    np.testing.assert_array_equal(out, factor * g)
  assert int(state.step) == 4 and int(state.ascent_steps) == 2
  with pytest.raises(ValueError, match="value=loss"):
    tx.update(g, state)


def _descent_ascent_pair(tx, grad_fn, theta0):
  """θ after the two steps (one descent, one ascent) of the alternation ``tx`` from ``θ0``."""
  theta, state = theta0, tx.init(theta0)
  for _ in range(2):
    updates, state = tx.update(grad_fn(theta), state, theta)
    theta = optax.apply_updates(theta, updates)
  return theta


@pytest.mark.parametrize(("flip", "ascent_first"), [("update", False), ("gradient", True)])
def test_two_steps_match_one_step_on_the_penalised_loss_to_third_order(flip, ascent_first):
  """ε1 = ε, ε2 = ε/2: residual vs the penalised single step shrinks like ε³ (8× per halving),
  while the residual vs a plain gradient step of ε1 - ε2 only shrinks like ε²."""
  ratio = 0.5
  step_sizes = np.array([0.04, 0.02, 0.01, 0.005])
  with jax.enable_x64(True):
    grad_fn = jax.jit(jax.grad(smooth_loss))
    penalised_grad_fn = jax.jit(lambda t, c: jax.grad(gradient_norm_penalty(smooth_loss, c))(t))
    theta0 = jnp.asarray(THETA0, jnp.float64)
    residuals, plain_residuals = [], []
    for eps in step_sizes:
      tx = alternate_ascent_descent(optax.sgd(eps), ratio, flip=flip, ascent_first=ascent_first)
      theta2 = _descent_ascent_pair(tx, grad_fn, theta0)
      lr, coeff = alternation_penalty(eps, ratio * eps)
      one_step = theta0 - lr * penalised_grad_fn(theta0, coeff)
      plain_step = theta0 - lr * grad_fn(theta0)
      residuals.append(float(jnp.linalg.norm(theta2 - one_step)))
      plain_residuals.append(float(jnp.linalg.norm(theta2 - plain_step)))
  order = np.polyfit(np.log(step_sizes), np.log(residuals), 1)[0]
  plain_order = np.polyfit(np.log(step_sizes), np.log(plain_residuals), 1)[0]
  ratios = np.array(residuals[:-1]) / np.array(residuals[1:])
  assert 2.8 < order < 3.2, (order, residuals)
  assert np.all((ratios > 6.5) & (ratios < 9.5)), ratios
  assert 1.8 < plain_order < 2.2, plain_order


def test_alternation_penalty_coefficients():
  lr, coeff = alternation_penalty(0.3, 0.1)
  np.testing.assert_allclose([lr, coeff], [0.2, 0.3 * 0.1 / (2 * 0.2)])
  with pytest.raises(ValueError, match="ascent_lr"):
    alternation_penalty(0.1, 0.1)
  with pytest.raises(ValueError, match="descent_lr"):
    alternation_penalty(0.0, 0.0)


def test_gradient_norm_penalty_value_and_gradient_against_hand_derivation():
  coeff = 0.37
  with jax.enable_x64(True):
    penalised = gradient_norm_penalty(smooth_loss, coeff)
    value, grad = jax.value_and_grad(penalised)(jnp.asarray(THETA0))
  loss, g, h = smooth_loss_np(THETA0)
  np.testing.assert_allclose(value, loss + coeff * g @ g, rtol=1e-10)
  np.testing.assert_allclose(grad, g + 2 * coeff * h @ g, rtol=1e-9)


def test_gradient_norm_penalty_pytree_params_aux_and_float32():
  def loss_fn(params, x):
    pred = jnp.tanh(x @ params["w"] + params["b"])
    return jnp.mean(pred**2), pred.shape

  params = {"w": jnp.array([[0.3], [-0.2]]), "b": jnp.array([0.1])}
  x = jnp.asarray(RNG.normal(size=(5, 2)), jnp.float32)
  value, aux = gradient_norm_penalty(loss_fn, 0.5, has_aux=True)(params, x)
  loss, grads = jax.value_and_grad(lambda p: loss_fn(p, x)[0])(params)
  squared = sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads))
  np.testing.assert_allclose(value, float(loss) + 0.5 * squared, rtol=1e-6)
  assert aux == (5, 1) and value.dtype == jnp.float32
  with pytest.raises(ValueError, match="coeff"):
    gradient_norm_penalty(loss_fn, -1.0)


def test_flip_placement_with_momentum():
  """'update' keeps momentum on the raw gradient and flips its output; 'gradient' feeds -r g."""
  lr, beta, ratio = 0.1, 0.9, 0.5
  grads = [np.array([1.0, -1.0]), np.array([0.5, 2.0]), np.array([-1.0, 0.3])]
  for flip in ("update", "gradient"):
    tx = alternate_ascent_descent(optax.sgd(lr, momentum=beta), ratio, flip=flip)
    state = tx.init(jnp.zeros(2))
    trace = np.zeros(2)
    for i, g in enumerate(grads):
      factor = 1.0 if i % 2 == 0 else -ratio
      updates, state = tx.update(jnp.asarray(g, jnp.float32), state)
      if flip == "update":
        trace = g + beta * trace
        expected = -lr * factor * trace
      else:
        trace = factor * g + beta * trace
        expected = -lr * trace
      np.testing.assert_allclose(updates, expected, rtol=1e-6)
    np.testing.assert_allclose(optax.tree_utils.tree_get(state, "trace"), trace, rtol=1e-6)
  with pytest.raises(ValueError, match="flip"):
    alternate_ascent_descent(optax.sgd(0.1), 0.5, flip="output")


def test_backstitch_against_numpy():
  nu, alpha = 0.05, 0.3
  tx = backstitch(nu, alpha)
  theta = jnp.asarray(THETA0, jnp.float32)
  theta_np = THETA0.copy()
  state = tx.init(theta)
  step = jax.jit(tx.update)
  for _ in range(2):  # two mini-batches, two calls each
    for scale in (-alpha * nu, (1 + alpha) * nu):  # ascent, then descent
      updates, state = step(jax.grad(smooth_loss)(theta), state, theta)
      theta = optax.apply_updates(theta, updates)
      theta_np = theta_np - scale * smooth_loss_np(theta_np)[1]
      np.testing.assert_allclose(theta, theta_np, rtol=1e-5, atol=1e-6)
  # A schedule is scaled by (1 + α) and evaluated at the call count.
  tx = backstitch(optax.constant_schedule(nu), alpha)
  updates, _ = tx.update(jnp.ones(3), tx.init(theta))
  np.testing.assert_allclose(updates, alpha * nu * np.ones(3), rtol=1e-6)


def test_inject_hyperparams_and_argument_checks():
  tx = optax.inject_hyperparams(scale_by_ascent_descent)(ascent_ratio=0.5)
  g = jnp.array([1.0, 2.0])
  state = tx.init(g)
  step = jax.jit(lambda s: tx.update(g, s))
  _, state = step(state)
  state.hyperparams["ascent_ratio"] = jnp.float32(0.125)
  out, state = step(state)
  np.testing.assert_allclose(out, -0.125 * g)
  for bad in (0.0, 1.5):
    with pytest.raises(ValueError, match="ascent_ratio"):
      scale_by_ascent_descent(bad)
  with pytest.raises(ValueError, match="alpha"):
    backstitch(0.1, alpha=0.0)


@pytest.mark.parametrize(("ratio", "flip", "ascent_first"),
                         [(1.0, "update", False), (1.0, "gradient", True), (0.5, "update", False)])
def test_pair_matches_one_step_on_the_equivalent_loss_to_third_order(ratio, flip, ascent_first):
  """Equal step sizes (ε2 = ε1 = ε): two steps equal θ0 - (ε²/2)∇‖∇L‖² up to O(ε³) (8× per
  halving), while the pair's own displacement only shrinks like ε² (it is not zero); ratio 0.5
  checks the same loss against the penalised form of `alternation_penalty`."""
  step_sizes = np.array([0.04, 0.02, 0.01, 0.005])
  with jax.enable_x64(True):
    grad_fn = jax.jit(jax.grad(smooth_loss))
    theta0 = jnp.asarray(THETA0, jnp.float64)
    residuals, displacements = [], []
    for eps in step_sizes:
      tx = alternate_ascent_descent(optax.sgd(eps), ratio, flip=flip, ascent_first=ascent_first)
      theta2 = _descent_ascent_pair(tx, grad_fn, theta0)
      equivalent = alternation_equivalent_loss(smooth_loss, eps, ratio * eps)
      one_step = theta0 - jax.grad(equivalent)(theta0)
      residuals.append(float(jnp.linalg.norm(theta2 - one_step)))
      displacements.append(float(jnp.linalg.norm(theta2 - theta0)))
      if ratio < 1:
        lr, coeff = alternation_penalty(eps, ratio * eps)
        penalised = theta0 - lr * jax.grad(gradient_norm_penalty(smooth_loss, coeff))(theta0)
        np.testing.assert_allclose(one_step, penalised, rtol=1e-12, atol=1e-15)
  order = np.polyfit(np.log(step_sizes), np.log(residuals), 1)[0]
  ratios = np.array(residuals[:-1]) / np.array(residuals[1:])
  assert 2.8 < order < 3.2, (order, residuals)
  assert np.all((ratios > 6.5) & (ratios < 9.5)), ratios
  if ratio == 1.0:
    displacement_order = np.polyfit(np.log(step_sizes), np.log(displacements), 1)[0]
    assert 1.8 < displacement_order < 2.2, displacement_order


def test_equivalent_loss_at_equal_steps_against_hand_derivation():
  """ε1 = ε2 = ε: L_eq = (ε²/2)‖g‖², ∇L_eq = ε² H g (no loss term), from the hand Hessian."""
  eps = 0.3
  with jax.enable_x64(True):
    equivalent = alternation_equivalent_loss(smooth_loss, eps, eps)
    value, grad = jax.value_and_grad(equivalent)(jnp.asarray(THETA0))
  _, g, h = smooth_loss_np(THETA0)
  np.testing.assert_allclose(value, 0.5 * eps**2 * g @ g, rtol=1e-10)
  np.testing.assert_allclose(grad, eps**2 * h @ g, rtol=1e-10)
  params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.float32(2.0)}
  value, aux = alternation_equivalent_loss(
      lambda p, x: (jnp.sum(p["a"] * x) + p["b"] ** 2, "aux"), 0.2, 0.1, has_aux=True)(
          params, jnp.ones(2, jnp.bfloat16))
  # (0.2 - 0.1) · (2 + 4) + (0.02 / 2) · (1 + 1 + 16)
  np.testing.assert_allclose(value, 0.1 * 6.0 + 0.01 * 18.0, rtol=1e-6)
  assert value.dtype == jnp.float32 and aux == "aux"
  with pytest.raises(ValueError, match="ascent_lr"):
    alternation_equivalent_loss(smooth_loss, 0.1, 0.2)
  with pytest.raises(ValueError, match="descent_lr"):
    alternation_equivalent_loss(smooth_loss, 0.0, 0.0)
