"""The CE check of docs/trainer.md (the snippet itself, loaded from the page): it passes for the
right glue and fails for each mistake it is meant to catch, against a dense optax reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emoloss
from tests.integration.ce_check import load_check_ce_matches

B, T, D, V = 3, 12, 32, 50
SOFTCAP = 5.0  # small enough to change logits of this scale (std ~ sqrt(D))


def _rms_norm(x):
  return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def _problem():
  rng = np.random.default_rng(0)
  pre_norm = jnp.asarray(3.0 * rng.normal(size=(B, T, D)) + 1.0, jnp.float32)
  head = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  lengths = np.array([T, T - 4, T - 7])
  mask = jnp.asarray((np.arange(T) < lengths[:, None]) & (np.arange(T) >= 2))  # prompt, padding
  return pre_norm, head, tokens, mask


def _framework_ce(hidden, head, tokens, mask, softcap=None):
  """A trainer's own loss, written the dense way: logits, optional cap, masked token mean."""
  logits = hidden[:, :-1] @ head.T
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  target = mask[:, 1:]
  return jnp.sum(jnp.where(target, nll, 0.0)) / jnp.sum(target)


def _emoloss_ce(hidden, head, labels, where, softcap=None):
  h = hidden[:, :-1].reshape(-1, D)
  return emoloss.fused_loss(h, head, labels.reshape(-1), where=where, softcap=softcap)


@pytest.mark.parametrize("softcap", [None, SOFTCAP])
@pytest.mark.parametrize("jit", [False, True])
def test_check_passes_for_the_right_glue(softcap, jit):
  check_ce_matches = load_check_ce_matches()
  pre_norm, head, tokens, mask = _problem()
  hidden = _rms_norm(pre_norm)
  loss = jax.jit(_emoloss_ce, static_argnames="softcap") if jit else _emoloss_ce
  ours = loss(hidden, head, tokens[:, 1:], mask[:, 1:].reshape(-1), softcap=softcap)
  theirs = _framework_ce(hidden, head, tokens, mask, softcap)
  gap = check_ce_matches(ours, theirs)
  assert gap <= 4 * np.finfo(np.float32).eps  # float32 rounding: a few units of the last place


def test_check_catches_each_glue_mistake():
  check_ce_matches = load_check_ce_matches()
  pre_norm, head, tokens, mask = _problem()
  hidden = _rms_norm(pre_norm)
  labels, where = tokens[:, 1:], mask[:, 1:].reshape(-1)
  theirs = _framework_ce(hidden, head, tokens, mask)
  mistakes = {
      "hidden states before the final norm": _emoloss_ce(pre_norm, head, labels, where),
      "mask lost": _emoloss_ce(hidden, head, labels, None),
      "labels not shifted": _emoloss_ce(hidden, head, tokens[:, :-1], where),
      "a soft-cap the model does not apply": _emoloss_ce(hidden, head, labels, where, SOFTCAP),
      "a temperature the model does not apply": emoloss.fused_loss(
          hidden[:, :-1].reshape(-1, D), head, labels.reshape(-1), where=where, temperature=2.0),
  }
  for mistake, ours in mistakes.items():
    with pytest.raises(AssertionError, match="emoloss CE"):
      check_ce_matches(ours, theirs)
      pytest.fail(f"the check missed: {mistake}")
  capped = _framework_ce(hidden, head, tokens, mask, SOFTCAP)
  with pytest.raises(AssertionError, match="emoloss CE"):  # the model's cap not passed on
    check_ce_matches(_emoloss_ce(hidden, head, labels, where), capped)


def test_check_rejects_nan():
  check_ce_matches = load_check_ce_matches()
  with pytest.raises(AssertionError, match="emoloss CE"):
    check_ce_matches(float("nan"), 2.0)
