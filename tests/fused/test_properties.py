"""Properties of the fused path that hold for every input: the value and the gradient do not
depend on the chunk size, are invariant to permuting the tokens together with their labels and
mask, and (``reduction="sum"``) add over disjoint sets of tokens.

Both sides of each comparison are float32 evaluations of the same sums in another order, so the
tolerance is the float32 rounding bound of those sums (:func:`tolerances`), not a guess.
Hypothesis runs derandomised (tests/conftest.py); a failing example found once is kept with
``@hypothesis.example``.
"""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

import emoloss
from tests.fused import helpers

N, V, D, K = 12, 23, 6, 4
EPS = float(np.finfo(np.float32).eps)
SETTINGS = hypothesis.settings(max_examples=6, deadline=None)
MIX = emoloss.emo_ce_per_token(1)


def problem(seed=3):
  hidden, head, labels, cost = helpers.make_problem(N, V, D, K, seed=seed, scale=2.0)
  where = jnp.asarray(np.random.default_rng(seed).random(N) < 0.75)
  return hidden, head, labels, cost, where


def tolerances(hidden, head, labels, cost, where, reduction="mean"):
  """Rounding bounds ``(value, ∂hidden, ∂head)`` for two float32 evaluations of the EMO + CE loss
  that sum in different orders. With ``Z = |h| |W|ᵀ`` (the componentwise bound of the logits), a
  logit is off by at most ``d ε Z`` (a dot product of ``d`` terms, Higham's ``γ_d``); a
  probability, hence each entry of the logit cotangent ``G``, by a relative ``2 d ε max Z + V ε``
  (its exponent and the sum over ``V``); ``∂h = G W`` and ``∂W = Gᵀ h`` add ``V`` and ``N`` terms
  (``ε |G| |W|``, ``ε |G|ᵀ |h|``); the loss sums ``N`` per-token values of magnitude at most
  ``lse``. Each bound is doubled (two evaluations) and multiplied by 4 for the few roundings of
  ``exp``, ``log`` and the products per term."""
  z_abs = np.abs(np.asarray(hidden, np.float64)) @ np.abs(np.asarray(head, np.float64)).T
  relative = 2 * D * EPS * z_abs.max() + (V + N) * EPS
  loss = lambda z: helpers.naive_loss(z, jnp.eye(V), labels, cost, MIX, where, reduction)
  g = np.abs(np.asarray(jax.grad(loss)(hidden @ head.T), np.float64))
  weights = 1.0 if reduction == "sum" else 1.0 / max(int(np.sum(where)), 1)
  value = relative * weights * N * (z_abs.max() + np.log(V))
  d_hidden = relative * (g @ np.abs(np.asarray(head, np.float64)))
  d_head = relative * (g.T @ np.abs(np.asarray(hidden, np.float64)))
  return tuple(8 * b for b in (value, d_hidden, d_head))


def assert_within(actual, expected, bound, name):
  error = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
  assert np.all(error <= bound), f"{name}: error {error.max():.3g} exceeds its float32 bound"


def assert_all_within(got, expected, bounds):
  for name, a, b, bound in zip(("value", "d hidden", "d head"), jax.tree.leaves(got),
                               jax.tree.leaves(expected), bounds):
    assert_within(a, b, bound, name)


@functools.partial(jax.jit, static_argnames=("chunk_size", "reduction", "schedule"))
def value_and_grads(hidden, head, labels, cost, where, *, chunk_size, reduction="mean",
                    schedule="one-pass"):
  """The EMO + CE loss and its gradients, by the one-pass schedule (fused_loss) or from the
  per-token statistics of the recompute schedule (fused_token_stats)."""
  def loss(h, w):
    if schedule == "one-pass":
      return emoloss.fused_loss(h, w, labels, cost, per_token=MIX, where=where,
                                reduction=reduction, chunk_size=chunk_size)
    stats = emoloss.fused_token_stats(h, w, labels, cost, where=where, chunk_size=chunk_size)
    total = jnp.sum(jnp.where(where, MIX(stats), 0.0))
    return total if reduction == "sum" else total / jnp.maximum(jnp.sum(where), 1)
  return jax.value_and_grad(loss, argnums=(0, 1))(hidden, head)


@SETTINGS
@hypothesis.given(chunk=st.integers(1, V))
@hypothesis.example(chunk=1)
@hypothesis.example(chunk=V - 1)  # the last chunk moved back over an overlap
def test_recompute_schedule_is_invariant_to_the_chunk_size(chunk):
  args = problem()
  got = value_and_grads(*args, chunk_size=chunk, schedule="recompute")
  expected = value_and_grads(*args, chunk_size=V, schedule="recompute")
  assert_all_within(got, expected, tolerances(*args))


@SETTINGS
@hypothesis.given(chunk=st.integers(1, N))
@hypothesis.example(chunk=5)  # chunks that do not divide N (padding rows)
def test_one_pass_schedule_is_invariant_to_the_chunk_size(chunk):
  args = problem()
  got = value_and_grads(*args, chunk_size=chunk)
  expected = value_and_grads(*args, chunk_size=N)
  assert_all_within(got, expected, tolerances(*args))


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2 ** 16), schedule=st.sampled_from(["one-pass",
                                                                          "recompute"]))
def test_permuting_tokens_with_their_masks_permutes_the_gradient(seed, schedule):
  hidden, head, labels, cost, where = problem()
  order = jnp.asarray(np.random.default_rng(seed).permutation(N))
  loss, (d_hidden, d_head) = value_and_grads(hidden, head, labels, cost, where, chunk_size=5,
                                             schedule=schedule)
  p_loss, (p_hidden, p_head) = value_and_grads(hidden[order], head, labels[order], cost,
                                               where[order], chunk_size=5, schedule=schedule)
  value_bound, hidden_bound, head_bound = tolerances(hidden, head, labels, cost, where)
  assert_within(p_loss, loss, value_bound, "value")
  assert_within(p_hidden, d_hidden[order], hidden_bound[order], "d hidden")
  assert_within(p_head, d_head, head_bound, "d head")


@SETTINGS
@hypothesis.given(seed=st.integers(0, 2 ** 16), schedule=st.sampled_from(["one-pass",
                                                                          "recompute"]))
def test_sum_reduction_adds_over_disjoint_token_sets(seed, schedule):
  hidden, head, labels, cost, _ = problem()
  part = np.random.default_rng(seed).integers(0, 3, N)  # 0: in A, 1: in B, 2: in neither
  first, second = jnp.asarray(part == 0), jnp.asarray(part == 1)
  run = lambda where: value_and_grads(hidden, head, labels, cost, where, chunk_size=5,
                                      reduction="sum", schedule=schedule)
  union, a, b = run(first | second), run(first), run(second)
  bounds = [sum(x) for x in zip(*(tolerances(hidden, head, labels, cost, m, "sum")
                                  for m in (first, second, first | second)))]
  assert_all_within(jax.tree.map(jnp.add, a, b), union, bounds)
