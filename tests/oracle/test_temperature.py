"""The temperature control (benchmarks/oracle/temperature.py, exact.py's temperature): tempered
divergences against a NumPy softmax of logits / T, T = 1 bit for bit, the entropy match."""

import jax
import numpy as np
from flax import nnx

from benchmarks.lm import model as model_lib
from benchmarks.oracle import exact, temperature

CONFIG = model_lib.ModelConfig(vocab_size=7, seq_len=5, d_model=8, num_layers=1, num_heads=2)


def _model(seed: int, scale: float):
  model = model_lib.build_model(CONFIG, seed)
  nnx.update(model, jax.tree.map(lambda x: x * scale, nnx.state(model)))
  return model


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_tempered_divergences_equal_numpy_on_logits_over_t():
  p_model, q_model = _model(0, 8.0), _model(1, 8.0)
  tokens = np.random.default_rng(0).integers(0, 7, size=(6, 5)).astype(np.int32)
  unit_head = exact.unit_rows(p_model.head)
  log_p = _log_softmax(np.asarray(p_model(tokens[:, :-1]), np.float64))
  q_logits = np.asarray(q_model(tokens[:, :-1]), np.float64)
  for t in (0.5, 0.8, 1.3):
    out = jax.device_get(exact.position_divergences(p_model, q_model, tokens, unit_head, t))
    log_q = _log_softmax(q_logits / t)
    p, q = np.exp(log_p), np.exp(log_q)
    np.testing.assert_allclose(out["forward_kl"], (p * (log_p - log_q)).sum(-1), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(out["reverse_kl"], (q * (log_q - log_p)).sum(-1), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(out["entropy_q"], -(q * log_q).sum(-1), rtol=1e-4, atol=1e-5)
    nll = -np.take_along_axis(log_q, tokens[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(out["nll_q"], nll, rtol=1e-4, atol=1e-5)


def test_temperature_one_is_the_untempered_student_bit_for_bit():
  p_model, q_model = _model(2, 8.0), _model(3, 8.0)
  tokens = np.random.default_rng(1).integers(0, 7, size=(4, 5)).astype(np.int32)
  unit_head = exact.unit_rows(p_model.head)
  plain = jax.device_get(exact.position_divergences(p_model, q_model, tokens, unit_head))
  at_one = jax.device_get(exact.position_divergences(p_model, q_model, tokens, unit_head, 1.0))
  for name, values in plain.items():
    np.testing.assert_array_equal(values, at_one[name])


def test_entropy_grows_with_temperature_and_the_match_inverts_it():
  """H(softmax(z / T)) increases with T; the interpolated T of a curve point's entropy is that
  point's T, and a midpoint entropy lands between its neighbours."""
  p_model, q_model = _model(4, 8.0), _model(5, 8.0)
  tokens = np.random.default_rng(2).integers(0, 7, size=(8, 5)).astype(np.int32)
  unit_head = exact.unit_rows(p_model.head)
  points = []
  for t in (0.5, 0.75, 1.0, 1.5):
    out = exact.along(p_model, q_model, tokens, unit_head, temperature=t)
    points.append({"temperature": t, temperature.ENTROPY_KEY: out["entropy_q"]})
  entropies = [p[temperature.ENTROPY_KEY] for p in points]
  assert entropies == sorted(entropies) and entropies[0] < entropies[-1]
  for p in points:
    t, inside = temperature.matching_temperature(points, p[temperature.ENTROPY_KEY])
    assert inside and abs(t - p["temperature"]) < 1e-9
  middle = 0.5 * (entropies[1] + entropies[2])
  t, inside = temperature.matching_temperature(points, middle)
  assert inside and 0.75 < t < 1.0
  assert temperature.matching_temperature(points, entropies[-1] + 1.0) == (1.5, False)
  assert temperature.matching_temperature(points, entropies[0] - 1.0) == (0.5, False)
