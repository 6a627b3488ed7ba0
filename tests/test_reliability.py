"""Where real users live: every public loss and the fused path on confident (saturated) logits,
-inf logits (vocabulary masks), garbage in masked rows, out-of-range labels, float64 mode and
buffer donation. Eager and ``jax.jit`` must agree, no row may change another, nothing may be NaN
that the maths says is finite.

Every loss is registered in ``LOSSES`` (a test fails when a public loss is missing), with a
``call(logits, labels, where)`` adapter supplying its extra arguments.
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emoloss
from tests.losses import registry

V = 5
N = 8
EMBEDDINGS = registry.embeddings(V)
PRIOR = registry.prior(V)
Loss = registry.Loss


# The losses (tests/losses/registry.py, shared with tests/losses/test_common.py) and the fused
# per-example losses.
LOSSES = {
    **registry.LOSSES,
    "fused_token_stats": Loss(
        lambda z, y, w: sum(emoloss.fused_token_stats(z, jnp.eye(V), y, EMBEDDINGS, where=w,
                                                      chunk_size=2))),
    "fused_emo_ce_loss": Loss(
        lambda z, y, w: emoloss.fused_emo_ce_loss(z, jnp.eye(V), y, np.eye(V, dtype=np.float32),
                                                  where=w, chunk_size=3)),
    "fused_mixce_loss": Loss(
        lambda z, y, w: emoloss.fused_mixce_loss(z, jnp.eye(V), y, where=w, chunk_size=2)),
    "fused_emo_ce_loss[uncapped]": Loss(
        lambda z, y, w: emoloss.fused_emo_ce_loss(z, jnp.eye(V), y, EMBEDDINGS, max_ratio=None,
                                                  where=w, chunk_size=3)),
}
FUSED = [name for name in LOSSES if name.startswith("fused")]
# Public names of emoloss.fused that are not per-example losses: the one-pass reduced (scalar)
# loss and its per-token helpers (confident tokens, masks and -inf: see tests/fused/test_onepass.py).
NOT_FUSED_LOSSES = {"fused_loss", "ce_per_token", "emo_ce_per_token"}


def test_every_public_loss_is_registered():
  registered = {name.split("[")[0] for name in LOSSES}
  missing = registry.unregistered(emoloss.losses.__all__) | (
      {n for n in emoloss.fused.__all__ if n.islower()} - registered - NOT_FUSED_LOSSES)
  assert not missing, f"register these in tests/test_reliability.py: {sorted(missing)}"


def saturated_problem(binary: bool, dtype=np.float32):
  """Confidently right and confidently wrong rows at margins 10, 30, 100 (and 1e4), label 0."""
  margins = np.array([10.0, 30.0, 100.0, 1e4])
  signs = np.array([1.0] * 4 + [-1.0] * 4)
  if binary:
    logits = np.concatenate([margins, -margins]) * np.where(np.arange(N) % 2 == 0, 1, -1)
    labels = (signs * np.where(np.arange(N) % 2 == 0, 1, -1) > 0).astype(np.int32)
    return jnp.asarray(logits, dtype), jnp.asarray(labels)
  logits = np.zeros((N, V))
  logits[:, 0] = signs * np.tile(margins, 2)
  return jnp.asarray(logits, dtype), jnp.zeros(N, jnp.int32)


def _value_and_grad(loss: Loss, logits, labels, where):
  value, pullback = jax.vjp(lambda z: loss.call(z, labels, where), logits)
  (grad,) = pullback(jnp.ones_like(value))
  return value, grad


@functools.cache
def _compiled(name: str):
  """One jitted value-and-gradient per loss, with labels and mask as arguments (so that new
  values reuse the compiled program)."""
  return jax.jit(functools.partial(_value_and_grad, LOSSES[name]))


def value_and_grad(name: str, logits, labels, where=None, jit=True):
  """Per-example values and the gradient of their sum, as float32 NumPy arrays."""
  if jit:
    value, grad = _compiled(name)(logits, labels, where)
  else:
    value, grad = _value_and_grad(LOSSES[name], logits, labels, where)
  return np.asarray(value, np.float32), np.asarray(grad, np.float32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_jit_equals_eager_on_saturated_logits(name, dtype):
  loss = LOSSES[name]
  logits, labels = saturated_problem(loss.binary, dtype)
  eager_value, eager_grad = value_and_grad(name, logits, labels, jit=False)
  jit_value, jit_grad = value_and_grad(name, logits, labels, jit=True)
  assert np.all(np.isfinite(jit_value)) and np.all(np.isfinite(jit_grad)), (jit_value, jit_grad)
  assert np.all(np.isfinite(eager_value)) and np.all(np.isfinite(eager_grad))
  if not loss.well_conditioned:
    return
  np.testing.assert_allclose(jit_value, eager_value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jit_grad, eager_grad, rtol=1e-5, atol=1e-6)
  if not loss.at_most_ce_when_right:
    return
  # Confidently right rows (the first four) lose at most what cross-entropy loses there.
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  assert np.all(jit_value[:4] <= np.maximum(np.asarray(ce[:4]), 1e-6) * 1.01 + 1e-6)


def test_emo_ce_mix_is_finite_where_published_guard_folds():
  """The reproducer of the issue: p_y rounds to 1, EMO = CE = 0; the published `+1e-10` guard is
  folded by XLA, giving 0/0. Also EMO rounding below 0 must not flip the EMO gradient."""
  logits = jnp.array([[30.0, -30.0, -30.0, -30.0]])
  for fn in (jax.jit(lambda z: emoloss.emo_ce_loss(z, jnp.array([0]), jnp.eye(4))),
             jax.jit(lambda z: emoloss.emo_ce_loss(z, jnp.array([0]), jnp.eye(4),
                                                   max_ratio=None))):
    assert np.asarray(fn(logits)) == 0.0
    assert np.all(np.isfinite(jax.grad(lambda z, fn=fn: fn(z).sum())(logits)))
  ratio_mix = emoloss.emo_ce_combination(jnp.array([0.5, 0.5, 0.0]), jnp.array([-1e-7, 0.0, 0.0]))
  np.testing.assert_array_equal(ratio_mix, [0.25, 0.25, 0.0])
  # The stop-gradient ratio is clipped to [0, max_ratio]: d mix / d emo = ratio / 2 >= 0.
  d_emo = jax.grad(lambda e: emoloss.emo_ce_combination(jnp.array([0.9]), e, max_ratio=None
                                                        ).sum())(jnp.array([1e-3]))
  np.testing.assert_allclose(d_emo, [0.5 * 0.9 / 1e-3], rtol=1e-6)
  d_emo = jax.grad(lambda e: emoloss.emo_ce_combination(jnp.array([0.9]), e).sum())(
      jnp.array([1e-3]))
  np.testing.assert_allclose(d_emo, [0.5 * 3.0])


def random_problem(binary: bool, seed: int = 0):
  rng = np.random.default_rng(seed)
  if binary:
    return (jnp.asarray(rng.normal(size=N) * 3, jnp.float32),
            jnp.asarray(rng.integers(0, 2, N), jnp.int32))
  return (jnp.asarray(rng.normal(size=(N, V)) * 3, jnp.float32),
          jnp.asarray(rng.integers(0, V, N), jnp.int32))


GARBAGE = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e30}


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_rows_are_inert_whatever_they_hold(name):
  """A masked row holding NaN/inf logits and a pad label (V, -100) gives 0 and zero gradient,
  and every other row is unchanged bit for bit (batch statistics included: masked rows are
  left out of them)."""
  loss = LOSSES[name]
  logits, labels = random_problem(loss.binary)
  where = jnp.arange(N) != 2
  clean_value, clean_grad = value_and_grad(name, logits, labels, where, jit=True)
  for garbage in GARBAGE.values():
    for pad in ([V, -100] if not loss.binary else [7, -1]):
      bad_logits = logits.at[2].set(garbage)
      bad_labels = labels.at[2].set(pad)
      value, grad = value_and_grad(name, bad_logits, bad_labels, where, jit=True)
      np.testing.assert_array_equal(value, clean_value)
      np.testing.assert_array_equal(grad, clean_grad)
      if not loss.batch_statistic:
        assert value[2] == 0 and np.all(grad[2] == 0)


def _nan_rows(loss: Loss, logits, labels):
  """Row 2 with NaN logits: all of them, and (multi-class) only the target's or a competitor's."""
  if loss.binary:
    return {"row": logits.at[2].set(jnp.nan)}
  target = int(labels[2])
  return {"row": logits.at[2].set(jnp.nan), "target": logits.at[2, target].set(jnp.nan),
          "competitor": logits.at[2, (target + 1) % V].set(jnp.nan)}


def _assert_nan_rule(loss: Loss, value, grad, clean_value, clean_grad, where, context):
  """Row 2 holds a NaN: NaN value and gradient there (per-example losses; other rows bit for bit
  unchanged) or in every unmasked row (``nan_spreads``: the batch statistic is NaN); masked rows
  inert."""
  masked = ~np.asarray(where) if where is not None else np.zeros(N, bool)
  if loss.nan_spreads:
    assert np.all(np.isnan(value[~masked] if value.ndim else value)), (context, value)
    assert np.all(np.isnan(grad[~masked])), (context, grad)
  else:
    assert np.isnan(value[2]) and np.all(np.isnan(grad[2])), (context, value, grad)
    others = (np.arange(N) != 2) & ~masked
    np.testing.assert_array_equal(value[others], clean_value[others], err_msg=str(context))
    np.testing.assert_array_equal(grad[others], clean_grad[others], err_msg=str(context))
  if value.ndim:
    assert np.all(value[masked] == 0), (context, value)
  assert np.all(grad[masked] == 0), (context, grad)


@pytest.mark.parametrize("name", list(LOSSES))
def test_nan_in_an_unmasked_row_is_never_hidden(name):
  """The NaN rule (docs/overview.md, "Reliability"): a NaN logit anywhere in an unmasked row gives
  NaN for that row's value and every entry of its gradient, eagerly and under jit, never a finite
  number; masked rows stay inert; other rows are unchanged bit for bit. Batch-coupled losses (the
  F1 family, EXACT's ``batch_norm``): the NaN makes the batch statistic NaN, hence every unmasked
  row (value and gradient), never a finite value computed from it."""
  loss = LOSSES[name]
  logits, labels = random_problem(loss.binary, seed=9)
  where = jnp.arange(N) != 6
  clean_value, clean_grad = value_and_grad(name, logits, labels, where)
  nan_rows = _nan_rows(loss, logits, labels)
  for position, bad in nan_rows.items():
    value, grad = value_and_grad(name, bad, labels, where)
    _assert_nan_rule(loss, value, grad, clean_value, clean_grad, where, position)
  # Eagerly, without a mask (the operations of the saturated-logits test: compiled already).
  clean_value, clean_grad = value_and_grad(name, logits, labels, jit=False)
  bad = nan_rows["row" if loss.binary else "competitor"]
  value, grad = value_and_grad(name, bad, labels, jit=False)
  _assert_nan_rule(loss, value, grad, clean_value, clean_grad, None, "eager")
  # bf16 logits (the jitted program of the saturated-logits test, no mask).
  bf16 = logits.astype(jnp.bfloat16)
  clean_value, clean_grad = value_and_grad(name, bf16, labels)
  value, grad = value_and_grad(name, bf16.at[2].set(jnp.nan), labels)
  _assert_nan_rule(loss, value, grad, clean_value, clean_grad, None, "bf16")
  if loss.binary:
    return
  # +inf on a competitor: the target cannot win; the loss's maximum or NaN, no other number.
  value, _ = value_and_grad(name, logits.at[2, (int(labels[2]) + 1) % V].set(jnp.inf), labels,
                            where)
  assert np.isnan(value[2]) or value[2] == loss.upper_bound, value


@pytest.mark.parametrize("name", [n for n in LOSSES if not LOSSES[n].batch_statistic])
def test_one_bad_row_never_changes_another(name):
  """Unmasked rows are computed independently: NaN, inf, huge logits or an out-of-range label in
  row 2 leave every other row's value and gradient bit for bit unchanged."""
  loss = LOSSES[name]
  logits, labels = random_problem(loss.binary, seed=1)
  clean_value, clean_grad = value_and_grad(name, logits, labels, jit=True)
  others = np.arange(N) != 2
  perturbations = [(logits.at[2].set(g), labels) for g in GARBAGE.values()]
  perturbations.append((logits, labels.at[2].set(V if not loss.binary else 3)))
  perturbations.append((logits, labels.at[2].set(-1)))
  for bad_logits, bad_labels in perturbations:
    value, grad = value_and_grad(name, bad_logits, bad_labels, jit=True)
    np.testing.assert_array_equal(value[others], clean_value[others])
    np.testing.assert_array_equal(grad[others], clean_grad[others])


@pytest.mark.parametrize("name", [n for n in LOSSES if not LOSSES[n].binary])
def test_out_of_range_label_gives_nan_not_a_clamped_loss(name):
  """The documented label rule: an unmasked label outside [0, V) (V, or -1 which NumPy would wrap)
  gives NaN for its example, eagerly and under jit."""
  logits, labels = random_problem(False, seed=2)
  for bad in (V, V + 3, -1):
    for jit in (False, True):
      value, _ = value_and_grad(name, logits, labels.at[5].set(bad), jit=jit)
      assert np.isnan(value[5]) and not np.isnan(np.delete(value, 5)).any(), (bad, value)


@pytest.mark.parametrize("name", [n for n in LOSSES if not LOSSES[n].binary and n not in FUSED])
def test_minus_inf_logits(name):
  """Vocabulary masks: -inf on non-target classes gives a finite value and gradient equal to
  those with the class removed from the vocabulary; -inf on the target gives the loss's maximum
  (inf for unbounded losses), never NaN."""
  loss = LOSSES[name]
  logits, labels = random_problem(False, seed=4)
  labels = labels % 3  # targets among the first three classes
  masked = logits.at[:, 3:].set(-jnp.inf)
  for jit in (False, True):
    value, grad = value_and_grad(name, masked, labels, jit=jit)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (value, grad)
    assert np.all(grad[:, 3:] == 0)
  # Against -1e4 logits (exp underflows to exactly 0 in float32: the same distribution).
  far_value, far_grad = value_and_grad(name, logits.at[:, 3:].set(-1e4), labels, jit=True)
  # TaiLr's smoothing target and the batch statistics leave out -inf classes, not -1e4 ones.
  if not loss.counts_far_classes and not loss.batch_statistic:
    np.testing.assert_allclose(value, far_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, far_grad, rtol=1e-4, atol=1e-6)
  on_target = logits.at[jnp.arange(N), labels].set(-jnp.inf)
  far = logits.at[jnp.arange(N), labels].set(-1e4)
  for jit in (False, True):
    value, grad = value_and_grad(name, on_target, labels, jit=jit)
    assert not np.isnan(value).any(), value
    far_value, _ = value_and_grad(name, far, labels, jit=jit)
    if not loss.counts_far_classes:  # smoothing's target counts a -1e4 target, not a -inf one
      assert np.all(value >= far_value * (1 - 1e-6) - 1e-6), (value, far_value)
    assert np.all(value <= loss.upper_bound)


@pytest.mark.parametrize("name", [n for n in LOSSES if not LOSSES[n].binary and n not in FUSED])
def test_soft_labels_with_minus_inf_logits(name):
  """Soft labels with zero mass on -inf classes: finite, equal to the integer-label loss when the
  soft label is one-hot (losses that accept soft labels)."""
  loss = LOSSES[name]
  logits, labels = random_problem(False, seed=5)
  labels = labels % 3
  masked = logits.at[:, 3:].set(-jnp.inf)
  one_hot = jax.nn.one_hot(labels, V)
  try:
    soft_value, soft_grad = value_and_grad(name, masked, one_hot, jit=True)
  except TypeError:
    pytest.skip("integer labels only")  # e.g. exact_loss, tailr_loss, margin_cross_entropy
  value, grad = value_and_grad(name, masked, labels, jit=True)
  assert np.all(np.isfinite(soft_value)) and np.all(np.isfinite(soft_grad))
  if not loss.well_conditioned:
    return
  np.testing.assert_allclose(soft_value, value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(soft_grad, grad, rtol=1e-5, atol=1e-6)


def test_binary_losses_with_infinite_logits():
  """F1-weighted CE and the smoothed accuracy stay finite for ±inf logits on the side of their
  label, and give the maximum (not NaN) on the wrong side."""
  logits = jnp.array([jnp.inf, -jnp.inf, 2.0, -1.0])
  labels = jnp.array([1, 0, 1, 0])
  for fn in (emoloss.f1_weighted_binary_cross_entropy, emoloss.binary_smoothed_accuracy_loss):
    value = fn(logits, labels)
    grad = jax.grad(lambda z, fn=fn: fn(z, labels).sum())(logits)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad)), (fn, value, grad)
    np.testing.assert_array_equal(value[:2], [0.0, 0.0])
    wrong = fn(logits, 1 - labels)
    assert not np.isnan(wrong).any()
  np.testing.assert_array_equal(emoloss.f1_weighted_binary_cross_entropy(logits, 1 - labels)[:2],
                                [np.inf, np.inf])


