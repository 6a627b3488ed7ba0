"""EXACT loss: against Monte Carlo, closed forms, orthant probabilities and adaptive quadrature."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import special, stats

from emoloss.losses import exact_loss
from tests.losses.reference import exact_deltas, exact_log_prob


def _win_prob(logits, labels, **kwargs):
  """P(y) from the loss (float64 NumPy)."""
  return 1.0 - np.asarray(exact_loss(logits, labels, **kwargs), np.float64)


def _log_win_prob(logits, labels, **kwargs):
  return -np.asarray(exact_loss(logits, labels, log_prob=True, **kwargs), np.float64)


# Most tests share the shape [4, 6] (and the same static options) so that jit compiles once.
N, V = 4, 6


def _problem(seed, num_classes=V, scale=1.5):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(N, num_classes)) * scale).astype(np.float32)
  return logits, rng.integers(0, num_classes, N)


SIGMA = np.array([0.5, 1.0, 2.5, 0.8], np.float32)

# --- Independent references -----------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [3, 6, 10])
def test_matches_monte_carlo_of_noisy_argmax(num_classes):
  """P(y) = P(argmax(z/σ + ε) = y), ε ~ N(0, I), with per-example σ; tolerance 4.5 standard
  errors of the 200k-sample estimate."""
  logits, labels = _problem(num_classes, num_classes)
  samples = 200_000
  noise = np.random.default_rng(100).standard_normal((samples, N, num_classes), np.float32)
  winners = np.argmax(logits / SIGMA[:, None] + noise, axis=-1)
  estimate = np.mean(winners == labels, axis=0)
  prob = _win_prob(logits, labels, sigma=SIGMA)
  std_error = np.sqrt(prob * (1 - prob) / samples)
  assert np.all(np.abs(prob - estimate) <= 4.5 * std_error + 1e-6), (prob, estimate, std_error)


def test_two_classes_match_closed_form():
  """V = 2: P(y) = Φ((z_y - z_other) / (σ √2)); checked in log space down to P ~ 1e-200."""
  differences = np.array([-30.0, -10.0, -3.0, -0.5, 0.0, 0.7, 4.0, 12.0], np.float32)
  sigma = np.array([1.5, 0.5, 1.0, 2.0, 1.0, 0.3, 1.0, 1.0], np.float32)
  logits = np.stack([differences, np.zeros_like(differences)], -1)
  labels = np.zeros(len(differences), int)
  want = special.log_ndtr(differences.astype(np.float64) / sigma / np.sqrt(2))
  np.testing.assert_allclose(_log_win_prob(logits, labels, sigma=sigma), want,
                             rtol=2e-6, atol=1e-6)
  np.testing.assert_allclose(_win_prob(logits, labels, sigma=sigma), np.exp(want), atol=2e-7)


@pytest.mark.parametrize("num_classes", [3, 4, 5])
def test_matches_orthant_probability(num_classes):
  """s_y - s_i = Δ_i + ε_y - ε_i, so P(y) = P(X > 0) for X ~ N(Δ, I + 11ᵀ) in V - 1 dimensions,
  i.e. the normal CDF at 0 of -X ~ N(-Δ, I + 11ᵀ) (scipy's Genz integration)."""
  logits, labels = _problem(10 + num_classes, num_classes)
  prob = _win_prob(logits, labels, sigma=SIGMA)
  cov = np.eye(num_classes - 1) + 1.0
  for row in range(N):
    deltas = exact_deltas(logits[row], labels[row], SIGMA[row])
    want = stats.multivariate_normal.cdf(np.zeros(num_classes - 1), mean=-deltas, cov=cov,
                                         abseps=1e-7, releps=1e-7, maxpts=10**6,
                                         rng=np.random.default_rng(0))
    np.testing.assert_allclose(prob[row], want, atol=2e-6)


@pytest.mark.parametrize("num_classes,num_nodes", [(2, 64), (10, 64), (1000, 64), (1000, 16)])
def test_badly_wrong_and_tied_examples_match_reference(num_classes, num_nodes):
  """Row 0: the target trails every other class by Δ = -10 (P down to e^-86), against adaptive
  QUADPACK quadrature; measured error in log P ≤ 6e-6 (float32) for 16 to 64 nodes, where plain
  (non-adaptive) Gauss–Hermite at 64 nodes is off by 0.37 at V = 1000.
  Row 1: all logits equal, so by symmetry P = 1/V exactly (plain Gauss–Hermite: off by 1.3e-3
  in log P at V = 1000)."""
  logits = np.full((2, num_classes), 10.0, np.float32)
  logits[0, 0] = 0.0
  got = _log_win_prob(logits, np.array([0, num_classes - 1]), sigma=np.float32(1.0),
                      num_nodes=num_nodes)
  want = exact_log_prob(np.full(num_classes - 1, -10.0))
  assert abs(got[0] - want) <= 2e-5, (got[0], want)
  np.testing.assert_allclose(got[1], -np.log(num_classes), rtol=1e-5)


def test_wide_spread_logits_match_adaptive_quadrature():
  logits, labels = _problem(5, num_classes=10, scale=4.0)
  got = _log_win_prob(logits, labels, sigma=SIGMA)
  want = [exact_log_prob(exact_deltas(logits[r], labels[r], SIGMA[r])) for r in range(N)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- Options --------------------------------------------------------------------------------------


def test_margin_clips_logit_differences_before_sigma():
  logits, labels = _problem(6, scale=3.0)
  margins = np.array([1.0, 0.5, 2.0, 100.0], np.float32)
  for margin in (np.float32(1.0), margins):
    got = _log_win_prob(logits, labels, sigma=SIGMA, margin=margin)
    margin_rows = np.broadcast_to(margin, (N,))
    want = [exact_log_prob(exact_deltas(logits[r], labels[r], SIGMA[r], margin_rows[r]))
            for r in range(N)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Same as moving every class that trails by more than the margin up to exactly the margin.
  target = logits[np.arange(N), labels][:, None]
  clipped = target - np.minimum(target - logits, margins[:, None])
  np.testing.assert_allclose(got, _log_win_prob(clipped, labels, sigma=SIGMA), rtol=1e-6,
                             atol=1e-7)
  # A class beaten by more than the margin gets no gradient.
  grad = jax.grad(lambda z: exact_loss(z, labels, sigma=SIGMA, margin=margins).sum())(logits)
  beaten = target - logits > margins[:, None]
  assert np.any(beaten) and np.all(np.asarray(grad)[beaten] == 0.0)


def test_log_prob_variant_is_minus_log_of_win_probability():
  logits, labels = _problem(7)
  loss = np.asarray(exact_loss(logits, labels, sigma=SIGMA), np.float64)
  np.testing.assert_allclose(exact_loss(logits, labels, sigma=SIGMA, log_prob=True),
                             -np.log1p(-loss), rtol=1e-5, atol=1e-6)


def test_sigma_scales_logits_and_broadcasts_over_batch_axes():
  """Only z/σ matters; a scalar σ, a per-example σ and a σ broadcasting over batch axes agree."""
  logits, labels = _problem(8)
  np.testing.assert_allclose(_win_prob(logits, labels, sigma=np.float32(2.5)),
                             _win_prob(logits / 2.5, labels, sigma=np.ones(N, np.float32)),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(exact_loss(logits, labels, sigma=SIGMA),
                             exact_loss(logits / SIGMA[:, None], labels), rtol=1e-5, atol=1e-7)
  # Batch shape [2, 2]: σ of shape [2, 1] broadcasts over the last batch axis.
  sigma = np.array([[0.5], [2.0]], np.float32)
  np.testing.assert_allclose(
      exact_loss(logits.reshape(2, 2, V), labels.reshape(2, 2), sigma=sigma).reshape(N),
      exact_loss(logits, labels, sigma=np.repeat(sigma.ravel(), 2)), rtol=1e-6)


# --- Gradients ------------------------------------------------------------------------------------


def _both_variants(logits, labels, sigma):
  return jnp.stack([exact_loss(logits, labels, sigma=sigma),
                    exact_loss(logits, labels, sigma=sigma, log_prob=True)])


def test_gradients_match_finite_differences():
  """Both variants, with respect to logits and σ: eager, jitted and vmapped over the batch."""
  logits, labels = _problem(9)
  logits, sigma = jnp.asarray(logits), jnp.asarray(SIGMA)
  f = lambda z, s: _both_variants(z, labels, s)
  tol = {"order": 1, "modes": ["rev"], "atol": 1e-2, "rtol": 1e-2, "eps": 1e-2}
  check_grads(f, (logits, sigma), **tol)
  check_grads(jax.jit(f), (logits, sigma), **tol)
  per_example = jax.vmap(_both_variants, out_axes=1)
  check_grads(lambda z, s: per_example(z, labels, s), (logits, sigma), **tol)
  np.testing.assert_allclose(per_example(logits, labels, sigma), f(logits, sigma), rtol=1e-6)


def test_gradient_of_log_prob_far_in_the_tail_matches_closed_form():
  """V = 2, z = (-1e4, 1e4): -log Φ(Δ/√2) with Δ = -2e4 has gradient -m(Δ/√2)/√2 on z_y, m the
  inverse Mills ratio (≈ 1e4); the generic log_ndtr derivative gives 2981 there in float32."""
  logits = jnp.array([[-1e4, 1e4]], jnp.float32)
  grad = jax.grad(lambda z: exact_loss(z, jnp.array([0]), log_prob=True).sum())(logits)
  x = -2e4 / np.sqrt(2)
  mills = np.exp(stats.norm.logpdf(x) - special.log_ndtr(x))
  np.testing.assert_allclose(grad, [[-mills / np.sqrt(2), mills / np.sqrt(2)]], rtol=1e-5)


# --- Numerics -------------------------------------------------------------------------------------


def test_extreme_logits_finite_values_and_gradients():
  logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, -1e4], [-1e4, 0.0, 1e4]],
                     jnp.float32)
  labels = jnp.array([0, 0, 2, 1])
  sigma = jnp.array([0.1, 1.0, 0.05, 3.0], jnp.float32)
  both = _both_variants(logits, labels, sigma)
  grads = jax.jit(jax.grad(lambda z, s: _both_variants(z, labels, s).sum(), argnums=(0, 1)))(
      logits, sigma)
  assert np.all(np.isfinite(both)) and all(np.all(np.isfinite(g)) for g in grads)
  np.testing.assert_allclose(both[0], [0.0, 1.0, 1.0, 1.0], atol=1e-6)
  assert np.all(np.asarray(both[1])[1:] > 1e5)  # -log P grows without bound


def test_single_class_always_wins():
  logits = jnp.array([[3.0], [-1e4]], jnp.float32)
  f = lambda z: _both_variants(z, jnp.array([0, 0]), jnp.float32(1.0)).sum()
  assert float(f(logits)) == 0.0
  assert np.all(np.asarray(jax.grad(f)(logits)) == 0.0)


def test_masks():
  """Fully masked: 0 with zero gradients even with nan/inf logits; partly masked: the kept
  examples are unchanged."""
  logits, labels = _problem(11)
  where = np.array([True, False, True, False])
  kept = np.asarray(exact_loss(logits, labels, sigma=SIGMA, where=where))
  assert np.all(kept[~where] == 0.0)
  np.testing.assert_allclose(kept[where], exact_loss(logits, labels, sigma=SIGMA)[where],
                             rtol=1e-6)
  garbage = logits.copy()
  garbage[0, 0], garbage[1, 2], garbage[3, :] = np.nan, np.inf, -np.inf
  none = np.zeros(N, bool)

  def total(z, s):
    return (exact_loss(z, labels, sigma=s, where=none)
            + exact_loss(z, labels, sigma=s, log_prob=True, where=none)).sum()

  value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(garbage, SIGMA)
  assert float(value) == 0.0
  assert all(np.all(np.asarray(g) == 0.0) for g in grads)


def _exact_value_and_grad(logits, labels, where, batch_norm, log_prob):
  def total(z):
    value = exact_loss(z, labels, where=where, batch_norm=batch_norm, log_prob=log_prob,
                       num_nodes=16)
    return value.sum(), value
  grad, value = jax.grad(total, has_aux=True)(logits)
  return value, grad


_JIT_EXACT = jax.jit(_exact_value_and_grad, static_argnums=(3, 4))
NAN_PROBLEM = np.array([[2.0, np.nan, 0.1], [0.5, 1.0, -1.0], [1.0, 0.0, 3.0], [0.2, 0.1, 0.0]],
                       np.float32)
NAN_LABELS = np.array([0, 1, 2, 0])


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch_norm"])
def test_nan_logit_is_not_taken_for_a_masked_class(batch_norm):
  """Issue 20, item 1: ``exact_loss([[2., nan, .1]], [0])`` gave 0.0896, the loss with a -inf
  (masked) class there. A NaN logit (competitor's, target's, all of them) gives NaN for the row's
  value and every entry of its gradient, eagerly and under jit, both variants (bf16 and float64:
  the NaN rule of tests/test_reliability.py); other rows are unchanged bit for bit (``batch_norm``: every unmasked row is NaN, its statistic being NaN); a
  masked NaN row is inert."""
  issue = exact_loss(jnp.array([[2.0, jnp.nan, 0.1]]), jnp.array([0]), batch_norm=batch_norm)
  assert np.isnan(issue).all(), issue
  where = np.array([True, True, True, False])
  for log_prob, fn in ((False, _exact_value_and_grad), (False, _JIT_EXACT), (True, _JIT_EXACT)):
    clean_value, clean_grad = fn(np.nan_to_num(NAN_PROBLEM), NAN_LABELS, where, batch_norm,
                                 log_prob)
    target, whole = NAN_PROBLEM.copy(), NAN_PROBLEM.copy()
    target[0], whole[0] = [np.nan, 1.0, 0.1], np.nan
    for bad in (NAN_PROBLEM, target, whole):  # a competitor, the target, the whole row
      value, grad = map(np.asarray, fn(bad, NAN_LABELS, where, batch_norm, log_prob))
      rows = where if batch_norm else np.arange(4) == 0
      assert np.isnan(value[rows]).all() and np.isnan(grad[rows]).all(), (value, grad)
      np.testing.assert_array_equal(value[~rows & where], clean_value[~rows & where])
      np.testing.assert_array_equal(grad[~rows & where], clean_grad[~rows & where])
      assert value[3] == 0 and np.all(grad[3] == 0)
    # The NaN row masked: everything as if it held zeros.
    value, grad = fn(NAN_PROBLEM, NAN_LABELS, ~(np.arange(4) == 0), batch_norm, log_prob)
    want_value, want_grad = fn(np.nan_to_num(NAN_PROBLEM), NAN_LABELS, ~(np.arange(4) == 0),
                               batch_norm, log_prob)
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)
  # A -inf competitor is still a vocabulary mask (the loss without that class).
  np.testing.assert_allclose(
      exact_loss(jnp.array([[2.0, -jnp.inf, 0.1]]), jnp.array([0]), num_nodes=32),
      exact_loss(jnp.array([[2.0, 0.1]]), jnp.array([0]), num_nodes=32), rtol=1e-6)


