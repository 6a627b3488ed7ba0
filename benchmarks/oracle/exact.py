"""Exact token-level divergences between a known oracle ``P`` and a student ``Q`` (no features).

Along a prefix ``x_<t`` both models give their full next-token distributions ``p = P(·|x_<t)`` and
``q = Q(·|x_<t)``; per position:

* forward KL ``KL(p‖q) = Σ_v p_v (log p_v - log q_v)`` (recall: mass of ``P`` that ``Q`` misses);
* reverse KL ``KL(q‖p) = Σ_v q_v (log q_v - log p_v)`` (precision: mass ``Q`` puts where ``P``
  has little);
* total variation ``TV = ½ Σ_v |p_v - q_v|`` (TaiLr's quantity);
* EMO transport cost with ``P``'s head: with ``Ê`` the L2-normalised rows of the oracle's LM head
  and ``c(i, j) = 1 - ê_i · ê_j``, the product-plan cost ``C(q, p) = Σ_ij q_i p_j c(i, j) =
  1 - (qÊ)·(pÊ)``, which is the expected EMO loss of ``Q`` for a target ``y ~ P`` (the quantity
  EMO's training loss estimates, docs "Derivations", "EMO"); and its debiased form ``D = C(q, p) - ½ C(p, p)
  - ½ C(q, q) = ½ ‖(p - q) Ê‖² >= 0`` (zero when ``Q`` matches ``P`` in the embedding space);
* the entropies ``H(p) = -Σ_v p_v log p_v`` and ``H(q)``: along ``Q``'s own samples the
  cross-entropy under ``P`` (``log PPL_oracle``) is ``H(q) + KL(q‖p)`` per position, so a lower
  ``PPL_oracle`` with an unchanged reverse KL is bought by a lower entropy (sharpening).

Averaged over the positions of oracle samples (forward KL, ``PPL_test``) or of student samples
(reverse KL, ``PPL_oracle``). By the chain rule, the sum over positions of the forward KL along
``x ~ P`` has expectation ``KL(P(x)‖Q(x))`` over whole sequences (tested by enumeration on a
2-token vocabulary).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

DIVERGENCES = ("forward_kl", "reverse_kl", "tv", "emo_cost", "emo_gap")
ENTROPIES = ("entropy_p", "entropy_q")


def unit_rows(head) -> jax.Array:
  """Rows of ``head [V, d]`` scaled to unit L2 norm (zero rows stay zero)."""
  head = jnp.asarray(head, jnp.float32)
  norm = jnp.linalg.norm(head, axis=-1, keepdims=True)
  return head / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny)


def divergences(p_logits: jax.Array, q_logits: jax.Array, unit_head: jax.Array) -> dict:
  """Per-position divergences of ``softmax(q_logits)`` from ``softmax(p_logits)``.

  Args:
    p_logits: ``[..., V]`` logits of the oracle ``P``.
    q_logits: ``[..., V]`` logits of the student ``Q`` at the same positions.
    unit_head: ``[V, k]`` unit-norm cost embedding (:func:`unit_rows` of ``P``'s head).

  Returns:
    ``{name: [...] float32}`` for each of :data:`DIVERGENCES` and :data:`ENTROPIES` (formulas
    in the module doc).
  """
  log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
  log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
  p, q = jnp.exp(log_p), jnp.exp(log_q)
  pe, qe = p @ unit_head, q @ unit_head
  return {
      "forward_kl": jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1),
      "reverse_kl": jnp.sum(jnp.where(q > 0, q * (log_q - log_p), 0.0), axis=-1),
      "tv": 0.5 * jnp.sum(jnp.abs(p - q), axis=-1),
      "emo_cost": 1.0 - jnp.sum(pe * qe, axis=-1),
      "emo_gap": 0.5 * jnp.sum(jnp.square(pe - qe), axis=-1),
      "entropy_p": -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1),
      "entropy_q": -jnp.sum(jnp.where(q > 0, q * log_q, 0.0), axis=-1),
  }


@functools.partial(jax.jit, static_argnames=("p_graphdef", "q_graphdef"))
def _positions(p_graphdef, p_state, q_graphdef, q_state, tokens, unit_head, temperature):
  p_logits = nnx.merge(p_graphdef, p_state)(tokens[:, :-1])
  # Q sampled at temperature T: softmax(logits / T) (x / 1.0 == x exactly: T = 1 is untempered)
  q_logits = nnx.merge(q_graphdef, q_state)(tokens[:, :-1]) / temperature
  out = divergences(p_logits, q_logits, unit_head)
  targets = tokens[:, 1:, None]
  for name, logits in (("nll_p", p_logits), ("nll_q", q_logits)):
    out[name] = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets, axis=-1)[..., 0]
  return out


def position_divergences(oracle, student, tokens, unit_head, temperature: float = 1.0) -> dict:
  """:func:`divergences` at every position of ``tokens [B, T]`` (predicting ``tokens[:, 1:]``
  from the prefix), plus each model's NLL of the next token (``nll_p``, ``nll_q``): ``[B, T-1]``
  arrays. ``temperature``: the student's distribution is ``softmax(logits / temperature)`` (the
  student sampled at that temperature; ``1.0``: the student itself, bit for bit)."""
  p_graphdef, p_state = nnx.split(oracle)
  q_graphdef, q_state = nnx.split(student)
  return _positions(p_graphdef, p_state, q_graphdef, q_state, jnp.asarray(tokens, jnp.int32),
                    unit_head, jnp.float32(temperature))


def along(oracle, student, tokens: np.ndarray, unit_head, batch_size: int = 256,
          temperature: float = 1.0) -> dict:
  """Means over every position of ``tokens [N, T]`` of :func:`position_divergences`, with
  ``{name}_se``, the standard error of the mean over sequences (sequences are independent
  samples; positions within one are not)."""
  rows = {}
  for start in range(0, len(tokens), batch_size):
    part = jax.device_get(position_divergences(oracle, student, tokens[start:start + batch_size],
                                               unit_head, temperature))
    for name, values in part.items():
      rows.setdefault(name, []).append(np.asarray(values, np.float64).mean(axis=1))
  out = {}
  for name, parts in rows.items():
    per_sequence = np.concatenate(parts)
    out[name] = float(per_sequence.mean())
    out[f"{name}_se"] = float(per_sequence.std(ddof=1) / np.sqrt(per_sequence.size))
  return out