@pytest.mark.parametrize("name", list(LOSSES))
def test_float64_mode(name):
  """With jax_enable_x64 every loss traces, runs and computes what it computes in the default
  mode (losses compute in float32 whatever the input). Eager calls trace the same code."""
  loss = LOSSES[name]
  logits, labels = random_problem(loss.binary, seed=6)
  want, want_grad = value_and_grad(name, logits, labels, jit=True)
  with jax.enable_x64(True):
    z64 = jnp.asarray(np.asarray(logits), jnp.float64)
    y64 = jnp.asarray(np.asarray(labels), jnp.int64)
    value, grad = value_and_grad(name, z64, y64, jit=True)  # traced (and run) in x64 mode
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(grad))
    if loss.well_conditioned:
      np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    # The NaN rule holds in x64 mode too (same compiled program).
    nan_value, nan_grad = value_and_grad(name, z64.at[2].set(jnp.nan), y64, jit=True)
    _assert_nan_rule(loss, nan_value, nan_grad, value, grad, None, "x64")


TRANSFORMS = {
    "flood": lambda: optax.chain(emoloss.flood(0.1), optax.sgd(0.1)),
    "alternate_ascent_descent": lambda: emoloss.alternate_ascent_descent(optax.adam(0.1), 0.5),
    "scale_by_ascent_descent": lambda: optax.chain(
        emoloss.scale_by_ascent_descent(0.5, flood_level=0.2), optax.sgd(0.1)),
    "backstitch": lambda: emoloss.backstitch(0.1),
    "tiger": lambda: emoloss.tiger(0.1, rms_scaling=True),
    "scale_by_tiger": lambda: optax.chain(emoloss.scale_by_tiger(0.9, accumulation_steps=2),
                                          optax.sgd(0.1)),
    "grouped_tiger": lambda: emoloss.grouped_tiger(0.1),
    "normalize_by_running_gradient_norm": lambda: optax.chain(
        emoloss.normalize_by_running_gradient_norm(), optax.sgd(0.1)),
}