def test_batch_norm_is_scale_invariant_without_overflow():
  """Issue 20, item 12: with ``batch_norm=True`` and |z| >~ 1.8e19 the variance overflowed and
  every logit became 0. The normalised logits do not depend on the scale of the logits: bit for
  bit for powers of two (the rescaling is exact), to float32 rounding for others (up to 1e37),
  with the gradient scaled by ``1/s``, eagerly and under jit, with a -inf vocabulary mask and a
  masked row holding 1e38."""
  z, _ = _problem(13)
  labels = np.array([0, 1, 2, 3]) % z.shape[-1]
  z[1, 4] = -np.inf
  where = np.array([True, True, False, True])
  base_value, base_grad = _JIT_EXACT(z, labels, where, True, False)
  assert np.all(np.isfinite(base_value)) and base_value.std() > 0.05
  for scale, fn in ((2.0**64, _exact_value_and_grad), (2.0**64, _JIT_EXACT),
                    (2.0**100, _JIT_EXACT), (2.0**-60, _JIT_EXACT)):
    value, grad = fn(np.float32(scale) * z, labels, where, True, False)
    np.testing.assert_array_equal(value, base_value)
    np.testing.assert_allclose(np.asarray(grad) * scale, base_grad, rtol=1e-6, atol=1e-30)
  for scale in (1e19, 1.8e19, 1e30, 1e37):
    garbage = np.where(where[:, None], np.float32(scale) * z, np.float32(1e38))
    value, grad = _JIT_EXACT(garbage, labels, where, True, False)
    np.testing.assert_allclose(value, base_value, rtol=2e-5, atol=1e-6)
    assert np.all(grad[2] == 0)
  low = jnp.asarray(z, jnp.bfloat16)
  np.testing.assert_array_equal(
      exact_loss(low * jnp.bfloat16(2.0**70), labels, where=where, batch_norm=True),
      exact_loss(low, labels, where=where, batch_norm=True))


