"""Training losses in the style of ``optax.losses``.

Per-example losses return one value per example (the caller reduces): every loss here except the
three batch-level ones below. Some per-example losses read a statistic of the whole (unmasked)
batch, so one example's value depends on the others: ``f1_weighted_binary_cross_entropy`` (the
batch's smooth F1) and ``exact_loss(..., batch_norm=True)`` (the batch's mean and variance).

Batch-level losses return one scalar per batch (per label column for multi-label F1):
``smooth_f1_loss``, ``exact_batch_loss`` and ``negative_log_mean_likelihood``; their first
docstring line says so.

Every loss accepts an optional boolean ``where`` mask (masked examples give exactly 0, or are
left out of the batch statistic) and computes in float32 whatever the input dtype. Integer
labels are class indices of shape ``logits.shape[:-1]``; floating labels of shape
``logits.shape`` are soft labels where supported.
"""

from emoloss.losses._accuracy import binary_smoothed_accuracy_loss, smoothed_accuracy_loss
from emoloss.losses._emo import emo_ce_combination, emo_ce_loss, emo_loss, normalize_embeddings
from emoloss.losses._exact import exact_loss
from emoloss.losses._f1 import f1_weighted_binary_cross_entropy, smooth_f1_loss, smooth_f1_score
from emoloss.losses._focal import softmax_focal_loss
from emoloss.losses._likelihood import exact_batch_loss, negative_log_mean_likelihood
from emoloss.losses._long_tail import (
    log_prior_adjustment,
    logit_adjusted_cross_entropy,
    margin_cross_entropy,
    norm_aware_margin_cross_entropy,
    posthoc_logit_adjustment,
)
from emoloss.losses._mixce import mixce_loss, mixce_weight
from emoloss.losses._tailr import tailr_loss, tailr_weight

__all__ = [
    "binary_smoothed_accuracy_loss",
    "emo_ce_combination",
    "emo_ce_loss",
    "emo_loss",
    "exact_batch_loss",
    "exact_loss",
    "f1_weighted_binary_cross_entropy",
    "log_prior_adjustment",
    "logit_adjusted_cross_entropy",
    "margin_cross_entropy",
    "mixce_loss",
    "mixce_weight",
    "negative_log_mean_likelihood",
    "norm_aware_margin_cross_entropy",
    "normalize_embeddings",
    "posthoc_logit_adjustment",
    "smooth_f1_loss",
    "smooth_f1_score",
    "smoothed_accuracy_loss",
    "softmax_focal_loss",
    "tailr_loss",
    "tailr_weight",
]
