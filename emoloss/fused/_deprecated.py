"""The fused names of version 0.2, kept as thin aliases that warn (``DeprecationWarning``).

Each calls the 0.3 function; the CHANGELOG's migration table lists the replacements.
"""

from __future__ import annotations

import functools
import inspect
import warnings

import jax

from emoloss.fused import _onepass
from emoloss.fused._chunked import DEFAULT_CHUNK_SIZE, fused_token_stats
from emoloss.fused._plumbing import VOCAB_BLOCK, TokenStats, check_bool, positive_int

REPLACEMENTS = {
    "FusedOutput": "emoloss.TokenStats",
    "fused_ce_emo": "emoloss.fused_token_stats",
    "sharded_fused_ce_emo": "emoloss.fused_token_stats(..., mesh=mesh)",
    "onepass_loss": "emoloss.fused_loss (per_token receives one TokenStats record)",
    "sharded_onepass_loss": "emoloss.fused_loss(..., mesh=mesh)",
    "default_token_chunk_size": "emoloss.fused_loss's default chunk_size (None)",
}


def _warn(name: str, depth: int = 3) -> None:
  """Warns at the caller ``depth`` frames up (3: the caller of the alias)."""
  warnings.warn(f"emoloss.{name} is deprecated and will be removed; use "
                f"{REPLACEMENTS[name]}.", DeprecationWarning, stacklevel=depth)


def _frozen(head, freeze_head):
  return jax.lax.stop_gradient(head) if check_bool(freeze_head, "freeze_head") else head


def fused_ce_emo(hidden, head, labels, cost_embeddings=None, *, where=None,
                 chunk_size=DEFAULT_CHUNK_SIZE, softcap=None, temperature=1.0,
                 label_smoothing=0.0, freeze_head=False) -> TokenStats:
  """Deprecated (``hidden [..., d]``, ``[V, d]`` head): :func:`emoloss.fused_token_stats`
  (``freeze_head=True``: pass ``jax.lax.stop_gradient(head)``)."""
  _warn("fused_ce_emo")
  return fused_token_stats(hidden, _frozen(head, freeze_head), labels, cost_embeddings,
                           where=where, chunk_size=chunk_size, softcap=softcap,
                           temperature=temperature, label_smoothing=label_smoothing)


def sharded_fused_ce_emo(hidden, head, labels, cost_embeddings=None, *, mesh, data_axis="data",
                         model_axis="model", where=None, chunk_size=DEFAULT_CHUNK_SIZE,
                         softcap=None, temperature=1.0, label_smoothing=0.0,
                         freeze_head=False) -> TokenStats:
  """Deprecated (``hidden [N, d]``, ``[V, d]`` head): :func:`emoloss.fused_token_stats` with
  ``mesh``."""
  _warn("sharded_fused_ce_emo")
  if mesh is None:
    raise TypeError("`mesh` must be a jax.sharding.Mesh (got NoneType).")
  return fused_token_stats(hidden, _frozen(head, freeze_head), labels, cost_embeddings,
                           where=where, chunk_size=chunk_size, softcap=softcap,
                           temperature=temperature, label_smoothing=label_smoothing, mesh=mesh,
                           data_axis=data_axis, model_axis=model_axis)


