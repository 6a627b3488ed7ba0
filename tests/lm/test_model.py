"""The transformer's KV-cached sampler (benchmarks/lm/model.py) against the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.lm import model as model_lib

CONFIG = model_lib.ModelConfig(vocab_size=50, seq_len=12, d_model=16, num_layers=2, num_heads=2)


@pytest.fixture(scope="module")
def model():
  return model_lib.build_model(CONFIG, seed=3)


def test_cached_logits_equal_the_full_forward_pass(model):
  tokens = np.random.default_rng(0).integers(0, CONFIG.vocab_size, size=(3, CONFIG.seq_len))
  full = np.asarray(model(jnp.asarray(tokens)))
  for prefix_len in (1, 5):
    cached = np.asarray(model_lib.cached_logits(model, tokens, prefix_len))
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5 * np.abs(full).max())


def test_samples_are_draws_of_the_forward_pass(model):
  """Nucleus sampling with a tiny top-p is greedy decoding: each sampled token is the argmax
  of the full forward pass on the sampled sequence (so the cache fed the sampled tokens)."""
  prefix = np.random.default_rng(1).integers(0, CONFIG.vocab_size, size=(4, 3))
  tokens = np.asarray(model_lib.sample(model, prefix, jax.random.key(0), 9, top_p=1e-6))
  assert tokens.shape == (4, 12) and np.array_equal(tokens[:, :3], prefix)
  greedy = np.argmax(np.asarray(model(jnp.asarray(tokens))), axis=-1)
  np.testing.assert_array_equal(tokens[:, 3:], greedy[:, 2:-1])
  unbiased = np.asarray(model_lib.sample(model, prefix, jax.random.key(0), 9))
  assert not np.array_equal(unbiased, tokens)  # temperature 1 is not greedy
  with pytest.raises(ValueError, match="exceed the context"):
    model_lib.sample(model, prefix, jax.random.key(0), 10)


def test_nucleus_probs_match_a_sort_based_reference():
  logits = np.random.default_rng(2).standard_normal((6, 40)).astype(np.float32) * 2.0
  for top_p in (0.3, 0.9, 0.99):
    got = np.asarray(model_lib.nucleus_probs(jnp.asarray(logits), top_p))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row, p in zip(got, probs):
      order = np.argsort(-p)
      kept = order[:np.searchsorted(np.cumsum(p[order]), top_p) + 1]
      want = np.zeros_like(p)
      want[kept] = p[kept] / p[kept].sum()
      np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(model_lib.nucleus_probs(jnp.asarray(logits), 1.0),
                             jax.nn.softmax(logits), rtol=1e-6)


def test_inverse_cdf_draws_follow_the_probabilities():
  probs = jnp.array([0.5, 0.0, 0.3, 0.2])
  keys = jax.random.split(jax.random.key(0), 20_000)
  draws = np.asarray(jax.vmap(lambda k: model_lib.draw_from(probs, k))(keys))
  frequencies = np.bincount(draws, minlength=4) / draws.size
  # 4 standard errors of a binomial proportion at n = 20000 is at most 0.015.
  np.testing.assert_allclose(frequencies, probs, atol=0.015)
  assert frequencies[1] == 0.0


def test_pooled_hidden_states_average_the_masked_positions(model):
  tokens = np.random.default_rng(3).integers(0, CONFIG.vocab_size, size=(2, 8))
  where = np.arange(8)[None, :].repeat(2, 0) >= 3
  hidden = np.asarray(model.hidden_states(jnp.asarray(tokens)))
  got = np.asarray(model_lib.pooled_hidden_states(model, tokens, where))
  np.testing.assert_allclose(got, hidden[:, 3:].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_sequence_log_probs_sum_to_the_log_likelihood(model):
  tokens = np.random.default_rng(4).integers(0, CONFIG.vocab_size, size=(2, 6))
  logits = np.asarray(model(jnp.asarray(tokens[:, :-1])), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = np.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(model_lib.sequence_log_probs(model, tokens), want, rtol=1e-5,
                             atol=1e-5)


def test_sampled_entropy_is_that_of_the_tempered_forward_pass(model):
  """The entropy the sampler returns at each new token is the entropy of softmax(logits / T)
  of the full forward pass at that position (an independent computation), and a lower
  temperature lowers it."""
  prefix = np.random.default_rng(2).integers(0, CONFIG.vocab_size, size=(5, 3))
  for temperature in (0.7, 1.3):
    tokens, entropy = model_lib.sample(model, prefix, jax.random.key(1), 9,
                                       temperature=temperature, return_entropy=True)
    logits = np.asarray(model(jnp.asarray(tokens)), np.float64)[:, 2:-1] / temperature
    log_p = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                   keepdims=True)) - logits.max(-1, keepdims=True)
    want = -np.sum(np.exp(log_p) * log_p, axis=-1)
    np.testing.assert_allclose(np.asarray(entropy), want, rtol=1e-4, atol=1e-5)
  cold = model_lib.sample(model, prefix, jax.random.key(1), 9, temperature=0.3,
                          return_entropy=True)[1]
  hot = model_lib.sample(model, prefix, jax.random.key(1), 9, temperature=3.0,
                         return_entropy=True)[1]
  assert float(np.mean(cold)) < float(np.mean(hot))
