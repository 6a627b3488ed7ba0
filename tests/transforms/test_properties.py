"""Property tests of the transformations (hypothesis, derandomised in tests/conftest.py): flood's
identity at or above the flood level and negation below it, Tiger's sign step and its buffer-free
accumulation, and the running-gradient normaliser's invariance to a power-of-two scale."""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
from hypothesis.extra import numpy as hnp

from emoloss.transforms import flood, normalize_by_running_gradient_norm, scale_by_tiger, tiger

FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)
VECTORS = hnp.arrays(np.float32, st.integers(1, 6), elements=FINITE)


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(grads=VECTORS, flood_level=st.floats(0.0, 10.0, width=32),
                  gap=st.floats(-5.0, 5.0, width=32))
@hypothesis.example(grads=np.array([1.0, -2.0], np.float32), flood_level=1.0, gap=0.0)
def test_flood_is_the_identity_at_or_above_the_flood_level_and_negates_below(
    grads, flood_level, gap):
  value = np.float32(flood_level) + np.float32(gap)
  tx = flood(flood_level)
  updates, _ = tx.update({"w": jnp.asarray(grads)}, tx.init(None), value=jnp.float32(value))
  if value >= np.float32(flood_level):
    np.testing.assert_array_equal(updates["w"], grads)  # exactly the gradient
  else:
    np.testing.assert_array_equal(updates["w"], -grads)


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(grads=hnp.arrays(np.float32, (4, 3), elements=FINITE),
                  learning_rate=st.floats(2.0**-13, 1.0, width=32), beta=st.floats(0.0, 0.99))
def test_tiger_moves_every_entry_by_the_learning_rate_against_the_momentum(
    grads, learning_rate, beta):
  """Without decay or RMS scale, one step is ``-η sign(m)``: each entry moves by exactly ``η``
  (or not at all where the momentum is 0), against the momentum's sign."""
  params = jnp.zeros(grads.shape)
  tx = tiger(learning_rate, beta, weight_decay=0.0)
  updates, state = tx.update(jnp.asarray(grads), tx.init(params), params)
  mu = np.asarray(state.momentum.mu)
  want = -np.float32(learning_rate) * np.sign(mu)
  np.testing.assert_array_equal(updates, want.astype(np.float32))
  moving = mu != 0  # (1 - β) g may underflow to 0 for a subnormal g
  assert np.all(np.sign(mu)[moving] == np.sign(grads)[moving])


@hypothesis.settings(deadline=None, max_examples=20)
@hypothesis.given(micro=hnp.arrays(np.float32, (4, 5), elements=st.floats(-10, 10, width=32)),
                  order=st.permutations(range(4)), beta=st.floats(0.5, 0.99))
def test_tiger_accumulation_is_the_mean_gradient_in_any_order(micro, order, beta):
  """Over one cycle of ``k`` micro-batches the momentum becomes ``β m + (1-β) mean(g)`` whatever
  their order (float32 rounding of a sum of k terms: ``k`` ulps of the largest term)."""
  k = micro.shape[0]
  tx = scale_by_tiger(beta, accumulation_steps=k)
  state = tx.init(jnp.zeros(5))
  warm = jnp.linspace(-1.0, 1.0, 5)
  _, state = scale_by_tiger(beta).update(warm, state)  # some momentum from an earlier cycle
  before = np.asarray(state.mu, np.float64)
  for i in order:
    _, state = tx.update(jnp.asarray(micro[i]), state)
  want = beta * before + (1 - beta) * micro.astype(np.float64).mean(axis=0)
  scale = np.max(np.abs(micro)) + np.max(np.abs(before))
  np.testing.assert_allclose(state.mu, want, rtol=0, atol=4 * k * scale * 2.0**-23)
  assert int(state.cycle_position) == 0


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(grads=hnp.arrays(np.float32, st.integers(1, 6),
                                   elements=st.floats(-100, 100, width=32)),
                  exponent=st.integers(-20, 20))
def test_running_norm_output_is_invariant_to_a_power_of_two_scale(grads, exponent):
  """Scaling the gradient by ``2^j`` scales its norm by ``2^j`` exactly, so the first normalised
  update is unchanged bit for bit (while the norm stays above the floor)."""
  grads = np.where(np.abs(grads) < 1e-20, np.float32(0), grads)  # no underflow when scaled
  hypothesis.assume(np.sqrt(np.sum(np.float64(grads) ** 2)) > 1.0)
  tx = normalize_by_running_gradient_norm(floor=1e-30)
  scaled = grads * np.float32(2.0**exponent)
  out, _ = tx.update({"w": jnp.asarray(grads)}, tx.init(None))
  out_scaled, _ = tx.update({"w": jnp.asarray(scaled)}, tx.init(None))
  np.testing.assert_array_equal(out["w"], out_scaled["w"])