def test_bfloat16_logits_agree_with_float32():
  """bf16 logits are upcast: equal (to 1e-6) to float32 on the bf16-rounded values, and within
  1e-2 of float32 on the unrounded logits (a rounding of 2^-8 on logits of size ~3)."""
  logits, labels = _problem(12)
  low = jnp.asarray(logits, jnp.bfloat16)
  out = exact_loss(low, labels, sigma=SIGMA)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, exact_loss(np.asarray(low, np.float32), labels, sigma=SIGMA),
                             atol=1e-6)
  np.testing.assert_allclose(out, exact_loss(logits, labels, sigma=SIGMA), atol=1e-2)


# --- Bad input ------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
  logits = np.zeros((3, 4), np.float32)
  labels = np.array([0, 1, 2])
  with pytest.raises(TypeError, match="logits"):
    exact_loss(logits.astype(np.int32), labels)
  with pytest.raises(ValueError, match="labels"):
    exact_loss(logits, labels[:2])
  with pytest.raises(TypeError, match="labels"):
    exact_loss(logits, np.full((3, 4), 0.25, np.float32))
  for bad_sigma in (0.0, -1.0, np.array([1.0, 0.0, 1.0])):
    with pytest.raises(ValueError, match="sigma"):
      exact_loss(logits, labels, sigma=bad_sigma)
  with pytest.raises(ValueError, match="sigma"):
    exact_loss(logits, labels, sigma=np.ones(4, np.float32))
  with pytest.raises(ValueError, match="margin"):
    exact_loss(logits, labels, margin=np.ones((3, 2), np.float32))
  with pytest.raises(ValueError, match="margin"):
    exact_loss(logits, labels, margin=np.nan)
  with pytest.raises(ValueError, match="num_nodes"):
    exact_loss(logits, labels, num_nodes=0)
  with pytest.raises(TypeError, match="num_nodes"):
    exact_loss(logits, labels, num_nodes=8.0)
  with pytest.raises(ValueError, match="where"):
    exact_loss(logits, labels, where=np.ones(4, bool))


