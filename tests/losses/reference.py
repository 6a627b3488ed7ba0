"""Independent NumPy references shared by the loss tests (float64)."""

import hypothesis.strategies as st
import numpy as np

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
