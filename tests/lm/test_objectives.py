"""The cost ablation of the EMO+CE mix and the MixCE variants (benchmarks/lm/objectives.py,
benchmarks/lm/train.py) against independent dense formulas, value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.lm import train
from benchmarks.lm.objectives import BY_NAME, COST_ABLATION, MIXCE_ETAS, mixce, token_loss

ABLATION = {o.name: o for o in COST_ABLATION}
V, D = 13, 4


def _inputs():
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(2, 3, D)), jnp.float32)
  head = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, size=(2, 3)), jnp.int32)
  cost = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
  return hidden, head, targets, cost


def _dense_mix(hidden, head, targets, cost_rows):
  """½ (CE + sg(CE / EMO) EMO) with EMO = Σ_i p_i C[i, y] for a dense [V, V] cost C."""
  logits = jnp.einsum("btd,vd->btv", hidden, head)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
  unit = cost_rows / jnp.linalg.norm(cost_rows, axis=1, keepdims=True)
  dense_cost = 1.0 - unit @ unit.T                                   # [V, V]
  emo = jnp.sum(jnp.exp(log_p) * dense_cost[targets], axis=-1)
  return 0.5 * (nll + jax.lax.stop_gradient(nll / emo) * emo)


@pytest.mark.parametrize("fused", [False, True])
def test_identity_cost_is_the_dense_identity_matrix(fused):
  """cost "identity": EMO = 1 - p_y, the transport cost 1 - [i = j] of one-hot embeddings."""
  hidden, head, targets, _ = _inputs()
  path = train.LossPath(fused, 8)

  def ours(h, w):
    loss, _ = train.objective_losses(ABLATION["emo_identity"], h, w, targets,
                                     jnp.zeros((V, D)), path)
    return jnp.sum(loss)

  def dense(h, w):
    return jnp.sum(_dense_mix(h, w, targets, jnp.eye(V)))

  np.testing.assert_allclose(ours(hidden, head), dense(hidden, head), rtol=1e-5)
  for got, want in zip(jax.grad(ours, (0, 1))(hidden, head), jax.grad(dense, (0, 1))(hidden, head)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_own_head_cost_is_the_current_head_under_stop_gradient(fused):
  """cost "own" (DRSY/EMO adaptive_emo): the cost embedding is the model's head, held constant
  -- value and gradient of the dense formula with a constant copy of the head."""
  hidden, head, targets, cost = _inputs()
  path = train.LossPath(fused, 8)

  def ours(h, w):
    loss, _ = train.objective_losses(ABLATION["emo_own"], h, w, targets, cost, path)
    return jnp.sum(loss)

  def dense(h, w):
    return jnp.sum(_dense_mix(h, w, targets, jax.lax.stop_gradient(w)))

  np.testing.assert_allclose(ours(hidden, head), dense(hidden, head), rtol=1e-5)
  for got, want in zip(jax.grad(ours, (0, 1))(hidden, head), jax.grad(dense, (0, 1))(hidden, head)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # and it is not the given cost: the mix's value is CE whatever the cost, its gradient is not

  def frozen(h, w):
    return jnp.sum(train.objective_losses(BY_NAME["emo"], h, w, targets, cost, path)[0])

  np.testing.assert_allclose(frozen(hidden, head), ours(hidden, head), rtol=1e-5)
  assert not np.allclose(jax.grad(frozen)(hidden, head), jax.grad(ours)(hidden, head),
                         rtol=1e-3)


@pytest.mark.parametrize("name", ["emo_cehead", "emo_random"])
def test_given_cost_arms_use_the_embedding_passed(name):
  hidden, head, targets, cost = _inputs()
  loss, _ = train.objective_losses(ABLATION[name], hidden, head, targets, cost, train.LossPath())
  np.testing.assert_allclose(loss, _dense_mix(hidden, head, targets, cost), rtol=1e-5)


def test_mixce_variants_weight_the_nll():
  nll = jnp.asarray([0.1, 1.0, 3.0])
  for eta in MIXCE_ETAS:
    objective = mixce(eta)
    assert objective.name == f"mixce_{eta:g}" and objective.eta == eta
    want = (eta + (1 - eta) * np.exp(-np.asarray(nll))) * np.asarray(nll)
    np.testing.assert_allclose(token_loss(objective, nll, None), want, rtol=1e-6)
