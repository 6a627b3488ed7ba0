"""Quick start: a Flax NNX classifier trained with an emoloss objective and an Optax optimiser.

Runs in seconds on a CPU: `python examples/quickstart.py`.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import emoloss

NUM_CLASSES, DIM = 5, 16


def make_data(key, n=512):
  """Gaussian clusters, one per class (synthetic: the quick start downloads nothing)."""
  key_labels, key_noise, key_centres = jax.random.split(key, 3)
  centres = 2.0 * jax.random.normal(key_centres, (NUM_CLASSES, DIM))
  labels = jax.random.randint(key_labels, (n,), 0, NUM_CLASSES)
  return centres[labels] + jax.random.normal(key_noise, (n, DIM)), labels


model = nnx.Sequential(nnx.Linear(DIM, 64, rngs=nnx.Rngs(0)), nnx.relu,
                       nnx.Linear(64, NUM_CLASSES, rngs=nnx.Rngs(1)))
optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


@nnx.jit
def train_step(model, optimizer, x, y):
  def loss_fn(model):
    return emoloss.softmax_focal_loss(model(x), y, gamma=2.0).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


x, y = make_data(jax.random.key(0))
for step in range(100):
  loss = train_step(model, optimizer, x, y)
accuracy = jnp.mean(jnp.argmax(model(x), -1) == y)
print(f"focal loss {float(loss):.4f}, training accuracy {float(accuracy):.3f}")