def test_every_public_transformation_is_registered():
  constructors = {n for n in emoloss.transforms.__all__ if n[0].islower()}
  not_transforms = {"alternation_equivalent_loss", "alternation_penalty", "flooded", "gradient_norm_penalty", "iflood_loss",
                    "iflooded", "tiger_parameter_labels"}
  missing = constructors - set(TRANSFORMS) - not_transforms
  assert not missing, f"register these in tests/test_reliability.py: {sorted(missing)}"


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_optimiser_state_can_be_donated(name):
  """`jax.jit(step, donate_argnums=...)` needs every state leaf in a buffer of its own."""
  tx = optax.with_extra_args_support(TRANSFORMS[name]())
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  state = tx.init(params)
  leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
  pointers = [x.unsafe_buffer_pointer() for x in leaves]
  assert len(set(pointers)) == len(pointers), "a buffer appears twice in the initial state"

  def step_fn(params, state, grads, value):
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state

  step = jax.jit(step_fn, donate_argnums=(0, 1))
  reference = jax.jit(step_fn)
  ref_params, ref_state = params, tx.init(params)
  for i in range(4):
    grads = jax.tree.map(lambda x, g=0.5 - 0.2 * i: jnp.full_like(x, g), params)
    value = jnp.float32(0.3 - 0.1 * i)
    ref_params, ref_state = reference(ref_params, ref_state, grads, value)
    params, state = step(params, state, grads, value)
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)


