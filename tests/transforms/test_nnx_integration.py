"""Every transformation inside a jitted Flax NNX training step; states are checkpointable pytrees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emoloss.transforms import (
    alternate_ascent_descent,
    backstitch,
    flood,
    flooded,
    gradient_norm_penalty,
    tiger,
)

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(16, 3)), jnp.float32)
Y = jnp.asarray(RNG.integers(0, 2, size=16), jnp.int32)


class TinyMLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(3, 8, rngs=rngs)
    self.out = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def batch_loss(model, x, y):
  return optax.losses.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(batch_loss)(model, x, y)
  optimizer.update(model, grads, value=loss)
  return loss


TRANSFORMS = {
    "flood+adam": lambda: optax.chain(flood(0.3), optax.adam(0.05)),
    "alternate(adam)": lambda: alternate_ascent_descent(optax.adam(0.05), 0.5),
    "alternate(sgd, gradient flip, flood level)": lambda: alternate_ascent_descent(
        optax.sgd(0.3), 0.5, flip="gradient", flood_level=0.6),
    "backstitch": lambda: backstitch(0.2, 0.3),
    "inject(tiger)": lambda: optax.inject_hyperparams(tiger)(learning_rate=0.02, beta=0.9,
                                                             rms_scaling=True),
    "multisteps(flood+sgd)": lambda: optax.MultiSteps(
        optax.chain(flood(0.6), optax.sgd(0.3)), every_k_schedule=2),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_jitted_nnx_training_and_checkpoint_round_trip(name):
  model = TinyMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, TRANSFORMS[name](), wrt=nnx.Param)
  losses = [float(train_step(model, optimizer, X, Y)) for _ in range(40)]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < losses[0] - 0.05, losses
  ascent_steps = optax.tree_utils.tree_get(nnx.to_pure_dict(nnx.state(optimizer)), "ascent_steps")
  # Where there is a flood level, training reaches it and the counter saw every ascent step.
  if name == "flood+adam":
    expected = sum(loss < 0.3 for loss in losses)
  elif name == "multisteps(flood+sgd)":  # only the last mini-step of each pair is applied
    expected = sum(loss < 0.6 for loss in losses[1::2])
  elif name.endswith("flood level)"):  # below the level: descent, ascent, descent, ...
    below = [loss for loss in losses if loss < 0.6]
    expected = len(below) // 2
  else:
    expected = None
  if expected is not None:
    assert expected > 0
    assert int(ascent_steps) == expected

  # Checkpoint round trip: flatten to host arrays, rebuild, and continue identically.
  graphdef, state = nnx.split((model, optimizer))
  leaves, treedef = jax.tree_util.tree_flatten(state)
  assert all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves)
  restored = jax.tree_util.tree_unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
  model2, optimizer2 = nnx.merge(graphdef, restored)
  for _ in range(3):
    loss_a = train_step(model, optimizer, X, Y)
    loss_b = train_step(model2, optimizer2, X, Y)
    np.testing.assert_array_equal(loss_a, loss_b)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model), nnx.state(model2))


def test_pure_optax_states_are_array_pytrees():
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  for make in TRANSFORMS.values():
    state = make().init(params)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    restored = jax.tree_util.tree_unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
    assert jax.tree_util.tree_structure(restored) == treedef
    assert optax.tree_utils.tree_get(restored, "ascent_steps", default=0) == 0


def test_flooded_loss_and_gradient_norm_penalty_in_nnx():
  """The loss-side forms work on an NNX model through its parameter state."""
  model = TinyMLP(nnx.Rngs(1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_of_params(p, x, y):
    return batch_loss(nnx.merge(graphdef, p, rest), x, y)

  loss_and_grad = jax.jit(jax.value_and_grad(loss_of_params))
  loss, grad_plain = loss_and_grad(params, X, Y)
  level = float(loss) + 0.1  # below the flood level: ascent
  grad_flooded = jax.jit(jax.grad(flooded(loss_of_params, level)))(params, X, Y)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, -b, rtol=1e-6), grad_flooded, grad_plain)
  penalised = jax.jit(jax.value_and_grad(gradient_norm_penalty(loss_of_params, 0.1)))
  value, grads = penalised(params, X, Y)
  squared = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grad_plain))
  np.testing.assert_allclose(value, float(loss) + 0.1 * squared, rtol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
