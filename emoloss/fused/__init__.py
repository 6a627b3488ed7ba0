"""Fused, chunked cross-entropy + EMO computed straight from hidden states and the LM head.

The ``[N, V]`` logits are never materialised: the vocabulary is scanned in chunks with an online
log-sum-exp, and the backward pass recomputes each chunk (the docs' "Derivations" page, "Fused,
chunked computation from hidden states"). :func:`sharded_fused_ce_emo` runs the same kernel on a
device mesh with tokens split over a data axis and the vocabulary over a model axis.

:func:`onepass_loss` (and :func:`sharded_onepass_loss`) computes a reduced loss -- a masked mean
or sum of a per-token function of ``(nll, emo, lse)`` such as :func:`emo_ce_per_token` -- and its
gradient in one pass over token chunks, with no recomputation ("Derivations", "Cost model").

Both schedules share :mod:`emoloss.fused.core`: the logit options (soft-cap, temperature, label
smoothing), the per-token statistics (``lse``, ``nll``, EMO, entropy) and the logit gradient from
per-token cotangents.
"""

from emoloss.fused.chunked import (
    FusedOutput,
    fused_ce_emo,
    fused_emo_ce_loss,
    sharded_fused_ce_emo,
)
from emoloss.fused.losses import fused_mixce_loss
from emoloss.fused.onepass import (
    ce_per_token,
    default_token_chunk_size,
    emo_ce_per_token,
    onepass_loss,
    sharded_onepass_loss,
)

__all__ = [
    "FusedOutput",
    "ce_per_token",
    "default_token_chunk_size",
    "emo_ce_per_token",
    "fused_ce_emo",
    "fused_emo_ce_loss",
    "fused_mixce_loss",
    "onepass_loss",
    "sharded_fused_ce_emo",
    "sharded_onepass_loss",
]
