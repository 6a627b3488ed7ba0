"""The option validator of every fused function: what it accepts (soft-cap 0 as no cap,
concrete 0-d values) and refuses (traced values, values whose reciprocal overflows float32), and
the compiled call reused by eager calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emoloss
from tests.fused import helpers

FUNCTIONS = {  # name: f(hidden, head, labels, cost, **options) -> arrays
    "fused_token_stats": lambda h, w, y, e, **o: emoloss.fused_token_stats(h, w, y, e, **o),
    "fused_loss": lambda h, w, y, e, **o: emoloss.fused_loss(
        h, w, y, e, per_token=emoloss.emo_ce_per_token(1), **o),
    "fused_emo_ce_loss": lambda h, w, y, e, **o: emoloss.fused_emo_ce_loss(h, w, y, e, **o),
    "fused_mixce_loss": lambda h, w, y, e, **o: emoloss.fused_mixce_loss(h, w, y, **o),
}


@pytest.fixture(scope="module")
def problem():
  return helpers.make_problem(10, 29, 8, 4, seed=4, scale=2.0)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_softcap_zero_means_no_cap(name, problem):
  """MaxText's final_logits_soft_cap = 0.0 (no cap) passes through: the same as None."""
  fn = FUNCTIONS[name]
  for a, b in zip(jax.tree.leaves(fn(*problem, softcap=0.0)),
                  jax.tree.leaves(fn(*problem, softcap=None))):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="softcap"):
    fn(*problem, softcap=-1.0)


@pytest.mark.parametrize("value", [jnp.float32(0.7), np.array(0.7), np.float64(0.7)])
def test_concrete_0d_options_are_accepted_eagerly(value, problem):
  expected = emoloss.fused_token_stats(*problem, temperature=float(np.float32(0.7)))
  got = emoloss.fused_token_stats(*problem, temperature=value)
  np.testing.assert_allclose(got.nll, expected.nll, rtol=1e-6)
  capped = emoloss.fused_loss(*problem[:3], softcap=jnp.asarray(30.0))
  np.testing.assert_array_equal(capped, emoloss.fused_loss(*problem[:3], softcap=30.0))


def test_traced_options_are_refused_with_the_remedy(problem):
  for option in ("temperature", "softcap", "label_smoothing"):
    with pytest.raises(TypeError, match=f"`{option}` is a traced value.*static_argnames"):
      jax.jit(lambda t, o=option: emoloss.fused_token_stats(*problem, **{o: t}).nll)(0.5)
  with pytest.raises(TypeError, match="temperature.*0-d"):
    emoloss.fused_token_stats(*problem, temperature=np.array([0.7]))


@pytest.mark.parametrize("option, value", [("softcap", 1e-40), ("temperature", 1e-40),
                                           ("softcap", 1e39), ("temperature", 1e39)])
def test_values_out_of_float32_range_are_refused(option, value, problem):
  """1 / 1e-40 overflows float32 (every output would be NaN); 1e39 is inf in float32."""
  with pytest.raises(ValueError, match=f"`{option}`.*float32"):
    emoloss.fused_token_stats(*problem, **{option: value})
  with pytest.raises(ValueError, match=f"`{option}`.*float32"):
    emoloss.fused_loss(*problem, per_token=emoloss.emo_ce_per_token(1), **{option: value})


def test_entropy_reaches_per_token_in_every_mode(problem):
  """One record for per_token: the entropy is there when read, whatever else is used."""
  hidden, head, labels, cost = problem
  bonus = lambda s: emoloss.emo_ce_per_token(1)(s) - 0.1 * s.entropy
  got = emoloss.fused_loss(hidden, head, labels, cost, per_token=bonus)
  stats = helpers.naive_token_stats(hidden, head, labels, cost)
  helpers.assert_close(got, jnp.mean(bonus(stats)), name="EMO + CE - entropy")


def count_compilations(fn):
  """Number of XLA backend compilations while running ``fn()``."""
  events = []
  listener = lambda event, duration, **_: events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    jax.block_until_ready(fn())
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return sum(event == "/jax/core/compile/backend_compile_duration" for event in events)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_eager_calls_reuse_the_compiled_scan(name, problem):
  """An eager call compiles once; the next with the same shapes and options compiles nothing
  (before, every eager call compiled its lax.scan again), with and without a gradient."""
  fn = lambda h: jnp.sum(jax.tree.leaves(FUNCTIONS[name](h, *problem[1:], chunk_size=4))[0])
  hidden = problem[0]
  shifted = hidden + 1.0
  count_compilations(lambda: fn(hidden))
  count_compilations(lambda: jax.grad(fn)(hidden))
  assert count_compilations(lambda: fn(shifted)) == 0
  assert count_compilations(lambda: jax.grad(fn)(shifted)) == 0
