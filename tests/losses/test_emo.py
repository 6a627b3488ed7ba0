"""EMO against the dense [V, V] cost-matrix formula, plus its structure and properties."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import emoloss
from tests.losses.reference import SIZES_N, SIZES_V

RNG = np.random.default_rng(0)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def dense_emo(logits, target, embeddings):
  """EMO written with the full cost matrix: Σ_i Σ_j p_i q_j c(i, j) (product plan)."""
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  cost = 1.0 - unit @ unit.T  # [V, V]
  p = _softmax(logits.astype(np.float64))
  return np.einsum("ni,ij,nj->n", p, cost, target)


def _data(n=6, v=11, k=5, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(n, v)).astype(np.float32) * 2
  labels = rng.integers(0, v, size=n)
  emb = rng.normal(size=(v, k)).astype(np.float32)
  return logits, labels, emb


def test_matches_dense_cost_matrix_integer_labels():
  logits, labels, emb = _data()
  got = emoloss.emo_loss(logits, labels, emb)
  want = dense_emo(logits, np.eye(logits.shape[1])[labels], emb)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_matches_dense_cost_matrix_soft_labels():
  logits, _, emb = _data(seed=1)
  soft = _softmax(np.random.default_rng(2).normal(size=logits.shape)).astype(np.float32)
  got = emoloss.emo_loss(logits, soft, emb)
  np.testing.assert_allclose(got, dense_emo(logits, soft, emb), rtol=1e-5, atol=1e-6)


def test_batch_dims_and_where():
  logits, labels, emb = _data(n=12)
  where = np.arange(12) % 3 != 0
  got = emoloss.emo_loss(logits.reshape(3, 4, -1), labels.reshape(3, 4), emb,
                         where=where.reshape(3, 4))
  want = np.where(where, dense_emo(logits, np.eye(logits.shape[1])[labels], emb), 0.0)
  np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-6)


def test_no_gradient_to_embeddings_and_grad_matches_finite_differences():
  logits, labels, emb = _data()
  g = jax.grad(lambda e: emoloss.emo_loss(logits, labels, e).sum())(jnp.asarray(emb))
  assert np.all(g == 0)
  f = lambda z: emoloss.emo_loss(z, labels, emb)
  check_grads(f, (jnp.asarray(logits, jnp.float32),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  check_grads(jax.jit(f), (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_vmap_matches_batched():
  logits, labels, emb = _data()
  per_row = jax.vmap(lambda z, y: emoloss.emo_loss(z, y, emb))(logits, labels)
  np.testing.assert_allclose(per_row, emoloss.emo_loss(logits, labels, emb), rtol=1e-6)


def _avals(jaxpr):
  """Every intermediate's abstract value, sub-jaxprs (pjit, custom_jvp, ...) included."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield var.aval
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None:
        yield from _avals(getattr(inner, "jaxpr", inner))


def test_jaxpr_has_no_vocab_squared_or_batch_squared_intermediate():
  n, v, k = 64, 4096, 32
  logits = jnp.zeros((n, v))
  labels = jnp.zeros((n,), jnp.int32)
  emb = jnp.ones((v, k))

  def loss(z):
    return emoloss.emo_ce_loss(z, labels, emb).mean() + emoloss.emo_loss(z, labels, emb).mean()

  jaxpr = jax.make_jaxpr(jax.jit(jax.value_and_grad(loss)))(logits)
  shapes = [tuple(a.shape) for a in _avals(jaxpr.jaxpr)]
  assert (n, v) in shapes  # the walk does reach the [N, V] probabilities
  # Here N*N == V, so an N*N-element array is flagged only if it is not a vocabulary vector.
  offending = [s for s in shapes
               if np.prod(s) == v * v or (np.prod(s) == n * n and v not in s)]
  assert not offending, offending


def test_emo_ce_modes_match_hand_formula():
  logits, labels, emb = _data(seed=3)
  ce = np.asarray(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))
  emo = dense_emo(logits, np.eye(logits.shape[1])[labels], emb)
  mode1 = 0.5 * (np.minimum(ce / (emo + 1e-10), 3.0) * emo + ce)
  mode2 = (emo / (ce + 1e-10)) * ce + emo
  np.testing.assert_allclose(emoloss.emo_ce_loss(logits, labels, emb), mode1, rtol=1e-5)
  np.testing.assert_allclose(emoloss.emo_ce_loss(logits, labels, emb, mode=2), mode2, rtol=1e-5)


