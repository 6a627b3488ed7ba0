"""The objectives the oracle experiment adds to benchmarks/lm/objectives.py (focal, EMO alone)
against the package's own losses, value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import emoloss
from benchmarks.lm.objectives import token_loss
from benchmarks.oracle.run import BY_NAME


def _logits_labels():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 11)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 11, size=6), jnp.int32)
  return logits, labels


def test_focal_equals_the_package_softmax_focal_loss():
  logits, labels = _logits_labels()

  def ours(z):
    nll = optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)
    return jnp.sum(token_loss(BY_NAME["focal"], nll, None))

  def package(z):
    return jnp.sum(emoloss.softmax_focal_loss(z, labels, gamma=2.0))

  np.testing.assert_allclose(ours(logits), package(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(package)(logits), rtol=1e-4,
                             atol=1e-6)


def test_emo_alone_is_the_package_emo_loss():
  logits, labels = _logits_labels()
  embeddings = jnp.asarray(np.random.default_rng(1).normal(size=(11, 5)), jnp.float32)
  emo = emoloss.emo_loss(logits, labels, embeddings)
  nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(token_loss(BY_NAME["emo_only"], nll, emo), emo)
  assert not np.allclose(token_loss(BY_NAME["emo"], nll, emo), emo)  # the mix differs
