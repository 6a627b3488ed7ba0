"""Tiger's buffer-free gradient accumulation, per-row embedding scale, float16 RMS and
``optax.inject_hyperparams``, against a NumPy simulation of the reference's rule (bojone/tiger,
``grad_accum_steps``) and against the optax pieces tiger was built from before."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from emoloss.transforms import grouped_tiger, scale_by_tiger, tiger, tiger_parameter_labels
from tests.transforms.test_tiger import _nest


def simulate_tiger(params, grads_seq, *, k, lr, beta, weight_decay, groups=None, rms=True,
                   shrink=None, min_rms=1e-3):
  """The reference's update in float64, tensor by tensor, micro-step by micro-step.

  At micro-step t: b1 = β if t % k == 0 else 1, m ← b1 m + (1-β)/k g; the tensor moves by
  η_n s (sign(m) + λθ) (n = t // k; s = max(RMS, min_rms) of the tensor or of each row) only when
  (t+1) % k == 0. A non-finite gradient keeps m and moves the tensor to c + s_shrink (θ - c) at
  once. ``groups`` maps a name to "default" | "embedding" | "bias" | "norm_scale".
  """
  params = {n: np.array(v, np.float64) for n, v in params.items()}
  momentum = {n: np.zeros_like(v) for n, v in params.items()}
  groups = groups or {n: "default" for n in params}
  history = []
  for t, grads in enumerate(grads_seq):
    rate = lr(t // k) if callable(lr) else lr
    for n, theta in params.items():
      group = groups[n]
      g = np.asarray(grads[n], np.float64)
      if shrink is not None and not np.all(np.isfinite(g)):
        center = 1.0 if group == "norm_scale" else 0.0
        params[n] = (theta - center) * shrink + center
        continue
      b1 = beta if t % k == 0 else 1.0
      momentum[n] = b1 * momentum[n] + (1 - beta) / k * g
      if (t + 1) % k:
        continue
      if group in ("bias", "norm_scale"):
        eff, decay = 0.5 * rate, 0.0
      else:
        decay, eff = weight_decay, rate
        if rms and group == "embedding":
          eff = rate * np.maximum(np.sqrt(np.mean(theta**2, axis=-1, keepdims=True)), min_rms)
        elif rms:
          eff = rate * max(np.sqrt(np.mean(theta**2)), min_rms)
      params[n] = theta - eff * (np.sign(momentum[n]) + decay * theta)
    history.append({n: v.copy() for n, v in params.items()})
  return history, momentum


def as_f32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def run(tx, params, grads_seq, jit=True):
  """Applies ``tx`` over ``grads_seq``; returns the parameters after each call and the state."""
  theta = as_f32(params)
  state = tx.init(theta)
  update = jax.jit(tx.update) if jit else tx.update
  history = []
  for grads in grads_seq:
    updates, state = update(as_f32(grads), state, theta)
    theta = optax.apply_updates(theta, updates)
    history.append(theta)
  return history, state


def random_problem(seed, steps, shapes):
  rng = np.random.default_rng(seed)
  params = {n: rng.normal(size=s) for n, s in shapes.items()}
  # Gradients that change sign from step to step, so that the momentum (not the last gradient)
  # decides the direction.
  grads_seq = [{n: rng.normal(size=s) * (1 + t % 3) * (-1) ** t for n, s in shapes.items()}
               for t in range(steps)]
  return params, grads_seq


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("rms", [False, True])
def test_accumulation_matches_the_numpy_rule(k, rms):
  params, grads_seq = random_problem(k, 3 * k + 2, {"w": (3, 4), "v": (5,)})
  schedule = optax.linear_schedule(0.1, 0.02, 4)  # of the update count n = t // k
  want, want_mu = simulate_tiger(params, grads_seq, k=k, lr=lambda n: float(schedule(n)),
                                 beta=0.8, weight_decay=0.1, rms=rms)
  tx = tiger(schedule, beta=0.8, weight_decay=0.1, rms_scaling=rms, accumulation_steps=k)
  got, state = run(tx, params, grads_seq)
  for t, (g, w) in enumerate(zip(got, want)):
    for n in w:
      np.testing.assert_allclose(g[n], w[n], rtol=1e-5, atol=1e-6, err_msg=f"t={t} {n}")
      if (t + 1) % k:  # between updates the parameters do not move at all
        previous = got[t - 1][n] if t else as_f32(params)[n]
        np.testing.assert_array_equal(g[n], previous)
  for n in want_mu:
    np.testing.assert_allclose(state.momentum.mu[n], want_mu[n], rtol=1e-5, atol=1e-7)
  # The state: the position in the cycle, and (the schedule's count) the updates made.
  assert int(state.momentum.cycle_position) == len(grads_seq) % k
  assert int(optax.tree_utils.tree_get(state.step, "count")) == len(grads_seq) // k


@pytest.mark.parametrize("k", [2, 3])
def test_accumulation_with_nonfinite_gradients_and_groups_matches_the_numpy_rule(k):
  """grouped_tiger with accumulation: groups, per-row embedding RMS and the NaN shrink (which
  acts at the micro-step of the bad gradient, an update step or not, as in the reference)."""
  shapes = {"dense/kernel": (3, 4), "dense/bias": (4,), "norm/scale": (4,),
            "embed/embedding": (6, 3)}
  params, grads_seq = random_problem(10 + k, 4 * k, shapes)
  params["norm/scale"] = 1.0 + 0.1 * params["norm/scale"]
  params["embed/embedding"] *= np.array([0.01, 0.1, 1.0, 3.0, 0.5, 2.0])[:, None]
  grads_seq[1]["dense/kernel"][0, 1] = np.nan  # inside a cycle
  grads_seq[k - 1]["norm/scale"][2] = np.inf  # at an update step
  grads_seq[2 * k]["embed/embedding"][:] = np.nan  # the first micro-step of a cycle
  groups = {n: tiger_parameter_labels({n.split("/")[1]: 0})[n.split("/")[1]] for n in shapes}
  assert groups == {"dense/kernel": "default", "dense/bias": "bias", "norm/scale": "norm_scale",
                    "embed/embedding": "embedding"}
  want, want_mu = simulate_tiger(params, grads_seq, k=k, lr=0.05, beta=0.7, weight_decay=0.1,
                                 groups=groups, shrink=0.9)
  tx = grouped_tiger(0.05, beta=0.7, weight_decay=0.1, shrink_ratio=0.9, accumulation_steps=k)
  got, state = run(tx, _nest(params), [_nest(g) for g in grads_seq])
  for t, (g, w) in enumerate(zip(got, want)):
    for n, v in w.items():
      outer, inner = n.split("/")
      np.testing.assert_allclose(g[outer][inner], v, rtol=1e-5, atol=1e-6, err_msg=f"t={t} {n}")
  for n, v in want_mu.items():
    outer, inner = n.split("/")
    mu = state.inner_states[groups[n]].inner_state.momentum.mu
    np.testing.assert_allclose(mu[outer][inner], v, rtol=1e-5, atol=1e-7, err_msg=n)


def old_tiger(lr, beta, weight_decay, mask, rms_scaling, min_rms=1e-3):
  """tiger before accumulation_steps: a chain of optax pieces."""
  parts = [optax.scale_by_lion(b1=beta, b2=beta), optax.add_decayed_weights(weight_decay, mask)]
  if rms_scaling:
    parts.append(optax.scale_by_param_block_rms(min_scale=min_rms))
  return optax.chain(*parts, optax.scale_by_learning_rate(lr))


@pytest.mark.parametrize("rms_scaling", [False, True])
@pytest.mark.parametrize("scheduled", [False, True])
def test_one_accumulation_step_is_the_old_tiger_bit_for_bit(rms_scaling, scheduled):
  params, grads_seq = random_problem(7, 8, {"w": (4, 3), "b": (3,)})
  params["w"] *= 1e-4  # below min_rms: the floor is used
  lr = optax.cosine_decay_schedule(0.03, 8) if scheduled else 0.03
  mask = {"w": True, "b": False}
  for k in (1, jnp.int32(1)):  # a Python 1 takes the path without gating, an array k gates
    new, new_state = run(tiger(lr, 0.9, 0.05, mask=mask, rms_scaling=rms_scaling,
                               accumulation_steps=k), params, grads_seq)
    old, old_state = run(old_tiger(lr, 0.9, 0.05, mask, rms_scaling), params, grads_seq)
    for a, b in zip(new, old):
      jax.tree.map(np.testing.assert_array_equal, a, b)
    jax.tree.map(np.testing.assert_array_equal, new_state.momentum.mu, old_state[0].mu)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_equals_multisteps_without_its_buffer(k):
  params, grads_seq = random_problem(20 + k, 3 * k, {"w": (6, 5), "b": (5,)})
  ours = tiger(0.02, weight_decay=0.1, rms_scaling=True, accumulation_steps=k)
  multi = optax.MultiSteps(tiger(0.02, weight_decay=0.1, rms_scaling=True), k)
  got, state = run(ours, params, grads_seq)
  want, multi_state = run(multi, params, grads_seq)
  for a, b in zip(got, want):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  # The state: one momentum and two int32 scalars (the cycle's position and length); MultiSteps
  # adds a parameter-sized accumulator.
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params)) // 2  # float64 -> float32
  ours_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  assert len(jax.tree.leaves(state)) == 2 + len(jax.tree.leaves(params))
  assert ours_bytes == param_bytes + 2 * 4
  assert sum(x.nbytes for x in jax.tree.leaves(multi_state)) >= 2 * param_bytes


def test_grouped_tiger_state_is_one_momentum_whatever_k():
  model = nnx.eval_shape(lambda: _TinyLM(nnx.Rngs(0)))
  params = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), nnx.state(model, nnx.Param))
  param_leaves = jax.tree.leaves(params)
  param_bytes = sum(x.nbytes for x in param_leaves)
  for k in (1, 8):
    state = grouped_tiger(1e-3, accumulation_steps=k).init(params)
    leaves = jax.tree.leaves(state)
    big = [x for x in leaves if x.size > 1]
    assert sorted(x.shape for x in big) == sorted(x.shape for x in param_leaves if x.size > 1)
    # Beyond the momentum: two int32 scalars (cycle position and length) per group (4 groups).
    assert sum(x.nbytes for x in leaves) == param_bytes + 4 * 2 * 4


class _TinyLM(nnx.Module):

  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 4, rngs=rngs)
    self.linear = nnx.Linear(4, 4, rngs=rngs)
    self.norm = nnx.LayerNorm(4, rngs=rngs)

  def __call__(self, ids):
    return self.embed.attend(self.norm(self.linear(self.embed(ids))))


def test_nnx_embed_is_scaled_per_row():
  model = _TinyLM(nnx.Rngs(1))
  table = np.asarray(model.embed.embedding[...])
  model.embed.embedding[...] = jnp.asarray(table * np.linspace(0.01, 3.0, 11)[:, None])
  graphdef, params = nnx.split(model, nnx.Param)
  labels = tiger_parameter_labels(params)
  assert labels["embed"]["embedding"] == "embedding"
  tx = grouped_tiger(0.1, weight_decay=0.0)
  ids = jnp.arange(11)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(ids) ** 2))(params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  before = np.asarray(params["embed"]["embedding"][...], np.float64)
  change = np.asarray(updates["embed"]["embedding"][...], np.float64)
  g = np.asarray(grads["embed"]["embedding"][...], np.float64)
  row_rms = np.maximum(np.sqrt(np.mean(before**2, axis=-1, keepdims=True)), 1e-3)
  np.testing.assert_allclose(change, -0.1 * row_rms * np.sign(g), rtol=1e-5, atol=1e-7)


def test_rms_is_taken_in_float32_for_float16_leaves():
  """300² overflows float16 (max 65504): the RMS must not become inf (the update then too)."""
  base = np.array([[300.0, -300.0, 200.0], [0.5, 0.25, -0.5]])
  params = {"kernel": jnp.asarray(base, jnp.float16),
            "embedding": jnp.asarray(base, jnp.float16)}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = grouped_tiger(0.01, weight_decay=0.0)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert all(u.dtype == jnp.float16 for u in jax.tree.leaves(updates))
  whole = np.sqrt(np.mean(base**2))
  rows = np.sqrt(np.mean(base**2, axis=-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(updates["kernel"], np.float64),
                             np.full(base.shape, -0.01 * whole), rtol=2e-3)
  np.testing.assert_allclose(np.asarray(updates["embedding"], np.float64),
                             np.broadcast_to(-0.01 * rows, base.shape), rtol=2e-3)
  plain = tiger(0.01, weight_decay=0.0, rms_scaling=True, accumulation_steps=2)
  state = plain.init(params)
  updates, state = plain.update(grads, state, params)
  np.testing.assert_array_equal(np.asarray(updates["kernel"]), 0.0)
  updates, state = plain.update(grads, state, params)
  np.testing.assert_allclose(np.asarray(updates["kernel"], np.float64),
                             np.full(base.shape, -0.01 * whole), rtol=2e-3)
  assert state.momentum.mu["kernel"].dtype == jnp.float16


def test_accumulation_steps_is_checked():
  for bad in (0, -2, 1.5, 2.0, (2,)):
    with pytest.raises(ValueError, match="accumulation_steps"):
      tiger(0.1, accumulation_steps=bad)
    with pytest.raises(ValueError, match="accumulation_steps"):
      grouped_tiger(0.1, accumulation_steps=bad)
  tiger(0.1, accumulation_steps=np.int64(3))  # NumPy integers are fine


# ----------------------------------------------------------------------------------------------
# optax.inject_hyperparams


@pytest.mark.parametrize("jit", [False, True])
def test_inject_hyperparams_grouped_tiger_keeps_the_groups(jit):
  """The callable default of `labels` used to be taken for a schedule: every leaf fell into the
  default group eagerly (norm-scale update -0.101 instead of -0.05), and jit raised."""
  params = {"dense": {"kernel": jnp.full((2, 3), 0.5), "bias": jnp.zeros(3)},
            "norm": {"scale": jnp.ones(3), "bias": jnp.zeros(3)},
            "embed": {"embedding": jnp.array([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])}}
  grads = jax.tree.map(jnp.ones_like, params)
  injected = optax.inject_hyperparams(grouped_tiger)(learning_rate=0.1)
  plain = grouped_tiger(0.1)
  update = jax.jit(injected.update) if jit else injected.update
  state, plain_state = injected.init(params), plain.init(params)
  for _ in range(3):
    got, state = update(grads, state, params)
    want, plain_state = plain.update(grads, plain_state, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    np.testing.assert_allclose(got["norm"]["scale"], -0.05, rtol=1e-6)
  # A labels function is not a schedule: as a static argument it works too.
  custom = lambda p: jax.tree.map(lambda _: "bias", p)
  static = optax.inject_hyperparams(grouped_tiger, static_args=("labels",))(
      learning_rate=0.1, labels=custom)
  got, _ = static.update(grads, static.init(params), params)
  np.testing.assert_allclose(got["dense"]["kernel"], -0.05, rtol=1e-6)


TIGER_HYPERPARAMS = {"learning_rate": 0.03, "beta": 0.8, "weight_decay": 0.2, "min_rms": 0.05,
                     "shrink_ratio": 0.9, "shrink_center": 0.5, "accumulation_steps": 2}
GROUPED_HYPERPARAMS = {"learning_rate": 0.03, "beta": 0.8, "weight_decay": 0.2, "min_rms": 0.05,
                       "shrink_ratio": 0.9, "accumulation_steps": 2}
CHANGED = {"learning_rate": 0.07, "beta": 0.5, "weight_decay": 0.01, "min_rms": 2.0,
           "shrink_ratio": 0.5, "shrink_center": -1.0, "accumulation_steps": 3}


@pytest.mark.parametrize(
    ("factory", "name"),
    [(tiger, n) for n in TIGER_HYPERPARAMS] + [(grouped_tiger, n) for n in GROUPED_HYPERPARAMS],
    ids=[f"tiger-{n}" for n in TIGER_HYPERPARAMS] + [f"grouped-{n}" for n in GROUPED_HYPERPARAMS])
def test_every_hyperparameter_is_injectable(factory, name):
  """Injected, each hyper-parameter gives the non-injected updates (eager and jit), and setting
  it in the state mid-run gives those of the transformation built with the new value."""
  base = dict(TIGER_HYPERPARAMS if factory is tiger else GROUPED_HYPERPARAMS)
  extra = {"rms_scaling": True} if factory is tiger else {}
  params = {"dense": {"kernel": jnp.array([[0.5, -1.0], [0.02, 0.3]]), "bias": jnp.ones(2)},
            "norm": {"scale": jnp.array([1.5, 0.5])}}
  grads_seq = [jax.tree.map(lambda p, t=t: jnp.cos(3.0 * p + t), params) for t in range(6)]
  grads_seq[3] = {**grads_seq[3], "norm": {"scale": jnp.array([jnp.nan, 1.0])}}
  injected = optax.inject_hyperparams(factory)(**base, **extra)
  assert set(base) <= set(injected.init(params).hyperparams)
  plain = factory(**base, **extra)
  state, plain_state = injected.init(params), plain.init(params)
  step = jax.jit(injected.update)
  for t, grads in enumerate(grads_seq):
    if t == 3:  # change the hyper-parameter in the state; compare with a fresh transformation
      state = optax.tree_utils.tree_set(state, **{name: jnp.asarray(CHANGED[name])})
      plain = factory(**{**base, name: CHANGED[name]}, **extra)
    got, state = (injected.update if t % 2 else step)(grads, state, params)
    want, plain_state = plain.update(grads, plain_state, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)
    params = optax.apply_updates(params, want)


def test_no_default_is_a_callable_that_inject_hyperparams_would_take_for_a_schedule():
  import inspect

  for factory in (tiger, grouped_tiger):
    for name, parameter in inspect.signature(factory).parameters.items():
      if parameter.default is not inspect.Parameter.empty:
        assert not callable(parameter.default), (factory.__name__, name)


# ----------------------------------------------------------------------------------------------
# Built from Optax parts; the cycle kept in the state.


def test_scale_by_tiger_is_scale_by_lion_with_equal_betas_bit_for_bit():
  params, grads_seq = random_problem(31, 6, {"w": (4, 3), "b": (3,)})
  chain = optax.chain(scale_by_tiger(0.9), optax.scale_by_learning_rate(0.03))
  lion = optax.chain(optax.scale_by_lion(b1=0.9, b2=0.9), optax.scale_by_learning_rate(0.03))
  ours, ours_state = run(chain, params, grads_seq)
  want, lion_state = run(lion, params, grads_seq)
  for a, b in zip(ours, want):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  jax.tree.map(np.testing.assert_array_equal, ours_state[0].mu, lion_state[0].mu)


def test_tiger_is_scale_by_tiger_then_optax_decay_and_learning_rate():
  """Without accumulation, tiger is the plain chain, as optax.lion is built."""
  params, grads_seq = random_problem(32, 5, {"w": (4, 3), "b": (3,)})
  schedule = optax.cosine_decay_schedule(0.05, 5)
  mask = {"w": True, "b": False}
  chain = optax.chain(scale_by_tiger(0.8), optax.add_decayed_weights(0.1, mask),
                      optax.scale_by_learning_rate(schedule))
  got, _ = run(tiger(schedule, 0.8, 0.1, mask=mask), params, grads_seq)
  want, _ = run(chain, params, grads_seq)
  for a, b in zip(got, want):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_no_transform_is_initialised_inside_update(monkeypatch):
  calls = {"init": 0}
  original = optax.add_decayed_weights

  def counting(*args, **kwargs):
    inner = original(*args, **kwargs)

    def init(params):
      calls["init"] += 1
      return inner.init(params)

    return optax.GradientTransformation(init, inner.update)

  monkeypatch.setattr(optax, "add_decayed_weights", counting)
  params, grads_seq = random_problem(33, 4, {"w": (3,)})
  run(tiger(0.1, weight_decay=0.1, accumulation_steps=2), params, grads_seq, jit=False)
  assert calls["init"] == 1


def simulate_cycles(params, grads_seq, lengths, *, lr, beta):
  """Tiger without decay nor RMS, cycle by cycle with the given cycle lengths (float64): the
  momentum decays by β once at each cycle's start, takes (1-β)/length of each gradient, and the
  parameters move by -η_n sign(m) at each cycle's end (n: the cycle's index)."""
  params = {n: np.array(v, np.float64) for n, v in params.items()}
  momentum = {n: np.zeros_like(v) for n, v in params.items()}
  history, t = [], 0
  for n, length in enumerate(lengths):
    for j in range(length):
      for name in params:
        b1 = beta if j == 0 else 1.0
        momentum[name] = b1 * momentum[name] + (1 - beta) / length * grads_seq[t][name]
        if j == length - 1:
          params[name] = params[name] - lr(n) * np.sign(momentum[name])
      history.append({name: v.copy() for name, v in params.items()})
      t += 1
  return history, momentum


def test_resuming_with_another_accumulation_steps_keeps_the_schedule():
  """A k=4 state resumed with k=2: the schedule goes on from update 3 (as under optax.MultiSteps),
  it does not jump to 12 // 2 = 6."""
  params, grads_seq = random_problem(34, 16, {"w": (3, 2)})
  schedule = optax.linear_schedule(0.1, 0.0, 8)
  first, state = run(tiger(schedule, 0.8, 0.0, accumulation_steps=4), params, grads_seq[:12])
  second = tiger(schedule, 0.8, 0.0, accumulation_steps=2)
  theta, got = first[-1], list(first)
  for grads in grads_seq[12:]:
    updates, state = jax.jit(second.update)(as_f32(grads), state, theta)
    theta = optax.apply_updates(theta, updates)
    got.append(theta)
  want, _ = simulate_cycles(params, grads_seq, [4, 4, 4, 2, 2], lr=lambda n: float(schedule(n)),
                            beta=0.8)
  for t, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(g["w"], w["w"], rtol=1e-6, atol=1e-7, err_msg=f"t={t}")
  step = np.abs(np.asarray(got[13]["w"], np.float64) - np.asarray(got[12]["w"], np.float64))
  np.testing.assert_allclose(step, float(schedule(3)), rtol=1e-5)