def test_emo_ce_ratio_is_held_constant():
  """Gradient of mode 1 = ½(r ∇EMO + ∇CE) with r = min(CE/EMO, 3) a constant per token."""
  logits, labels, emb = _data(seed=4)
  z = jnp.asarray(logits)
  ce_fn = lambda z: optax.losses.softmax_cross_entropy_with_integer_labels(z, labels)
  emo_fn = lambda z: emoloss.emo_loss(z, labels, emb)
  ratio = np.minimum(ce_fn(z) / (emo_fn(z) + 1e-10), 3.0)
  want = 0.5 * (jax.grad(lambda z: (ratio * emo_fn(z)).sum())(z) + jax.grad(
      lambda z: ce_fn(z).sum())(z))
  got = jax.grad(lambda z: emoloss.emo_ce_loss(z, labels, emb).sum())(z)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_mode2_at_infinite_ce_has_the_limit_gradient():
  """Issue 20, item 13: at CE = inf (a -inf target logit) mode 2 gave dL/dEMO = 2; the limit of
  ``sg(EMO/CE) CE + EMO`` as CE -> inf is 1 (the ratio is held constant at every finite CE), with
  dL/dCE -> 0 and value 2 EMO. Eagerly and under jit; through ``emo_ce_loss`` the gradient in the
  logits is then that of EMO alone."""
  def value_and_grads(ce, emo):
    total = lambda c, e: emoloss.emo_ce_combination(c, e, mode=2).sum()
    return (emoloss.emo_ce_combination(ce, emo, mode=2),
            jax.grad(total, argnums=(0, 1))(ce, emo))
  ce, emo = jnp.array([jnp.inf, 1e30, 2.0]), jnp.array([0.5, 0.5, 0.5])
  for fn in (value_and_grads, jax.jit(value_and_grads)):
    value, (d_ce, d_emo) = fn(ce, emo)
    np.testing.assert_array_equal(value, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(d_emo, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(d_ce, [0.0, 0.5e-30, 0.25], rtol=1e-6)
  logits, labels, emb = _data(seed=5)
  logits[0, labels[0]] = -np.inf
  got = jax.grad(lambda z: emoloss.emo_ce_loss(z, labels, emb, mode=2)[0])(jnp.asarray(logits))
  want = jax.grad(lambda z: emoloss.emo_loss(z, labels, emb)[0])(jnp.asarray(logits))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert np.any(np.asarray(want) != 0)


def test_bad_embeddings_and_mode():
  logits, labels, emb = _data()
  with pytest.raises(ValueError, match="`cost_embeddings` must have shape"):
    emoloss.emo_loss(logits, labels, emb[:-1])
  with pytest.raises(ValueError, match="cost_embeddings"):
    emoloss.emo_loss(logits, labels, emb[0])
  with pytest.raises(ValueError, match="mode"):
    emoloss.emo_ce_loss(logits, labels, emb, mode=3)


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(
    v=SIZES_V, k=st.sampled_from([1, 3, 6]), n=SIZES_N,
    scale=st.floats(0.0, 30.0), seed=st.integers(0, 2**16))
def test_properties(v, k, n, scale, seed):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(n, v)) * scale).astype(np.float32)
  labels = rng.integers(0, v, size=n)
  emb = rng.normal(size=(v, k)).astype(np.float32)
  emo = np.asarray(emoloss.emo_loss(logits, labels, emb))
  assert np.all(emo >= -1e-5) and np.all(emo <= 2 + 1e-5)
  # A one-hot prediction of the target costs nothing.
  one_hot_logits = np.where(np.eye(v)[labels] > 0, 1e4, -1e4).astype(np.float32)
  np.testing.assert_allclose(emoloss.emo_loss(one_hot_logits, labels, emb), 0.0, atol=1e-6)
  # With orthogonal (one-hot) embeddings the cost is 0/1, so EMO is smoothed accuracy 1 - p_y.
  np.testing.assert_allclose(
      emoloss.emo_loss(logits, labels, np.eye(v, dtype=np.float32)),
      emoloss.smoothed_accuracy_loss(logits, labels), atol=1e-6)


@hypothesis.settings(deadline=None, max_examples=10)
@hypothesis.given(emb=hnp.arrays(np.float32, (4, 3), elements=st.floats(-5, 5, width=32)))
def test_scale_invariance_of_embeddings(emb):
  hypothesis.assume(np.all(np.linalg.norm(emb, axis=1) > 1e-2))
  logits, labels, _ = _data(n=3, v=4, k=3)
  np.testing.assert_allclose(emoloss.emo_loss(logits, labels, emb),
                             emoloss.emo_loss(logits, labels, 7.0 * emb), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", [emoloss.emo_loss, emoloss.emo_ce_loss])
def test_old_keyword_embeddings_warns_and_equals_cost_embeddings(loss):
  logits, labels, emb = _data()
  want = loss(logits, labels, cost_embeddings=emb)
  with pytest.warns(DeprecationWarning, match="`embeddings` is deprecated.*`cost_embeddings`"):
    got = loss(logits, labels, embeddings=emb)
  np.testing.assert_array_equal(got, want)
  with pytest.raises(TypeError, match="both `cost_embeddings` and its old name"):
    loss(logits, labels, embeddings=emb, cost_embeddings=emb)
