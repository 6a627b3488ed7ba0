"""A small decoder-only transformer (Flax NNX) and a KV-cached sampler for it.

The model is a pre-LayerNorm GPT with learned positions and a tied input/output embedding, so
``logits = hidden_states(tokens) @ head.T`` with ``head`` the ``[V, d]`` embedding (the EMO cost
embedding of the experiment is a frozen copy of it).

Everything here is a pure function of ``(graphdef, state, ...)`` or of a model: no global state,
so other experiments (e.g. a known-oracle study that samples from a pretrained base) import it
as is:

* :func:`build_model` -- a model of a :class:`ModelConfig`, initialised from a seed;
* :func:`sample` -- jitted ancestral sampling with a key-value cache (temperature, top-p), one
  compiled program per (batch, prefix, new tokens, top-p) shape, optionally with the entropy
  of each drawn token's distribution;
* :func:`cached_logits` -- the logits the sampler computes, teacher-forced on given tokens
  (its test: equal to the full forward pass);
* :func:`sequence_log_probs` -- ``log p(x_t | x_<t)`` of given sequences (exact likelihoods).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Cache = tuple[tuple[Array, Array], ...]  # per layer (keys, values), each [B, T, heads, d_head]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of :class:`TransformerLM` (``seq_len`` is the context length)."""
  vocab_size: int
  seq_len: int
  d_model: int
  num_layers: int
  num_heads: int


_INIT = nnx.initializers.normal(0.02)
_LIST = getattr(nnx, "List", list)  # flax >= 0.12 wants nnx.List; older ones a plain list


class Block(nnx.Module):
  """Causal self-attention and an MLP, each behind a LayerNorm and a residual connection."""

  def __init__(self, d_model: int, num_heads: int, num_layers: int, rngs: nnx.Rngs):
    residual_init = nnx.initializers.normal(0.02 / math.sqrt(2 * num_layers))
    self.num_heads = num_heads
    self.attn_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.qkv = nnx.Linear(d_model, 3 * d_model, kernel_init=_INIT, rngs=rngs)
    self.attn_out = nnx.Linear(d_model, d_model, kernel_init=residual_init, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp_in = nnx.Linear(d_model, 4 * d_model, kernel_init=_INIT, rngs=rngs)
    self.mlp_out = nnx.Linear(4 * d_model, d_model, kernel_init=residual_init, rngs=rngs)

  def __call__(self, x: Array, cache: tuple[Array, Array] | None = None,
               position: Array | int = 0) -> tuple[Array, tuple[Array, Array] | None]:
    """``x [B, t, d]`` -> ``([B, t, d], cache)``. Without a cache: causal attention over ``x``.
    With one: ``x`` sits at positions ``position .. position + t - 1``; its keys and values are
    written into the cache and it attends to every cached position up to its own."""
    batch, length, d = x.shape
    qkv = self.qkv(self.attn_norm(x)).reshape(batch, length, 3, self.num_heads, -1)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cache is None:
      attended = jax.nn.dot_product_attention(query, key, value, is_causal=True)
    else:
      keys = jax.lax.dynamic_update_slice(cache[0], key, (0, position, 0, 0))
      values = jax.lax.dynamic_update_slice(cache[1], value, (0, position, 0, 0))
      cache = (keys, values)
      query_pos = position + jnp.arange(length)
      mask = jnp.arange(keys.shape[1])[None, :] <= query_pos[:, None]  # [t, T]
      attended = jax.nn.dot_product_attention(query, keys, values, mask=mask[None, None])
    x = x + self.attn_out(attended.reshape(batch, length, d))
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x)))), cache


