"""Tests of the running-gradient-norm normaliser against a NumPy simulation of the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emoloss.transforms import normalize_by_running_gradient_norm
from emoloss.transforms._gradient_norm import global_norm


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


@pytest.mark.parametrize("dtype,value", [(jnp.float16, 10.0), (jnp.bfloat16, 1e19),
                                         (jnp.float32, 1e19)], ids=["f16", "bf16", "f32"])
def test_an_overflowing_squared_norm_does_not_freeze_training(dtype, value):
  """Issue 20, item 4: ``optax.tree.norm`` squares in the leaf dtype, so one finite gradient whose
  squared norm overflows (float16 from a norm of ~256: ``{"w": jnp.full(1000, 10., float16)}``;
  float32/bf16 from ~1.8e19) made the running norm inf and every later update 0, which
  ``apply_if_finite`` cannot catch. The norm is accumulated in float32 without overflow: the step
  is divided by the true norm, and the next steps are not frozen (eagerly and under jit)."""
  grads = {"w": jnp.full(1000, value, dtype), "b": jnp.full(3, value, dtype)}
  true_norm = np.sqrt(1003.0) * float(jnp.asarray(value, dtype))
  assert not np.isfinite(float(optax.tree.norm(grads)))  # what the issue saw
  tx = normalize_by_running_gradient_norm(momentum=0.5)
  for update in (tx.update, jax.jit(tx.update)):
    state = tx.init(grads)
    out, state = update(grads, state)
    np.testing.assert_allclose(state.running_norm, true_norm, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), value / true_norm, rtol=1e-2)
    assert out["w"].dtype == dtype
    small = jax.tree.map(lambda g: jnp.ones_like(g), grads)
    out, state = update(small, state)
    running = 0.5 * true_norm + 0.5 * np.sqrt(1003.0)
    np.testing.assert_allclose(state.running_norm, running, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), 1.0 / running, rtol=1e-2)
    assert np.all(np.asarray(out["w"], np.float32) > 0)


def test_global_norm_in_float32_without_overflow():
  """The norm every transform takes: equal bit for bit to ``optax.tree.norm`` on float32 trees
  where that does not overflow (the rescaling by a power of two is exact), to a float64 NumPy
  norm on mixed-dtype trees at any scale; a finite norm beyond the float32 range gives the largest
  float32, a non-finite leaf inf or NaN; float64 leaves (x64 mode) accumulate in float64."""
  rng = np.random.default_rng(1)
  tree = {"a": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32), "b": jnp.arange(4.0)}
  assert global_norm(tree) == optax.tree.norm(tree)
  assert jax.jit(global_norm)(tree) == optax.tree.norm(tree)
  for scale in (1e-30, 1.0, 1e4, 1e30):
    mixed = {"a": rng.normal(size=5) * scale, "b": rng.normal(size=(2, 2)) * scale}
    want = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in mixed.values()))
    for dtype, rtol in ((jnp.float32, 1e-6), (jnp.bfloat16, 1e-2), (jnp.float16, 1e-3)):
      if dtype == jnp.float16 and scale != 1.0:
        continue  # outside the float16 range
      cast = jax.tree.map(lambda x, dtype=dtype: jnp.asarray(x, dtype), mixed)
      got = global_norm(cast)
      assert got.dtype == jnp.float32
      np.testing.assert_allclose(got, want, rtol=rtol)
  assert global_norm({"a": jnp.full(4, 3e38)}) == np.finfo(np.float32).max
  assert global_norm({"a": jnp.array([1.0, jnp.inf])}) == np.inf
  assert np.isnan(global_norm({"a": jnp.array([1.0, jnp.nan])}))
  assert global_norm({}) == 0 and global_norm({"a": jnp.zeros(3)}) == 0
  with jax.enable_x64(True):
    np.testing.assert_allclose(global_norm({"a": jnp.full(3, 1e160)}), np.finfo(np.float32).max)
    np.testing.assert_allclose(global_norm({"a": jnp.full(3, 1e-170)}), 0.0)
    np.testing.assert_allclose(global_norm({"a": jnp.full(3, 1e20)}), np.sqrt(3) * 1e20,
                               rtol=1e-7)


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


def test_complex_gradients_are_divided_by_their_modulus_norm():
  """A complex entry counts ``|g|²`` in the norm, as in ``optax.clip_by_global_norm``: ``3+4j``
  has norm 5 (squaring it, ``(3+4j)² = -7+24j``, gave ``1+1.333j``), ``1j`` norm 1 (not 100j)."""
  for w in ([3 + 4j], [1j], [3 + 4j, -2.5 + 0.5j]):
    grads = {"w": jnp.asarray(w, jnp.complex64), "b": jnp.array([0.5, -1.5], jnp.float32)}
    tx = normalize_by_running_gradient_norm()
    out, _ = tx.update(grads, tx.init(grads))
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())
    want_norm = np.sqrt(sum(np.sum(np.abs(np.asarray(x, np.complex128)) ** 2)
                            for x in jax.tree.leaves(grads)))
    np.testing.assert_allclose(global_norm(grads), want_norm, rtol=1e-6)
    for name, g in grads.items():
      assert out[name].dtype == g.dtype
      np.testing.assert_allclose(out[name], clipped[name], rtol=1e-5)
      np.testing.assert_allclose(out[name], np.asarray(g) / want_norm, rtol=1e-6)
  single, _ = tx.update({"w": jnp.array([3 + 4j])}, tx.init(None))
  np.testing.assert_allclose(single["w"], [0.6 + 0.8j], rtol=1e-6)
  with jax.enable_x64(True):
    assert global_norm({"w": jnp.asarray([1e200j, 1e200], jnp.complex128)}) == np.finfo(
        np.float32).max


def test_gradient_norm_penalties_take_the_modulus_of_complex_gradients():
  """``‖∇L‖²`` is real: ``Σ |g|²`` (``jnp.square`` of a complex gradient is not)."""
  from emoloss.transforms import alternation_equivalent_loss, gradient_norm_penalty

  loss_fn = lambda w: jnp.sum(jnp.abs(w) ** 2)
  w = jnp.array([3 + 4j, -1j], jnp.complex64)
  grads = jax.grad(loss_fn)(w)
  squared = float(np.sum(np.abs(np.asarray(grads)) ** 2))
  np.testing.assert_allclose(gradient_norm_penalty(loss_fn, coeff=0.1)(w),
                             float(loss_fn(w)) + 0.1 * squared, rtol=1e-6)
  np.testing.assert_allclose(alternation_equivalent_loss(loss_fn, 0.2, 0.1)(w),
                             0.1 * float(loss_fn(w)) + 0.5 * 0.2 * 0.1 * squared, rtol=1e-6)
