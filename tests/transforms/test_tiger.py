"""Tests of the Tiger optimiser against a NumPy implementation of its published update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emoloss.transforms import tiger


def tiger_numpy(params, grads_seq, lr, beta, weight_decay, decay_mask, rms_scaling, min_rms=1e-3):
  """m <- βm + (1-β)g;  θ <- θ - η_eff (sign(m) + λθ), η_eff = η·max(RMS(θ), min_rms) or η."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  momentum = {k: np.zeros_like(v) for k, v in params.items()}
  history = []
  for t, grads in enumerate(grads_seq):
    step_lr = lr(t) if callable(lr) else lr
    for k in params:
      momentum[k] = beta * momentum[k] + (1 - beta) * grads[k]
      decay = weight_decay if decay_mask[k] else 0.0
      eff_lr = step_lr
      if rms_scaling:
        eff_lr = step_lr * max(np.sqrt(np.mean(params[k] ** 2)), min_rms)
      params[k] = params[k] - eff_lr * (np.sign(momentum[k]) + decay * params[k])
    history.append({k: v.copy() for k, v in params.items()})
  return history


@pytest.mark.parametrize("rms_scaling", [False, True])
def test_tiger_matches_numpy_over_several_steps(rms_scaling):
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4)), "b": np.zeros(4)}
  # Gradients whose sign flips from step to step, so sign(m) differs from sign(g) (where Lion
  # with β1 != β2 would differ) and the momentum matters.
  grads_seq = [{k: rng.normal(size=v.shape) * (1 + t) * (-1) ** t for k, v in params.items()}
               for t in range(6)]
  lr, beta, weight_decay = 0.05, 0.8, 0.1
  mask = {"w": True, "b": False}
  tx = tiger(lr, beta, weight_decay, mask=mask, rms_scaling=rms_scaling)
  expected = tiger_numpy(params, grads_seq, lr, beta, weight_decay, mask, rms_scaling)
  theta = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(theta)
  step = jax.jit(tx.update)
  for grads, want in zip(grads_seq, expected):
    updates, state = step(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state, theta)
    theta = optax.apply_updates(theta, updates)
    for k in want:
      np.testing.assert_allclose(theta[k], want[k], rtol=1e-5, atol=1e-6)
  # The momentum buffer is the plain EMA of the gradients.
  ema = {k: sum((1 - beta) * beta ** (5 - t) * g[k] for t, g in enumerate(grads_seq))
         for k in params}
  mu = optax.tree_utils.tree_get(state, "mu")
  for k in params:
    np.testing.assert_allclose(mu[k], ema[k], rtol=1e-5, atol=1e-6)


def test_tiger_sign_uses_the_new_momentum_not_a_lion_interpolation():
  """One gradient opposing the accumulated momentum: Tiger follows sign(m_t)."""
  tx = tiger(1.0, beta=0.5, weight_decay=0.0)
  theta = jnp.zeros(2)
  state = tx.init(theta)
  _, state = tx.update(jnp.array([1.0, 1.0]), state, theta)  # m = [0.5, 0.5]
  updates, _ = tx.update(jnp.array([-0.8, -1.2]), state, theta)  # m = [-0.15, -0.35]
  np.testing.assert_array_equal(updates, [1.0, 1.0])
  # Lion with b1 = 0.9 would follow sign(0.9 m + 0.1 g) = +: a different rule.
  lion = optax.lion(1.0, b1=0.9, b2=0.5)
  s = lion.init(theta)
  _, s = lion.update(jnp.array([1.0, 1.0]), s, theta)
  assert not np.array_equal(lion.update(jnp.array([-0.8, -1.2]), s, theta)[0], updates)


def test_tiger_schedule_defaults_and_checks():
  schedule = optax.linear_schedule(0.1, 0.0, 4)
  rng = np.random.default_rng(1)
  params = {"w": rng.normal(size=5)}
  grads_seq = [{"w": rng.normal(size=5)} for _ in range(4)]
  tx = tiger(schedule)  # defaults of the reference: β = 0.965, λ = 0.01
  expected = tiger_numpy(params, grads_seq, lambda t: float(schedule(t)), 0.965, 0.01,
                         {"w": True}, False)
  theta = {"w": jnp.asarray(params["w"], jnp.float32)}
  state = tx.init(theta)
  for grads, want in zip(grads_seq, expected):
    updates, state = tx.update({"w": jnp.asarray(grads["w"], jnp.float32)}, state, theta)
    theta = optax.apply_updates(theta, updates)
    np.testing.assert_allclose(theta["w"], want["w"], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="beta"):
    tiger(1e-3, beta=1.0)
  with pytest.raises(ValueError, match="weight_decay"):
    tiger(1e-3, weight_decay=-0.1)
