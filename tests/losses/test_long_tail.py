import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import emoloss
from tests.losses.reference import SIZES_N, SIZES_V, log_softmax, random_problem, softmax


def pairwise_logit_adjusted(logits, labels, prior, tau):
  """Menon et al.'s pairwise form log[1 + Σ_{y'≠y} (π_{y'}/π_y)^τ e^{z_{y'} - z_y}]."""
  z = np.asarray(logits, np.float64)
  out = []
  for row, y in zip(z, labels):
    others = [k for k in range(len(row)) if k != y]
    terms = (prior[others] / prior[y]) ** tau * np.exp(row[others] - row[y])
    out.append(np.log1p(terms.sum()))
  return np.array(out)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 2.0])
def test_logit_adjusted_matches_pairwise_form(tau):
  logits, labels = random_problem(n=9, v=6)
  prior = np.array([0.5, 0.2, 0.12, 0.1, 0.05, 0.03])
  got = emoloss.logit_adjusted_cross_entropy(logits, labels, prior * 17.0, tau=tau)  # counts ok
  np.testing.assert_allclose(got, pairwise_logit_adjusted(logits, labels, prior, tau),
                             rtol=1e-5, atol=1e-6)


def test_zero_count_class_is_finite_and_soft_labels():
  logits, labels = random_problem(n=5, v=4, seed=3)
  prior = np.array([3.0, 1.0, 0.0, 6.0])
  loss = emoloss.logit_adjusted_cross_entropy(logits, labels, prior)
  g = jax.grad(lambda z: emoloss.logit_adjusted_cross_entropy(z, labels, prior).sum())(logits)
  assert np.all(np.isfinite(loss)) and np.all(np.isfinite(g))
  soft = softmax(np.random.default_rng(0).normal(size=logits.shape))
  adjusted = logits + np.log((prior / prior.sum()) + 1e-12)
  want = -np.sum(soft * log_softmax(adjusted), -1)
  np.testing.assert_allclose(emoloss.logit_adjusted_cross_entropy(logits, soft, prior), want,
                             rtol=1e-5)


def test_posthoc_adjustment_favours_rare_classes():
  prior = np.array([0.9, 0.1])
  logits = np.array([[1.0, 0.0]], np.float32)  # plain argmax: class 0
  adjusted = emoloss.posthoc_logit_adjustment(logits, prior, tau=1.0)
  np.testing.assert_allclose(adjusted, logits - np.log(prior), rtol=1e-6)
  assert int(np.argmax(adjusted)) == 1  # 1 - log .9 < 0 - log .1


def test_margin_cross_entropy_matches_numpy():
  logits, labels = random_problem(n=7, v=5, seed=5)
  margins = np.array([0.1, 0.5, 1.0, 0.0, 2.0])
  z = logits.astype(np.float64).copy()
  z[np.arange(7), labels] -= margins[labels]
  want = -log_softmax(z)[np.arange(7), labels]
  np.testing.assert_allclose(emoloss.margin_cross_entropy(logits, labels, margins), want,
                             rtol=1e-5)
  f = lambda z: emoloss.margin_cross_entropy(z, labels, margins)
  check_grads(f, (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  check_grads(jax.jit(f), (jnp.asarray(logits),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)
  per_row = jax.vmap(lambda z, y: emoloss.margin_cross_entropy(z, y, margins))(logits, labels)
  np.testing.assert_allclose(per_row, f(logits), rtol=1e-6)


def test_bad_prior_and_tau():
  logits, labels = random_problem(v=4)
  with pytest.raises(ValueError, match="class_prior"):
    emoloss.logit_adjusted_cross_entropy(logits, labels, np.ones(3))
  with pytest.raises(ValueError, match="class_prior"):
    emoloss.logit_adjusted_cross_entropy(logits, labels, np.array([1.0, -1.0, 1.0, 1.0]))
  with pytest.raises(ValueError, match="tau"):
    emoloss.logit_adjusted_cross_entropy(logits, labels, np.ones(4), tau=-1.0)
  with pytest.raises(ValueError, match="margins"):
    emoloss.margin_cross_entropy(logits, labels, np.ones(5))


@hypothesis.settings(deadline=None, max_examples=25)
@hypothesis.given(v=SIZES_V, n=SIZES_N, scale=st.floats(0.0, 30.0),
                  seed=st.integers(0, 2**16), tau=st.floats(0.0, 3.0))
def test_uniform_prior_and_zero_margin_give_cross_entropy(v, n, scale, seed, tau):
  logits, labels = random_problem(n, v, seed, scale)
  ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(
      emoloss.logit_adjusted_cross_entropy(logits, labels, np.ones(v), tau=tau), ce,
      rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(emoloss.margin_cross_entropy(logits, labels, np.zeros(v)), ce,
                             rtol=1e-5, atol=1e-5)
