"""Exact divergences (benchmarks/oracle/exact.py) against brute force on a 2-token vocabulary."""

import itertools

import jax
import numpy as np
from flax import nnx

from benchmarks.lm import model as model_lib
from benchmarks.oracle import exact

CONFIG = model_lib.ModelConfig(vocab_size=2, seq_len=5, d_model=8, num_layers=1, num_heads=2)


def _model(seed: int, scale: float):
  """A model whose parameters are scaled up, so its next-token distributions are far from
  uniform (the initialisation's std 0.02 gives nearly uniform ones)."""
  model = model_lib.build_model(CONFIG, seed)
  nnx.update(model, jax.tree.map(lambda x: x * scale, nnx.state(model)))
  return model


def _all_sequences() -> np.ndarray:
  """Every sequence of the context length that starts with token 0."""
  rest = itertools.product((0, 1), repeat=CONFIG.seq_len - 1)
  return np.asarray([(0, *r) for r in rest], np.int32)


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def test_sequence_kls_equal_the_chain_of_token_kls():
  """Σ_x P(x) Σ_t KL(P(·|x_<t)‖Q(·|x_<t)) = KL(P(x)‖Q(x)) over every sequence (chain rule),
  and the same for the reverse KL under Q; both > 0 for different models, 0 for the same."""
  p_model, q_model = _model(0, 12.0), _model(1, 9.0)
  tokens = _all_sequences()
  log_p = np.asarray(model_lib.sequence_log_probs(p_model, tokens), np.float64).sum(1)
  log_q = np.asarray(model_lib.sequence_log_probs(q_model, tokens), np.float64).sum(1)
  np.testing.assert_allclose(np.exp(log_p).sum(), 1.0, rtol=1e-5)
  brute_forward = np.sum(np.exp(log_p) * (log_p - log_q))
  brute_reverse = np.sum(np.exp(log_q) * (log_q - log_p))
  unit_head = exact.unit_rows(p_model.head)
  per_position = exact.position_divergences(p_model, q_model, tokens, unit_head)
  forward = np.asarray(per_position["forward_kl"], np.float64)
  reverse = np.asarray(per_position["reverse_kl"], np.float64)
  assert np.all(forward >= 0) and np.all(reverse >= 0)
  assert brute_forward > 1e-2 and brute_reverse > 1e-2  # the models really differ
  np.testing.assert_allclose(np.sum(np.exp(log_p) * forward.sum(1)), brute_forward, rtol=1e-4)
  np.testing.assert_allclose(np.sum(np.exp(log_q) * reverse.sum(1)), brute_reverse, rtol=1e-4)
  same = exact.position_divergences(p_model, p_model, tokens, unit_head)
  for name in exact.DIVERGENCES:
    if name != "emo_cost":
      np.testing.assert_allclose(np.asarray(same[name]), 0.0, atol=1e-6)


def test_tv_and_emo_cost_equal_explicit_sums():
  """TV = ½ Σ|p - q| and the product-plan cost Σ_ij q_i p_j (1 - ê_i·ê_j) written as loops
  over an explicit cost matrix; the debiased gap C(q,p) - ½C(p,p) - ½C(q,q) >= 0."""
  p_model, q_model = _model(2, 10.0), _model(3, 10.0)
  tokens = _all_sequences()
  unit_head = exact.unit_rows(p_model.head)
  out = jax.device_get(exact.position_divergences(p_model, q_model, tokens, unit_head))
  p = _softmax(np.asarray(p_model(tokens[:, :-1]), np.float64))
  q = _softmax(np.asarray(q_model(tokens[:, :-1]), np.float64))
  head = np.asarray(p_model.head, np.float64)
  unit = head / np.linalg.norm(head, axis=1, keepdims=True)
  cost = np.array([[1.0 - unit[i] @ unit[j] for j in range(2)] for i in range(2)])

  def plan_cost(a, b):
    return sum(a[..., i] * b[..., j] * cost[i, j] for i in range(2) for j in range(2))

  tol = {"rtol": 1e-4, "atol": 1e-5}
  np.testing.assert_allclose(out["tv"], 0.5 * np.abs(p - q).sum(-1), **tol)
  np.testing.assert_allclose(out["emo_cost"], plan_cost(q, p), **tol)
  gap = plan_cost(q, p) - 0.5 * plan_cost(p, p) - 0.5 * plan_cost(q, q)
  np.testing.assert_allclose(out["emo_gap"], gap, **tol)
  assert np.all(gap >= -1e-12)
  for name, probs in (("entropy_p", p), ("entropy_q", q)):
    entropy = -sum(probs[..., i] * np.log(probs[..., i]) for i in range(2))
    np.testing.assert_allclose(out[name], entropy, **tol)


def test_along_averages_positions_and_reports_standard_errors():
  p_model, q_model = _model(4, 10.0), _model(5, 10.0)
  tokens = _all_sequences()
  unit_head = exact.unit_rows(p_model.head)
  means = exact.along(p_model, q_model, tokens, unit_head, batch_size=3)  # ragged last batch
  per_position = exact.position_divergences(p_model, q_model, tokens, unit_head)
  for name in (*exact.DIVERGENCES, *exact.ENTROPIES, "nll_p", "nll_q"):
    per_sequence = np.asarray(per_position[name], np.float64).mean(1)
    np.testing.assert_allclose(means[name], per_sequence.mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(means[f"{name}_se"],
                               per_sequence.std(ddof=1) / np.sqrt(len(tokens)), rtol=1e-4,
                               atol=1e-7)
