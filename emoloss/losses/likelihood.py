r"""The batch-level objective ``-log E_D[p(y|x)]``: the log outside the data mean.

Cross-entropy is the data mean of ``-log p``; the smoothed accuracy is the data mean of ``p``.
Taking the log of the smoothed accuracy itself, ``-log E_D[p(y|x)]``, gives a third objective,
discussed against the per-example ``-log p`` in Su Jianlin's post on training for accuracy and
used (with EXACT's ``P(y)`` as ``p``) as a batch-level criterion. By Jensen's inequality it is a
lower bound of the cross-entropy, and its gradient weights each example's ``∇(-log p_i)`` by
``p_i / Σ_j p_j``: badly wrong examples get almost no gradient (see :doc:`/derivations`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from emoloss import _validation
from emoloss.losses.exact import exact_loss

ArrayLike = jax.typing.ArrayLike


def negative_log_mean_likelihood(
    neg_log_likelihood: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Reduces per-example ``ℓ_i = -log p_i`` to ``-log`` of the batch mean of ``p_i``.

  .. math::
    L = -\log \frac{1}{n} \sum_{i=1}^{n} p_i
      = \log n - \operatorname{logsumexp}_i(-\ell_i)
      \;\le\; \frac{1}{n} \sum_{i=1}^{n} \ell_i,
    \qquad
    \frac{\partial L}{\partial \ell_i} = \frac{p_i}{\sum_j p_j}

  over the ``n`` unmasked examples. The log is outside the mean, so this is one number per
  batch (not a per-example loss), and it depends on the batch: an example's gradient is scaled by
  its share of the batch's likelihood, so examples with ``p_i → 0`` are given up on (the
  opposite of cross-entropy, which the bound on the right is). Computed in log space (a
  ``logsumexp`` of ``-ℓ_i``), so ``ℓ_i`` in the thousands is no problem.

  Pass softmax cross-entropy for Su Jianlin's ``-log E_D[p_y]`` or ``exact_loss(...,
  log_prob=True)`` for EXACT's batch objective (:func:`exact_batch_loss`).

  Args:
    neg_log_likelihood: ``[...]`` per-example ``-log p_i`` (any float dtype; computed in
      float32), e.g. the output of ``optax.losses.softmax_cross_entropy_with_integer_labels``.
    where: optional boolean mask ``[...]``; masked examples are left out of the mean (their
      values may be anything, NaN included: they get zero gradient).

  Returns:
    float32 scalar ``L``. A fully masked (or empty) batch gives 0 with zero gradient; an unmasked
    NaN (e.g. from an out-of-range label) makes it NaN; ``+inf`` entries (``p_i = 0``) count as
    zero likelihood.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> nll = -jnp.log(jnp.array([0.9, 0.5, 0.1]))  # p = 0.9, 0.5, 0.1: mean 0.5
    >>> print(f"{emoloss.negative_log_mean_likelihood(nll):.4f}")  # -log 0.5
    0.6931
    >>> print(f"{nll.mean():.4f}")  # cross-entropy, the Jensen upper bound
    1.0337

  References:
    Su Jianlin, "如何训练你的准确率?" (How to train your accuracy?), kexue.fm/archives/9098,
    2022-06-01; Karpukhin et al., "EXACT: How to Train Your Accuracy", 2022 (arXiv 2205.09615).
  """
  nll = _validation.check_logits(neg_log_likelihood, name="neg_log_likelihood", min_rank=0)
  where = _validation.check_where(where, nll.shape)
  keep = jnp.ones(nll.shape, bool) if where is None else where
  count = jnp.sum(keep)
  any_kept = count > 0
  # Masked rows are -inf (no likelihood) before the logsumexp; a fully masked batch uses 0s
  # instead, so that no -inf - (-inf) reaches the logsumexp's gradient.
  log_likelihood = jnp.where(keep, -nll, -jnp.inf)
  log_likelihood = jnp.where(any_kept, log_likelihood, 0.0)
  value = jnp.log(jnp.maximum(count, 1).astype(jnp.float32)) - jax.nn.logsumexp(log_likelihood)
  return jnp.where(any_kept, value, 0.0)


def exact_batch_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    sigma: ArrayLike = 1.0,
    num_nodes: int = 64,
    margin: ArrayLike | None = None,
    where: ArrayLike | None = None,
    batch_norm: bool = False,
) -> jax.Array:
  r"""EXACT's batch objective ``-log E_D[P(y|x)]``: minus the log of the expected accuracy.

  .. math::
    L = -\log \frac{1}{n} \sum_{i=1}^{n} P(y_i \mid x_i), \qquad
    P(y) = \int \varphi(t) \prod_{i \ne y} \Phi\big(t + (z_y - z_i)/\sigma\big)\, dt

  with ``P(y)`` the probability that the target wins under Gaussian noise on the scores, as in
  :func:`exact_loss` (same quadrature, ``sigma``, ``margin``, ``batch_norm``). The expected
  accuracy ``E_D[P]`` is the quantity EXACT estimates; this puts the log outside the data mean,
  whereas ``exact_loss(..., log_prob=True)`` averages ``-log P`` per example (a Jensen upper
  bound of this, with the same minimiser only when every ``P`` is equal). Its gradient is
  ``Σ_i (P_i / Σ_j P_j) ∇(-log P_i)``: examples the classifier gets badly wrong carry little
  weight. It is :func:`negative_log_mean_likelihood` of ``exact_loss(..., log_prob=True)``.

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: ``[...]`` integer class indices.
    sigma: noise temperature ``σ > 0``, a scalar or an array broadcasting to ``[...]``.
    num_nodes: Gauss–Hermite nodes (see :func:`exact_loss`).
    margin: optional clip of ``z_y - z_i`` before dividing by ``σ``.
    where: optional boolean mask ``[...]``; masked examples are left out of the mean (and of the
      ``batch_norm`` statistic).
    batch_norm: normalise the logits by their batch mean and standard deviation first.

  Returns:
    float32 scalar (a fully masked batch gives 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> labels = jnp.array([0, 2])
    >>> print(f"{emoloss.exact_batch_loss(logits, labels, sigma=1.0):.4f}")
    0.6027
    >>> per_example = emoloss.exact_loss(logits, labels, sigma=1.0, log_prob=True)
    >>> print(f"{per_example.mean():.4f}")  # the per-example -log P, averaged: larger
    0.8950

  References:
    Karpukhin et al., "EXACT: How to Train Your Accuracy", 2022 (arXiv 2205.09615); Su Jianlin,
    "如何训练你的准确率?" (How to train your accuracy?), kexue.fm/archives/9098, 2022-06-01.
  """
  nll = exact_loss(logits, labels, sigma=sigma, num_nodes=num_nodes, margin=margin,
                   log_prob=True, where=where, batch_norm=batch_norm)
  return negative_log_mean_likelihood(nll, where=where)
