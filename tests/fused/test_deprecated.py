"""The 0.2 fused names: thin aliases that warn (DeprecationWarning) and give what their 0.3
replacement gives (the CHANGELOG's migration table)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emoloss
from tests.fused import helpers


@pytest.fixture(scope="module")
def problem():
  return helpers.make_problem(12, 37, 8, 5, seed=2)


def one_device_mesh():
  return jax.make_mesh((1, 1), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Explicit,) * 2)


def assert_same(got, expected):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_fused_ce_emo_warns_and_is_fused_token_stats(problem):
  hidden, head, labels, cost = problem
  with pytest.warns(DeprecationWarning, match="fused_token_stats"):
    got = emoloss.fused_ce_emo(hidden, head, labels, cost, chunk_size=8, softcap=3.0)
  assert_same(got, emoloss.fused_token_stats(hidden, head, labels, cost, chunk_size=8,
                                             softcap=3.0))
  with pytest.warns(DeprecationWarning):
    d_head = jax.grad(lambda w: jnp.sum(emoloss.fused.fused_ce_emo(
        hidden, w, labels, freeze_head=True).nll))(head)
  np.testing.assert_array_equal(d_head, np.zeros_like(head))


def test_sharded_fused_ce_emo_warns_and_is_the_mesh_argument(problem):
  hidden, head, labels, cost = problem
  mesh = one_device_mesh()
  with pytest.warns(DeprecationWarning, match="mesh"):
    got = jax.jit(lambda h: emoloss.sharded_fused_ce_emo(h, head, labels, cost, mesh=mesh,
                                                         chunk_size=8))(hidden)
  expected = jax.jit(lambda h: emoloss.fused_token_stats(h, head, labels, cost, mesh=mesh,
                                                         chunk_size=8))(hidden)
  assert_same(got, expected)


def test_onepass_loss_warns_and_adapts_the_old_per_token_signature(problem):
  hidden, head, labels, cost = problem
  old = lambda nll, emo, lse: nll + 0.5 * emo + 0.1 * lse
  new = lambda s: s.nll + 0.5 * s.emo + 0.1 * s.lse
  with pytest.warns(DeprecationWarning, match="fused_loss"):
    got = jax.value_and_grad(lambda h: emoloss.onepass_loss(
        h, head, labels, cost, per_token=old, token_chunk_size=5, vocab_block_size=16))(hidden)
  expected = jax.value_and_grad(lambda h: emoloss.fused_loss(
      h, head, labels, cost, per_token=new, chunk_size=5))(hidden)
  assert_same(got, expected)
  # The 0.3 per-token helpers (one record argument) pass through unchanged.
  with pytest.warns(DeprecationWarning):
    mixed = emoloss.onepass_loss(hidden, head, labels, cost,
                                 per_token=emoloss.emo_ce_per_token(1))
  assert_same(mixed, emoloss.fused_loss(hidden, head, labels, cost,
                                        per_token=emoloss.emo_ce_per_token(1)))
  with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="token_chunk_size"):
    emoloss.onepass_loss(hidden, head, labels, token_chunk_size=0)
  with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="entropy"):
    emoloss.onepass_loss(hidden, head, labels, entropy=None)


def test_sharded_onepass_loss_warns_and_is_the_mesh_argument(problem):
  hidden, head, labels, _ = problem
  mesh = one_device_mesh()
  with pytest.warns(DeprecationWarning):
    got = jax.jit(lambda h: emoloss.sharded_onepass_loss(h, head, labels, mesh=mesh,
                                                         freeze_head=True))(hidden)
  expected = jax.jit(lambda h: emoloss.fused_loss(h, head, labels, mesh=mesh))(hidden)
  assert_same(got, expected)


def test_default_token_chunk_size_and_fused_output_warn():
  with pytest.warns(DeprecationWarning):
    assert emoloss.default_token_chunk_size(32768) == 256
  with pytest.warns(DeprecationWarning, match="TokenStats"):
    assert emoloss.FusedOutput is emoloss.TokenStats
  with pytest.warns(DeprecationWarning, match="TokenStats"):
    from emoloss.fused import FusedOutput
  assert FusedOutput is emoloss.TokenStats
  with pytest.raises(AttributeError, match="no_such_name"):
    emoloss.fused.no_such_name  # noqa: B018


def test_onepass_loss_entropy_true_with_the_default_per_token(problem):
  """The 0.2 call ``entropy=True`` with the default ``per_token`` still gives the mean CE."""
  hidden, head, labels, cost = problem
  with pytest.warns(DeprecationWarning):
    got = emoloss.onepass_loss(hidden, head, labels, entropy=True)
  expected = helpers.naive_token_stats(hidden, head, labels, cost).nll
  helpers.assert_close(got, jnp.mean(expected), name="CE")
