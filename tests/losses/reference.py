"""Independent NumPy references shared by the loss tests (float64)."""

import functools

import hypothesis.strategies as st
import jax
import numpy as np
from scipy import integrate, optimize, special, stats

# Hypothesis draws shapes from these small sets (values vary freely), so that eager JAX reuses
# its compiled kernels across examples instead of compiling every op for every new shape.
SIZES_V = st.sampled_from([2, 5, 8])  # classes
SIZES_N = st.sampled_from([1, 3, 6])  # batch


def log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def softmax(z):
  return np.exp(log_softmax(z))


def one_hot(labels, v):
  return np.eye(v)[np.asarray(labels)]


def random_problem(n=8, v=7, seed=0, scale=2.0):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(n, v)) * scale).astype(np.float32)
  labels = rng.integers(0, v, size=n)
  return logits, labels


def exact_deltas(logits, label, sigma=1.0, margin=np.inf):
  """EXACT's Δ_i = min(z_y - z_i, margin) / σ over the competitors i ≠ y (float64)."""
  z = np.asarray(logits, np.float64)
  return np.minimum(z[label] - np.delete(z, label), margin) / sigma


def exact_log_prob(deltas):
  """EXACT's log P(y) = log ∫ φ(t) Π Φ(t + Δ_i) dt by adaptive (QUADPACK) quadrature around the
  integrand's peak, which is found by bounded scalar minimisation, in float64."""
  deltas = np.asarray(deltas, np.float64)

  def log_integrand(t):
    return stats.norm.logpdf(t) + np.sum(special.log_ndtr(t + deltas))

  peak = optimize.minimize_scalar(lambda t: -log_integrand(t), bounds=(-40.0, 1e3),
                                  method="bounded", options={"xatol": 1e-10}).x
  top = log_integrand(peak)
  value, _ = integrate.quad(lambda t: np.exp(log_integrand(t) - top), peak - 40.0, peak + 40.0,
                            points=[peak], epsabs=0.0, epsrel=1e-12, limit=400)
  return top + np.log(value)


def value_and_grad_of_sum(loss_fn, logits, labels, where):
  """``(loss_fn(logits, labels, where=where), ∂ Σ loss / ∂ logits)``: the per-example values and
  the gradient of their sum, for the NaN-propagation tests."""
  def total(z):
    value = loss_fn(z, labels, where=where)
    return value.sum(), value

  grad, value = jax.grad(total, has_aux=True)(logits)
  return value, grad


def value_and_grad_function(loss_fn):
  """:func:`value_and_grad_of_sum` of ``loss_fn`` as a function of ``(logits, labels, where)``."""
  return functools.partial(value_and_grad_of_sum, loss_fn)