def _takes_record(per_token) -> bool:
  """Whether ``per_token`` has the 0.3 signature ``f(stats)`` (one required positional
  parameter) rather than ``f(nll, emo, lse[, entropy])``."""
  try:
    parameters = inspect.signature(per_token).parameters.values()
  except (TypeError, ValueError):
    return False
  positional = [p for p in parameters
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
  variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
  return len(positional) == 1 and not variadic


def _adapt(per_token, entropy: bool):
  if _takes_record(per_token):
    return per_token
  if entropy:
    return lambda s: per_token(s.nll, s.emo, s.lse, s.entropy)
  return lambda s: per_token(s.nll, s.emo, s.lse)


@functools.lru_cache(maxsize=256)
def _adapt_cached(per_token, entropy: bool):
  return _adapt(per_token, entropy)


def _legacy_per_token(per_token, entropy):
  """The 0.2 ``per_token`` (``f(nll, emo, lse)``, or with the entropy ``f(nll, emo, lse, H)``)
  as a 0.3 ``f(stats)``; the same adapter for the same function, so compilations are reused."""
  if not callable(per_token):
    raise TypeError(f"`per_token` must be a function f(nll, emo, lse) (got {per_token!r}).")
  entropy = check_bool(entropy, "entropy")
  try:
    return _adapt_cached(per_token, entropy)
  except TypeError:  # unhashable callable
    return _adapt(per_token, entropy)


def _reduced(name, hidden, head, labels, cost_embeddings, *, per_token, reduction, where,
             token_chunk_size, vocab_block_size, softcap, temperature, label_smoothing, entropy,
             freeze_head, mesh=None, data_axis=None, model_axis=None):
  _warn(name, depth=4)
  positive_int(token_chunk_size, "token_chunk_size", allow_none=True)
  return _onepass.reduced_loss(
      hidden, _frozen(head, freeze_head), labels, cost_embeddings, where,
      per_token=_legacy_per_token(per_token, entropy), reduction=reduction,
      chunk_size=token_chunk_size, softcap=softcap, temperature=temperature,
      label_smoothing=label_smoothing, mesh=mesh, data_axis=data_axis, model_axis=model_axis,
      vocab_block_size=vocab_block_size)


def onepass_loss(hidden, head, labels, cost_embeddings=None, *,
                 per_token=_onepass.ce_per_token, reduction="mean", where=None,
                 token_chunk_size=None, vocab_block_size=VOCAB_BLOCK, softcap=None,
                 temperature=1.0, label_smoothing=0.0, entropy=False, freeze_head=False):
  """Deprecated (``hidden [..., d]``, ``[V, d]`` head): :func:`emoloss.fused_loss`
  (``per_token`` receives one record)."""
  return _reduced("onepass_loss", hidden, head, labels, cost_embeddings, per_token=per_token,
                  reduction=reduction, where=where, token_chunk_size=token_chunk_size,
                  vocab_block_size=vocab_block_size, softcap=softcap, temperature=temperature,
                  label_smoothing=label_smoothing, entropy=entropy, freeze_head=freeze_head)


def sharded_onepass_loss(hidden, head, labels, cost_embeddings=None, *, mesh, data_axis="data",
                         model_axis="model", per_token=_onepass.ce_per_token, reduction="mean",
                         where=None, token_chunk_size=None, vocab_block_size=VOCAB_BLOCK,
                         softcap=None, temperature=1.0, label_smoothing=0.0, entropy=False,
                         freeze_head=False):
  """Deprecated (``hidden [N, d]``, ``[V, d]`` head): :func:`emoloss.fused_loss` with ``mesh``."""
  if mesh is None:
    raise TypeError("`mesh` must be a jax.sharding.Mesh (got NoneType).")
  return _reduced("sharded_onepass_loss", hidden, head, labels, cost_embeddings,
                  per_token=per_token, reduction=reduction, where=where,
                  token_chunk_size=token_chunk_size, vocab_block_size=vocab_block_size,
                  softcap=softcap, temperature=temperature, label_smoothing=label_smoothing,
                  entropy=entropy, freeze_head=freeze_head, mesh=mesh, data_axis=data_axis,
                  model_axis=model_axis)


def default_token_chunk_size(vocab_size: int) -> int:
  """Deprecated: :func:`emoloss.fused_loss` chooses it when ``chunk_size=None``."""
  _warn("default_token_chunk_size")
  return _onepass.default_token_chunk_size(vocab_size)


_FUNCTIONS = {f.__name__: f for f in (fused_ce_emo, sharded_fused_ce_emo, onepass_loss,
                                      sharded_onepass_loss, default_token_chunk_size)}


def lookup(name: str, module: str):
  """The deprecated fused name ``name`` (a module ``__getattr__``): functions warn when called,
  the ``FusedOutput`` class when looked up."""
  if name == "FusedOutput":
    _warn(name, depth=4)
    return TokenStats
  if name in _FUNCTIONS:
    return _FUNCTIONS[name]
  raise AttributeError(f"module {module!r} has no attribute {name!r}")