class TransformerLM(nnx.Module):
  """``hidden_states(tokens) [B, T, d]``; ``head`` is the ``[V, d]`` tied embedding, so the
  logits are ``hidden_states @ head.T``."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.d_model, embedding_init=_INIT, rngs=rngs)
    self.position = nnx.Param(_INIT(rngs.params(), (config.seq_len, config.d_model)))
    self.blocks = _LIST([Block(config.d_model, config.num_heads, config.num_layers, rngs)
                         for _ in range(config.num_layers)])
    self.final_norm = nnx.LayerNorm(config.d_model, rngs=rngs)

  @property
  def head(self) -> Array:
    return self.embed.embedding[...]

  def hidden_states(self, tokens: Array) -> Array:
    """Final (normalised) hidden states ``[B, T, d]`` of ``tokens [B, T]``, ``T <= seq_len``."""
    x = self.embed(tokens) + self.position[...][: tokens.shape[1]]
    for block in self.blocks:
      x, _ = block(x)
    return self.final_norm(x)

  def __call__(self, tokens: Array) -> Array:
    return jnp.einsum("btd,vd->btv", self.hidden_states(tokens), self.head)

  def init_cache(self, batch: int) -> Cache:
    """An empty key-value cache for ``batch`` sequences of up to ``seq_len`` tokens."""
    c = self.config
    shape = (batch, c.seq_len, c.num_heads, c.d_model // c.num_heads)
    return tuple((jnp.zeros(shape), jnp.zeros(shape)) for _ in range(c.num_layers))

  def decode(self, tokens: Array, cache: Cache, position: Array | int) -> tuple[Array, Cache]:
    """Logits ``[B, t, V]`` of ``tokens [B, t]`` placed at ``position ..`` given the cached
    earlier positions, and the updated cache."""
    positions = jax.lax.dynamic_slice_in_dim(self.position[...], position, tokens.shape[1])
    x = self.embed(tokens) + positions
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      x, layer_cache = block(x, layer_cache, position)
      new_cache.append(layer_cache)
    logits = jnp.einsum("btd,vd->btv", self.final_norm(x), self.head)
    return logits, tuple(new_cache)


def build_model(config: ModelConfig, seed: int) -> TransformerLM:
  """A :class:`TransformerLM` initialised from ``seed``."""
  return TransformerLM(config, nnx.Rngs(seed))


def nucleus_probs(logits: Array, top_p: float, iterations: int = 32) -> Array:
  """Probabilities of nucleus (top-p) sampling: ``softmax(logits)`` restricted to the smallest
  set of most likely tokens whose mass reaches ``top_p``, renormalised (``top_p >= 1``: the
  plain softmax).

  The cut-off probability is found by bisection (``iterations`` halvings of ``[0, max p]``)
  instead of a sort over the vocabulary, which is several times slower on a CPU; tokens within
  ``max p / 2**iterations`` of the cut-off may fall on either side.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  if top_p >= 1.0:
    return probs

  def halve(_, bounds):
    low, high = bounds  # mass(p >= low) >= top_p always holds
    middle = 0.5 * (low + high)
    enough = jnp.sum(jnp.where(probs >= middle, probs, 0.0), axis=-1, keepdims=True) >= top_p
    return jnp.where(enough, middle, low), jnp.where(enough, high, middle)

  start = (jnp.zeros_like(probs[..., :1]), jnp.max(probs, axis=-1, keepdims=True))
  cutoff, _ = jax.lax.fori_loop(0, iterations, halve, start)
  kept = jnp.where(probs >= cutoff, probs, 0.0)
  return kept / jnp.sum(kept, axis=-1, keepdims=True)


def draw_from(probs: Array, key: Array) -> Array:
  """One index per row of ``probs [..., V]`` by inverse-CDF sampling (one uniform per row;
  a Gumbel-max draw needs ``V`` random numbers per row, the sampler's main cost on a CPU)."""
  cdf = jnp.cumsum(probs, axis=-1)
  u = jax.random.uniform(key, probs.shape[:-1] + (1,)) * cdf[..., -1:]
  index = jnp.sum(cdf <= u, axis=-1)
  return jnp.minimum(index, probs.shape[-1] - 1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "num_new", "top_p"))
def _sample(graphdef, state, prefix: Array, key: Array, temperature: Array, *, num_new: int,
            top_p: float) -> Array:
  model = nnx.merge(graphdef, state)
  batch, prefix_len = prefix.shape
  logits, cache = model.decode(prefix, model.init_cache(batch), 0)

  def step(carry, i):
    logits, cache, key = carry
    key, draw = jax.random.split(key)
    probs = nucleus_probs(logits / temperature, top_p)
    token = draw_from(probs, draw).astype(prefix.dtype)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                                 0.0), axis=-1)
    logits, cache = model.decode(token[:, None], cache, prefix_len + i)
    return (logits[:, 0], cache, key), (token, entropy)

  _, (tokens, entropy) = jax.lax.scan(step, (logits[:, -1], cache, key), jnp.arange(num_new))
  return jnp.concatenate([prefix, tokens.T], axis=1), entropy.T