@pytest.mark.parametrize("after", [1, 2, 3])
@pytest.mark.parametrize("jit", [False, True])
def test_an_injected_accumulation_steps_changed_mid_cycle_takes_effect_at_the_next_cycle(
    after, jit):
  """k = 4 changed to 2 after 1, 2 or 3 micro-steps: the current cycle still ends after 4
  micro-steps, with one β decay and the gradients weighted 1/4; then cycles of 2."""
  params, grads_seq = random_problem(35 + after, 8, {"w": (4,), "v": (2, 3)})
  tx = optax.inject_hyperparams(tiger)(learning_rate=0.05, beta=0.7, weight_decay=0.0,
                                       accumulation_steps=4)
  theta = as_f32(params)
  state = tx.init(theta)
  update = jax.jit(tx.update) if jit else tx.update
  got = []
  for t, grads in enumerate(grads_seq):
    if t == after:
      state = optax.tree_utils.tree_set(state, accumulation_steps=jnp.asarray(2))
    updates, state = update(as_f32(grads), state, theta)
    theta = optax.apply_updates(theta, updates)
    got.append(theta)
  want, want_mu = simulate_cycles(params, grads_seq, [4, 2, 2], lr=lambda n: 0.05, beta=0.7)
  for t, (g, w) in enumerate(zip(got, want)):
    for n in w:
      np.testing.assert_allclose(g[n], w[n], rtol=1e-6, atol=1e-7, err_msg=f"t={t} {n}")
  mu = optax.tree_utils.tree_get(state, "mu")
  for n in want_mu:
    np.testing.assert_allclose(mu[n], want_mu[n], rtol=1e-5, atol=1e-7)