# Every transformation under `optax.inject_hyperparams`: (constructor, its numeric
# hyper-parameters (injected), other arguments (static), other values for the hyper-parameters).
INJECTABLE = {
    "flood": (emoloss.flood, {"flood_level": 0.1}, {}, {"flood_level": 0.5}),
    "scale_by_ascent_descent": (
        emoloss.scale_by_ascent_descent, {"ascent_ratio": 0.5, "flood_level": 0.2},
        {"ascent_first": True}, {"ascent_ratio": 0.25, "flood_level": 0.4}),
    "alternate_ascent_descent": (
        emoloss.alternate_ascent_descent, {"ascent_ratio": 0.5, "flood_level": 0.2},
        {"optimizer": optax.adam(0.1), "flip": "gradient", "ascent_first": True},
        {"ascent_ratio": 0.25, "flood_level": 0.4}),
    "backstitch": (emoloss.backstitch, {"learning_rate": 0.1, "alpha": 0.3}, {},
                   {"learning_rate": 0.05, "alpha": 0.6}),
    "tiger": (emoloss.tiger, {"learning_rate": 0.1, "beta": 0.9, "weight_decay": 0.01,
                              "min_rms": 1e-3, "shrink_ratio": 0.99, "shrink_center": 0.0,
                              "accumulation_steps": 1},
              {"rms_scaling": True},
              {"learning_rate": 0.05, "beta": 0.8, "weight_decay": 0.02, "min_rms": 1e-2,
               "shrink_ratio": 0.9, "shrink_center": 1.0}),
    "scale_by_tiger": (emoloss.scale_by_tiger, {"beta": 0.9, "accumulation_steps": 2}, {},
                       {"beta": 0.5}),
    "normalize_by_running_gradient_norm": (
        emoloss.normalize_by_running_gradient_norm, {"momentum": 0.8, "floor": 0.01}, {},
        {"momentum": 0.5, "floor": 0.5}),
    "grouped_tiger": (emoloss.grouped_tiger, {"learning_rate": 0.1, "beta": 0.9,
                                              "weight_decay": 0.01, "min_rms": 1e-3,
                                              "shrink_ratio": 0.99, "accumulation_steps": 1}, {},
                      {"learning_rate": 0.05, "beta": 0.8, "weight_decay": 0.02, "min_rms": 1e-2,
                       "shrink_ratio": 0.9}),
}
def test_every_transformation_is_checked_under_inject_hyperparams():
  missing = set(TRANSFORMS) - set(INJECTABLE)
  assert not missing, f"add these to INJECTABLE in tests/test_reliability.py: {sorted(missing)}"


