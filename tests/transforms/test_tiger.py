"""Tests of the Tiger optimiser against a NumPy implementation of its published update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emoloss.transforms import grouped_tiger, tiger, tiger_parameter_labels


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


# ----------------------------------------------------------------------------------------------
# The reference's extras: parameter groups and the non-finite-gradient shrink.


def reference_tiger_numpy(params, grads_seq, lr, beta, weight_decay, shrink, min_rms=1e-3):
  """bojone/tiger's update, tensor by tensor: ``bias|beta|gamma`` (here also ``scale``) get
  ``0.5 η``, no decay and no RMS scale; a non-finite gradient keeps ``m`` and moves the tensor to
  ``c + s (θ - c)`` (``c = 1`` for norm scales)."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  momentum = {k: np.zeros_like(v) for k, v in params.items()}
  history = []
  for grads in grads_seq:
    for k in params:
      name = k.split("/")[-1]
      center = 1.0 if name in ("scale", "gamma") else 0.0
      if name in ("bias", "beta", "scale", "gamma"):
        eff_lr, decay = 0.5 * lr, 0.0
      else:
        eff_lr = lr * max(np.sqrt(np.mean(params[k] ** 2)), min_rms)
        decay = weight_decay
      if not np.all(np.isfinite(grads[k])):
        params[k] = (params[k] - center) * shrink + center
        continue
      momentum[k] = beta * momentum[k] + (1 - beta) * grads[k]
      params[k] = params[k] - eff_lr * (np.sign(momentum[k]) + decay * params[k])
    history.append({k: v.copy() for k, v in params.items()})
  return history, momentum


def _nest(flat):
  out = {}
  for key, value in flat.items():
    outer, inner = key.split("/")
    out.setdefault(outer, {})[inner] = value
  return out


def test_grouped_tiger_matches_the_reference_with_nonfinite_gradients():
  rng = np.random.default_rng(3)
  flat = {"dense/kernel": rng.normal(size=(3, 4)), "dense/bias": rng.normal(size=4) * 0.1,
          "norm/scale": 1.0 + rng.normal(size=4) * 0.1, "norm/bias": rng.normal(size=4) * 0.1}
  grads_seq = [{k: rng.normal(size=v.shape) * (-1) ** t for k, v in flat.items()}
               for t in range(6)]
  grads_seq[2]["dense/kernel"][1, 2] = np.nan  # the kernel shrinks toward 0 at step 2
  grads_seq[3]["norm/scale"][0] = np.inf  # the norm scale shrinks toward 1 at step 3
  grads_seq[4]["dense/bias"][:] = np.nan
  lr, beta, weight_decay, shrink = 0.05, 0.8, 0.1, 0.9
  want, want_mu = reference_tiger_numpy(flat, grads_seq, lr, beta, weight_decay, shrink)
  tx = grouped_tiger(lr, beta, weight_decay, shrink_ratio=shrink)
  theta = _nest({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})
  assert tiger_parameter_labels(theta) == {"dense": {"kernel": "default", "bias": "bias"},
                                           "norm": {"scale": "norm_scale", "bias": "bias"}}
  state = tx.init(theta)
  step = jax.jit(tx.update)
  for t, (grads, expected) in enumerate(zip(grads_seq, want)):
    g = _nest({k: jnp.asarray(v, jnp.float32) for k, v in grads.items()})
    updates, state = (tx.update if t == 2 else step)(g, state, theta)  # one eager step
    theta = optax.apply_updates(theta, updates)
    for k, v in expected.items():
      outer, inner = k.split("/")
      np.testing.assert_allclose(theta[outer][inner], v, rtol=1e-5, atol=1e-6, err_msg=k)
  # The momentum skipped the non-finite steps (the reference's β1 = 1, g = 0).
  for k, v in want_mu.items():
    outer, inner = k.split("/")
    group = tiger_parameter_labels(theta)[outer][inner]
    mu = optax.tree_utils.tree_get(state.inner_states[group], "mu")
    np.testing.assert_allclose(mu[outer][inner], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_tiger_shrink_is_off_by_default_and_checks():
  theta = {"w": jnp.ones(3)}
  grads = {"w": jnp.array([1.0, np.nan, 0.0])}
  plain = tiger(0.1, weight_decay=0.0)
  updates, _ = plain.update(grads, plain.init(theta), theta)
  assert np.isnan(np.asarray(updates["w"])[1])  # without the shrink, NaN goes through
  shrinking = tiger(0.1, weight_decay=0.0, shrink_ratio=0.5, shrink_center=2.0)
  updates, state = shrinking.update(grads, shrinking.init(theta), theta)
  np.testing.assert_allclose(optax.apply_updates(theta, updates)["w"], 2.0 + 0.5 * (1.0 - 2.0))
  np.testing.assert_array_equal(optax.tree_utils.tree_get(state, "mu")["w"], 0.0)
  with pytest.raises(ValueError, match="shrink_ratio"):
    tiger(0.1, shrink_ratio=1.5)
  with pytest.raises(ValueError, match="params"):
    shrinking.update(grads, shrinking.init(theta))


def test_grouped_tiger_schedule_halves_and_nnx_labels():
  from flax import nnx

  schedule = optax.linear_schedule(0.2, 0.0, 10)
  tx = grouped_tiger(schedule, beta=0.5, weight_decay=0.0, rms_scaling=False)
  theta = {"w": jnp.zeros(2), "bias": jnp.zeros(2)}
  updates, _ = tx.update({"w": jnp.ones(2), "bias": jnp.ones(2)}, tx.init(theta), theta)
  np.testing.assert_allclose(updates["w"], -0.2)
  np.testing.assert_allclose(updates["bias"], -0.1)

  class Block(nnx.Module):

    def __init__(self, rngs):
      self.linear = nnx.Linear(3, 2, rngs=rngs)
      self.norm = nnx.LayerNorm(2, rngs=rngs)

    def __call__(self, x):
      return self.norm(self.linear(x))

  model = Block(nnx.Rngs(0))
  labels = tiger_parameter_labels(nnx.state(model, nnx.Param))
  assert sorted(jax.tree.leaves(labels)) == ["bias", "bias", "default", "norm_scale"]
  optimizer = nnx.Optimizer(model, grouped_tiger(0.01), wrt=nnx.Param)
  x = jnp.ones((4, 3))

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(5)]
  assert np.all(np.isfinite(losses))
