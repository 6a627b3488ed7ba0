"""Cross-entropy and EMO computed straight from hidden states and the LM head, without the
``[N, V]`` logits.

Every function takes ``hidden [..., d]`` and a ``[V, d]`` head (``z = hidden @ head.T``; an
``nnx.Linear`` kernel ``[d, V]`` is passed as ``kernel.T``), the same options (``chunk_size``,
``softcap``, ``temperature``, ``label_smoothing``, ``where``) and, to run on a device mesh with
tokens split over a data axis and the vocabulary over a model axis, ``mesh``:

* :func:`fused_token_stats`: the per-token :class:`TokenStats` ``(nll, emo, lse, entropy)``,
  chunked over the vocabulary with an online log-sum-exp; the backward pass recomputes each
  chunk (the docs' "Derivations" page, "Fused, chunked computation from hidden states");
* :func:`fused_emo_ce_loss`, :func:`fused_mixce_loss`: per-token losses built on it;
* :func:`fused_loss`: a masked mean or sum of ``per_token(stats)`` (such as
  :func:`emo_ce_per_token`) with its gradient computed in one pass over token chunks, with no
  recomputation ("Derivations", "Cost model").

Implementation modules are private: ``_core`` (the formulas and the per-block statistics),
``_plumbing`` (checks, masks, specs, the ``shard_map``), ``_chunked`` and ``_onepass`` (the two
schedules).
"""

from emoloss.fused import _deprecated
from emoloss.fused._chunked import fused_token_stats
from emoloss.fused._losses import fused_emo_ce_loss, fused_mixce_loss
from emoloss.fused._onepass import ce_per_token, emo_ce_per_token, fused_loss
from emoloss.fused._plumbing import TokenStats

__all__ = [
    "TokenStats",
    "ce_per_token",
    "emo_ce_per_token",
    "fused_emo_ce_loss",
    "fused_loss",
    "fused_mixce_loss",
    "fused_token_stats",
]


def __getattr__(name: str):
  """The 0.2 names (``fused_ce_emo``, ``onepass_loss``, ``sharded_*``, ``FusedOutput``,
  ``default_token_chunk_size``): thin aliases that warn."""
  return _deprecated.lookup(name, __name__)