@pytest.mark.parametrize("name", list(INJECTABLE))
def test_inject_hyperparams(name):
  """``optax.inject_hyperparams(transform)(**hyper_parameters)`` behaves as ``transform`` with
  the same values, eagerly and under jit; its numeric hyper-parameters are in the state, and
  changing them there is the transform built with the new values. No argument defaults to a
  callable that is not a schedule (``inject_hyperparams`` would evaluate it as one)."""
  constructor, hyper, other, new_hyper = INJECTABLE[name]
  for parameter in inspect.signature(constructor).parameters.values():
    assert parameter.default is parameter.empty or not callable(parameter.default), parameter
  params = {"w": jnp.linspace(0.5, 1.5, 6).reshape(3, 2), "bias": jnp.zeros(2)}
  injected = optax.inject_hyperparams(constructor)(**hyper, **other)
  plain = optax.with_extra_args_support(constructor(**hyper, **other))
  changed = optax.with_extra_args_support(constructor(**new_hyper, **other))

  def grads_and_value(i):
    grads = jax.tree.map(lambda x, i=i: jnp.full_like(x, 0.5 - 0.3 * i) + 0.1 * x, params)
    return grads, jnp.float32(0.05 + 0.1 * i)

  for jit in (False, True):
    wrap = jax.jit if jit else (lambda f: f)
    state, plain_state = injected.init(params), plain.init(params)
    assert set(state.hyperparams) == set(hyper), state.hyperparams
    for i in range(3):
      grads, value = grads_and_value(i)
      updates, state = wrap(injected.update)(grads, state, params, value=value)
      want, plain_state = wrap(plain.update)(grads, plain_state, params, value=value)
      jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), updates, want)
    state.hyperparams.update({k: jnp.asarray(v, jnp.float32) for k, v in new_hyper.items()})
    changed_state, differs = plain_state, False
    for i in range(3, 6):
      grads, value = grads_and_value(i)
      updates, state = wrap(injected.update)(grads, state, params, value=value)
      want, changed_state = wrap(changed.update)(grads, changed_state, params, value=value)
      jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), updates, want)
      old, plain_state = wrap(plain.update)(grads, plain_state, params, value=value)
      differs |= any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, want)))
    assert differs, "the new hyper-parameter values changed nothing: the check cannot fail"


