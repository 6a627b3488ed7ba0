"""Per-example training losses in the style of ``optax.losses``.

Every loss returns the per-example loss (the caller reduces), accepts an optional boolean
``where`` mask (masked examples give exactly 0 and are left out of batch statistics) and computes
in float32 whatever the input dtype. Integer labels are class indices of shape
``logits.shape[:-1]``; floating labels of shape ``logits.shape`` are soft labels where supported.
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