def sample(model: TransformerLM, prefix: Any, key: Array, num_new: int, *,
           temperature: float = 1.0, top_p: float = 1.0, return_entropy: bool = False):
  """Ancestral sampling of ``num_new`` tokens after each row of ``prefix [B, P]``.

  Temperature 1 and ``top_p = 1`` is unbiased sampling from the model; ``top_p < 1`` is nucleus
  sampling. The prefix is processed at once, then one token per step reuses the key-value
  cache; the whole loop is one jitted program per ``(B, P, num_new, top_p)``.
  ``P + num_new`` must not exceed the context ``seq_len``.

  Returns:
    ``[B, P + num_new]`` int32 tokens: the prefix followed by the sampled continuation; with
    ``return_entropy``, also the ``[B, num_new]`` entropy (nats) of the distribution each token
    was drawn from (after temperature and top-p): the entropy along the model's own samples.
  """
  prefix = jnp.asarray(prefix, jnp.int32)
  if prefix.shape[1] + num_new > model.config.seq_len:
    raise ValueError(f"prefix {prefix.shape[1]} + num_new {num_new} tokens exceed the context "
                     f"of {model.config.seq_len}.")
  graphdef, state = nnx.split(model)
  tokens, entropy = _sample(graphdef, state, prefix, key, jnp.float32(temperature),
                            num_new=num_new, top_p=float(top_p))
  return (tokens, entropy) if return_entropy else tokens


@functools.partial(jax.jit, static_argnames=("graphdef", "prefix_len"))
def _cached_logits(graphdef, state, tokens: Array, *, prefix_len: int) -> Array:
  model = nnx.merge(graphdef, state)
  logits, cache = model.decode(tokens[:, :prefix_len], model.init_cache(tokens.shape[0]), 0)

  def step(cache, i):
    token = jax.lax.dynamic_slice_in_dim(tokens, prefix_len + i, 1, axis=1)
    logits, cache = model.decode(token, cache, prefix_len + i)
    return cache, logits[:, 0]

  _, rest = jax.lax.scan(step, cache, jnp.arange(tokens.shape[1] - prefix_len))
  return jnp.concatenate([logits, jnp.swapaxes(rest, 0, 1)], axis=1)


def cached_logits(model: TransformerLM, tokens: Any, prefix_len: int) -> Array:
  """The sampler's logits, teacher-forced: prefill ``tokens[:, :prefix_len]``, then feed one
  token at a time through the cache. Equals ``model(tokens)`` ``[B, T, V]`` up to float error."""
  graphdef, state = nnx.split(model)
  return _cached_logits(graphdef, state, jnp.asarray(tokens, jnp.int32), prefix_len=prefix_len)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _sequence_log_probs(graphdef, state, tokens: Array) -> Array:
  model = nnx.merge(graphdef, state)
  log_probs = jax.nn.log_softmax(model(tokens[:, :-1]), axis=-1)
  return jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]


def sequence_log_probs(model: TransformerLM, tokens: Any) -> Array:
  """``log p(tokens[:, t] | tokens[:, :t])`` for ``t >= 1``: ``[B, T - 1]`` float32."""
  graphdef, state = nnx.split(model)
  return _sequence_log_probs(graphdef, state, jnp.asarray(tokens, jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _pooled_hidden(graphdef, state, tokens: Array, where: Array) -> Array:
  model = nnx.merge(graphdef, state)
  hidden = model.hidden_states(tokens)
  weights = where.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


def pooled_hidden_states(model: TransformerLM, tokens: Any, where: Any = None) -> Array:
  """Mean over positions (those where ``where`` is true) of the final hidden states: one
  ``[B, d]`` feature vector per sequence (the MAUVE featuriser of the experiment)."""
  tokens = jnp.asarray(tokens, jnp.int32)
  where = jnp.ones(tokens.shape, bool) if where is None else jnp.asarray(where, bool)
  graphdef, state = nnx.split(model)
  return _pooled_hidden(graphdef, state, tokens, where)