def test_flood_with_nan_value_leaves_the_gradient_unchanged():
  tx = emoloss.flood(0.1)
  grads = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(grads)
  updates, _ = tx.update(grads, state, value=jnp.float32(jnp.nan))
  np.testing.assert_array_equal(updates["w"], grads["w"])
  updates, _ = tx.update(grads, state, value=jnp.float32(0.05))
  np.testing.assert_array_equal(updates["w"], -grads["w"])


def test_tiger_without_weight_decay_needs_no_params():
  tx = emoloss.tiger(0.1, weight_decay=0)
  grads = {"w": jnp.array([1.0, -2.0])}
  updates, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_allclose(updates["w"], [-0.1, 0.1])
  decayed = emoloss.tiger(0.1, weight_decay=0.01)
  with pytest.raises(ValueError):
    decayed.update(grads, decayed.init(grads))


def test_empty_and_fully_masked_batches_agree():
  empty = jnp.zeros((0,), jnp.float32)
  empty_labels = jnp.zeros((0,), jnp.int32)
  logits, labels = random_problem(True)
  none = jnp.zeros(N, bool)
  np.testing.assert_array_equal(emoloss.smooth_f1_loss(empty, empty_labels),
                                emoloss.smooth_f1_loss(logits, labels, where=none))
  np.testing.assert_array_equal(emoloss.iflood_loss(empty, 0.1),
                                emoloss.iflood_loss(logits, 0.1, where=none))
  assert float(emoloss.iflood_loss(empty, 0.1)) == 0.0