# --- Properties -----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="num_classes")
def _all_targets(logits, sigma, bump, num_classes):
  """Loss of every possible target for one logit row, and of each target after raising its
  own logit by ``bump``."""
  rows = jnp.broadcast_to(logits, (num_classes, num_classes))
  targets = jnp.arange(num_classes)
  raised = rows + bump * jnp.eye(num_classes)
  return exact_loss(rows, targets, sigma=sigma), exact_loss(raised, targets, sigma=sigma)


@hypothesis.settings(deadline=None, max_examples=30)
@hypothesis.given(num_classes=st.sampled_from([2, 5, 12]), scale=st.floats(0.0, 8.0),
                  sigma=st.floats(0.2, 5.0), bump=st.floats(0.01, 3.0),
                  seed=st.integers(0, 2**16))
def test_properties(num_classes, scale, sigma, bump, seed):
  logits = (np.random.default_rng(seed).normal(size=num_classes) * scale).astype(np.float32)
  loss, raised = map(np.asarray, _all_targets(logits, np.float32(sigma), np.float32(bump),
                                              num_classes))
  assert np.all(loss >= 0.0) and np.all(loss <= 1.0)
  # Exactly one class wins the noisy argmax: Σ_y P(y) = 1.
  np.testing.assert_allclose(np.sum(1.0 - loss.astype(np.float64)), 1.0, atol=1e-4)
  # Raising the target's own logit never lowers its chance to win.
  assert np.all(raised <= loss + 1e-6)
