"""Tests of the running-gradient-norm normaliser against a NumPy simulation of the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emoloss.transforms import normalize_by_running_gradient_norm


def normaliser_numpy(grads_seq, momentum, floor):
  """The EXACT authors' GradientNormalizer step by step, in float64."""
  running, out = 0.0, []
  for t, grads in enumerate(grads_seq):
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    mu = 0.0 if t == 0 else momentum
    running = running * mu + (1 - mu) * norm
    out.append({k: g / max(running, floor) for k, g in grads.items()})
  return out, running


@pytest.mark.parametrize("momentum,floor", [(0.9, 1e-2), (0.5, 1.0), (0.0, 1e-2)])
def test_matches_numpy_over_several_steps(momentum, floor):
  rng = np.random.default_rng(0)
  # Norms spread over three decades, some below the floor.
  scales = [3.0, 0.001, 10.0, 0.05, 1.0, 0.0001]
  grads_seq = [{"w": rng.normal(size=(3, 4)) * s, "b": rng.normal(size=4) * s} for s in scales]
  want, running = normaliser_numpy(grads_seq, momentum, floor)
  tx = normalize_by_running_gradient_norm(momentum, floor)
  params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
  state = tx.init(params)
  step = jax.jit(tx.update, donate_argnums=(1,))
  for grads, expected in zip(grads_seq, want):
    eager, _ = tx.update(jax.tree.map(jnp.float32, grads), state)
    got, state = step(jax.tree.map(jnp.float32, grads), state)
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], rtol=2e-6, atol=0)
      np.testing.assert_allclose(eager[k], expected[k], rtol=2e-6, atol=0)
  assert int(state.count) == len(scales)
  np.testing.assert_allclose(state.running_norm, running, rtol=2e-6)


def test_constant_norm_gives_unit_norm_and_first_step_is_not_biased():
  tx = normalize_by_running_gradient_norm()
  state = tx.init(None)
  g = {"a": jnp.full((5,), 2.0, jnp.bfloat16)}
  for _ in range(3):
    out, state = tx.update(g, state)
    assert out["a"].dtype == jnp.bfloat16  # leaf dtype kept
    np.testing.assert_allclose(optax.tree.norm(out), 1.0, rtol=1e-2)


def test_in_chain_with_sgd_and_checks():
  tx = optax.chain(normalize_by_running_gradient_norm(), optax.sgd(0.1))
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.array([3.0, 0.0, 4.0])}, state, params)
  np.testing.assert_allclose(updates["w"], [-0.06, 0.0, -0.08], rtol=1e-6)
  for bad in ({"momentum": 1.0}, {"momentum": -0.1}, {"floor": 0.0}):
    with pytest.raises(ValueError, match=next(iter(bad))):
      normalize_by_running_gradient_norm(**bad)
  with pytest.raises(ValueError, match="momentum"):
    normalize_by_running_gradient_norm(momentum=np.array([0.5, 0.9]))


def test_nnx_optimizer_trains_and_state_round_trips():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 3)), jnp.float32)
  y = jnp.asarray((x[:, 0] > 0).astype(np.int32))
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  tx = optax.chain(normalize_by_running_gradient_norm(), optax.sgd(0.1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    def loss_fn(m):
      return optax.losses.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer)) for _ in range(30)]
  assert losses[-1] < losses[0] - 0.1, losses
  counts = optax.tree_utils.tree_get(nnx.to_pure_dict(nnx.state(optimizer)), "count")
  assert 30 in np.ravel(np.asarray(jax.tree.leaves(counts))).tolist()
  leaves, treedef = jax.tree_util.tree_flatten(nnx.state(optimizer))
  restored = jax.tree_util.tree_unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
  assert jax.tree_util.tree_structure(restored) == treedef