def test_masked_mean_recipe_of_the_readme_is_finite_when_all_masked():
  logits, labels = random_problem(False)
  where = jnp.zeros(N, bool)
  per_token = emoloss.emo_ce_loss(logits, labels, EMBEDDINGS, where=where)
  mean = jnp.sum(per_token) / jnp.maximum(jnp.sum(where), 1)
  assert float(mean) == 0.0


# ------------------------------------------------------------------------------------------------
# Clear errors: name the argument, say what to do.


def test_float_class_indices_are_refused_with_a_cast_hint():
  logits, labels = random_problem(False)
  with pytest.raises(TypeError, match="cast labels to an integer dtype"):
    emoloss.softmax_focal_loss(logits, labels.astype(jnp.float32))
  with pytest.raises(TypeError, match="cast labels to an integer dtype"):
    emoloss.exact_loss(logits, labels.astype(jnp.float32))


@pytest.mark.parametrize("call,match", [
    (lambda z, y: emoloss.softmax_focal_loss(z, y, gamma=jnp.ones(N)), "`gamma` must be a scalar"),
    (lambda z, y: emoloss.tailr_loss(z, y, gamma=jnp.ones(N)), "`gamma` must be a scalar"),
    (lambda z, y: emoloss.emo_ce_loss(z, y, EMBEDDINGS, mode=True), "`mode`"),
    (lambda z, y: emoloss.emo_ce_loss(z, y, EMBEDDINGS, max_ratio=0.0), "`max_ratio`"),
    (lambda z, y: emoloss.exact_loss(z, y, num_nodes=1000), "`num_nodes`"),
    (lambda z, y: emoloss.margin_cross_entropy(z, y, jnp.full(V, jnp.nan)), "`margins`"),
    (lambda z, y: emoloss.logit_adjusted_cross_entropy(z, y, -PRIOR), "`class_prior`"),
])
def test_bad_arguments_are_named(call, match):
  logits, labels = random_problem(False)
  with pytest.raises(ValueError, match=match):
    call(logits, labels)


@pytest.mark.parametrize("prior", [[0.5, -0.1, 0.6], [0.0, 0.0, 0.0], [np.nan, 0.5, 0.5],
                                   [[0.5, 0.5]]])
def test_log_prior_adjustment_validates_the_prior(prior):
  with pytest.raises(ValueError, match="class_prior"):
    emoloss.log_prior_adjustment(np.array(prior))
  np.testing.assert_allclose(emoloss.log_prior_adjustment(np.array([0.0, 1.0, 3.0])),
                             np.log(np.array([0.0, 0.25, 0.75]) + 1e-12), rtol=1e-6)


def test_tailr_weight_validates_gamma():
  for gamma in (1.5, -0.1, np.nan):
    with pytest.raises(ValueError, match="gamma"):
      emoloss.tailr_weight(jnp.zeros(3), gamma)


def test_binary_labels_outside_0_1_are_refused_and_bools_accepted():
  logits, labels = random_problem(True)
  for fn in (emoloss.f1_weighted_binary_cross_entropy, emoloss.smooth_f1_loss,
             emoloss.binary_smoothed_accuracy_loss):
    with pytest.raises(ValueError, match="binary `labels`"):
      fn(logits, labels.at[0].set(2))
    np.testing.assert_array_equal(fn(logits, labels.astype(bool)), fn(logits, labels))
  with pytest.raises(ValueError, match="binary `labels`"):
    emoloss.f1_weighted_binary_cross_entropy(logits, labels.astype(jnp.float32).at[0].set(0.5))
  # The smoothed accuracy takes soft targets in [0, 1].
  emoloss.binary_smoothed_accuracy_loss(logits, labels.astype(jnp.float32).at[0].set(0.5))


def test_check_label_range_names_positions_and_refuses_tracers():
  labels = np.array([[0, 4, 5], [-100, 1, 2]])
  with pytest.raises(ValueError, match=r"2 of 6 are out of range.*labels\[0, 2\] = 5.*"
                                       r"labels\[1, 0\] = -100"):
    emoloss.check_label_range(labels, 5)
  emoloss.check_label_range(labels % 5, 5)
  with pytest.raises(TypeError, match="call it eagerly"):
    jax.jit(lambda y: emoloss.check_label_range(y, 5))(labels % 5)
  with pytest.raises(TypeError, match="cast labels to an integer dtype"):
    emoloss.check_label_range(labels.astype(np.float32), 5)


def test_fused_loss_label_rule_and_inert_padding():
  """The reduced one-pass loss follows the same label rule: an unmasked out-of-range label makes
  it NaN; masked rows (NaN hidden states, pad labels) change neither value nor gradient."""
  logits, labels = random_problem(False, seed=7)
  head = jnp.eye(V)
  loss = jax.jit(lambda h, y, w: emoloss.fused_loss(h, head, y, where=w))
  where = jnp.arange(N) != 3
  clean = loss(logits, labels, where)
  garbage = loss(logits.at[3].set(jnp.nan), labels.at[3].set(-100), where)
  np.testing.assert_array_equal(garbage, clean)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(clean, jnp.sum(jnp.where(where, ce, 0.0)) / (N - 1), rtol=1e-5)
  assert np.isnan(loss(logits, labels.at[3].set(V), None))


@pytest.mark.parametrize("margin", [None, 0.5])
def test_exact_loss_ignores_masked_classes_even_with_a_margin(margin):
  """A -inf class is removed from the competition: the loss equals that of the vocabulary
  without it (with a margin too, whose clip would otherwise keep it competing m behind)."""
  logits, labels = random_problem(False, seed=8)
  labels = labels % 3
  masked = logits.at[:, 3:].set(-jnp.inf)
  for log_prob in (False, True):
    got = emoloss.exact_loss(masked, labels, margin=margin, log_prob=log_prob, num_nodes=32)
    want = emoloss.exact_loss(logits[:, :3], labels, margin=margin, log_prob=log_prob,
                              num_nodes=32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_implementation_modules_are_private_and_every_public_name_is_reexported():
  """Optax's layout: no public function shadows a module of the same name (``emoloss.transforms
  .tiger`` is the function), and every public name of a subpackage is importable from it and
  from ``emoloss``."""
  import importlib
  import pkgutil
  import types

  for sub in (emoloss.losses, emoloss.transforms):
    for info in pkgutil.iter_modules(sub.__path__):
      assert info.name.startswith("_"), f"{sub.__name__}.{info.name} is a public module"
    for name in sub.__all__:
      value = getattr(sub, name)
      assert not isinstance(value, types.ModuleType), name
      assert getattr(emoloss, name) is value, name
      assert getattr(importlib.import_module(sub.__name__), name) is value
  assert callable(emoloss.transforms.tiger) and emoloss.transforms.tiger is emoloss.tiger
