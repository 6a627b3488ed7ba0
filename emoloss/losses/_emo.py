"""EMO: earth mover distance between the prediction and the target under an embedding cost."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from emoloss import _masking, _validation
from emoloss.losses import _kernels

ArrayLike = jax.typing.ArrayLike

# The cap of the mode-1 ratio CE/EMO in the packaged loss (EMOLoss) and the LLaMA script.
MODE1_MAX_RATIO = 3.0
# Bound of an "uncapped" ratio: keeps ratio * EMO and its gradient finite in float32 when a
# rounding-level EMO (≥ 1.2e-38 once non-zero) divides a CE of order 1 (the published code's
# `+ 1e-10` bounds it at about 1e11). Reached only at rounding level, never by real ratios.
UNCAPPED_RATIO_LIMIT = 1e30


def normalize_embeddings(embeddings: ArrayLike, eps: float = 1e-12) -> jax.Array:
  """Rows of ``embeddings [V, k]`` divided by their L2 norm (float32, under stop-gradient).

  A zero row stays zero (its cosine cost to everything is 1).

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> print(emoloss.normalize_embeddings(jnp.array([[3.0, 4.0], [0.0, 2.0]])))
    [[0.6 0.8]
     [0.  1. ]]
  """
  embeddings = jnp.asarray(embeddings, jnp.float32)
  norms = jnp.linalg.norm(embeddings, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(embeddings / jnp.maximum(norms, eps))


def _check_embeddings(cost_embeddings: ArrayLike, num_classes: int) -> None:
  shape = np.shape(cost_embeddings)
  if len(shape) != 2 or shape[0] != num_classes:
    raise ValueError(
        f"`cost_embeddings` must have shape [num_classes, k] = [{num_classes}, k] to match the "
        f"logits' last axis (got {shape})."
    )
  _validation.check_logits(cost_embeddings, name="cost_embeddings", min_rank=2)


def _renamed_embeddings(loss: Callable) -> Callable:
  """Accepts 0.2's keyword ``embeddings=`` for ``cost_embeddings=``, with a DeprecationWarning."""

  @functools.wraps(loss)
  def wrapper(*args, **kwargs):
    if "embeddings" in kwargs:
      if "cost_embeddings" in kwargs:
        raise TypeError(f"{loss.__name__}() got both `cost_embeddings` and its old name "
                        "`embeddings`.")
      warnings.warn(f"emoloss.{loss.__name__}'s keyword `embeddings` is deprecated and will be "
                    "removed; use `cost_embeddings`.", DeprecationWarning, stacklevel=2)
      kwargs["cost_embeddings"] = kwargs.pop("embeddings")
    return loss(*args, **kwargs)

  return wrapper


@_renamed_embeddings
def emo_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""EMO: earth mover distance from ``softmax(z)`` to the target, cost ``1 - cos(e_i, e_j)``.

  With ``Ê`` the L2-normalised rows of the frozen ``cost_embeddings`` and a one-hot target, the only
  transport plan moves all predicted mass to ``y``, so

  .. math::
    \mathrm{EMO}(p, y) = \sum_i p_i (1 - \hat e_i \cdot \hat e_y) = 1 - (p \hat E) \cdot \hat e_y

  computed as an ``[N, V] @ [V, k]`` product and a row-wise dot product: ``O(N V k)`` time and
  ``O(N k)`` memory beyond ``p``. No ``[V, V]`` cost matrix (nor ``[N, N]``) is ever built. For a
  soft target ``q`` the loss is the product-plan upper bound ``1 - (p \hat E) \cdot (q \hat E)``.
  ``cost_embeddings`` is held constant (stop-gradient), e.g. a frozen copy of a pretrained LM head.
  Values lie in ``[0, 2]`` (in ``[0, 1]`` when all cosines are non-negative).

  Labels are not shifted: for a causal LM pass ``logits[:, :-1]`` and ``tokens[:, 1:]``.

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]`` or soft labels ``[..., V]``.
    cost_embeddings: ``[V, k]`` cost embeddings (normalised here, no gradient).
    where: optional boolean mask ``[...]``; masked examples give exactly 0.

  Returns:
    ``[...]`` float32 per-example EMO.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> embeddings = jnp.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])  # classes 0 and 1 are close
    >>> logits = jnp.array([[0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])        # mass on class 1, then class 2
    >>> print(emoloss.emo_loss(logits, jnp.array([0, 0]), embeddings))
    [0.2724 1.8279]

  References:
    Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language
    Modeling", ICLR 2024 (arXiv 2310.04691); Su Jianlin, "EMO:基于最优传输思想设计的分类损失函数"
    (EMO: a classification loss designed from optimal transport), kexue.fm/archives/9797,
    2023-10-13 (also on PaperWeekly).
  """
  logits, labels, integer, where = _validation.prepare_classification(logits, labels, where)
  _check_embeddings(cost_embeddings, logits.shape[-1])
  unit = normalize_embeddings(cost_embeddings)
  expected_embedding = jax.nn.softmax(logits, axis=-1) @ unit  # [..., k]
  target_embedding = jnp.take(unit, labels, axis=0) if integer else labels @ unit
  # 1 - cos can round below 0 (-1.2e-7 with duplicate cost rows); the maths says it is >= 0.
  loss = jnp.maximum(1.0 - jnp.sum(expected_embedding * target_embedding, axis=-1), 0.0)
  return _masking.mask_loss(loss, where)


def _check_mode(mode) -> None:
  if isinstance(mode, bool) or mode not in (1, 2):
    raise ValueError(f"`mode` must be the int 1 or 2 (got {mode!r}).")


def _check_max_ratio(max_ratio) -> None:
  if max_ratio is not None:
    _validation.check_scalar_range(max_ratio, "max_ratio", low=0.0, low_inclusive=False)


def _stopped_ratio(numerator: jax.Array, denominator: jax.Array, limit) -> jax.Array:
  """``sg(numerator / denominator)`` clipped to ``[0, limit]`` for ``numerator, denominator >= 0``;
  0 where the denominator is 0 (whatever the numerator: a ``0/0`` is never formed, so there is no
  guard constant for XLA to fold away)."""
  positive = denominator > 0
  ratio = jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, limit))


def emo_ce_combination(
    ce: ArrayLike, emo: ArrayLike, *, mode: int = 1, max_ratio: float | None = MODE1_MAX_RATIO
) -> jax.Array:
  r"""The published per-token mix of cross-entropy and EMO (EMOLoss, DRSY/EMO).

  * ``mode=1`` (default, "more weight on MLE"):
    ``½ (min(sg(CE / EMO), max_ratio) · EMO + CE)``
  * ``mode=2`` ("more weight on EMO"): ``sg(EMO / CE) · CE + EMO``

  The ratio is computed per token (not per batch) and held constant, so it only rescales the
  EMO (mode 1) or CE (mode 2) gradient of each token to the other term's magnitude. Reduce with a
  masked mean over tokens afterwards, as the authors do.

  Which recipe uses which cap (mode 1): the packaged loss (PyPI ``EMOLoss``) and the authors'
  LLaMA continual fine-tuning script cap the ratio at 3 (``max_ratio=3.0``, the default); the
  paper's language-modelling runs (DRSY/EMO ``language_modeling/gpt2.py``, mode ``emo``) use the
  same mix uncapped (``max_ratio=None``).

  Numerics (differences from the published code, same values wherever that code is finite): CE
  and EMO are clamped at 0 (in float32 they can round slightly below 0, which would make the
  ratio a huge negative number and flip the EMO gradient); the stop-gradient ratio is clipped to
  ``[0, max_ratio]`` (``[0, 1e30]`` uncapped) and is 0 where its denominator is 0. The published
  ``+ 1e-10`` guard is not used: XLA folds ``(1 - s) + 1e-10`` into ``1 - s`` under ``jit``, so
  confidently-correct tokens (``p_y`` rounding to 1) gave ``0/0 = NaN``. A zero denominator only
  multiplies a zero term, so the mix's value is unchanged. In mode 2 at ``CE = inf`` (a ``-inf``
  target logit) the first term is its limit ``EMO``, held constant like the ratio:
  ``dL/dEMO = 1``, ``dL/dCE = 0``. A NaN in CE or EMO gives NaN.

  Args:
    ce: ``[...]`` per-token cross-entropy.
    emo: ``[...]`` per-token EMO (same shape).
    mode: 1 or 2.
    max_ratio: cap of the mode-1 ratio ``CE/EMO`` (positive), or ``None`` for uncapped. Ignored
      in mode 2, whose ratio ``EMO/CE`` is uncapped as published.

  Returns:
    ``[...]`` float32 per-token combined loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> ce, emo = jnp.array([2.0, 0.5]), jnp.array([0.4, 0.1])
    >>> print(emoloss.emo_ce_combination(ce, emo, mode=1))
    [1.6 0.4]
    >>> print(emoloss.emo_ce_combination(ce, emo, mode=2))
    [0.8 0.2]

  References:
    Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language
    Modeling", ICLR 2024 (arXiv 2310.04691); code DRSY/EMO (``language_modeling/gpt2.py``) and
    PyPI ``EMOLoss``.
  """
  _check_mode(mode)
  _check_max_ratio(max_ratio)
  if np.shape(ce) != np.shape(emo):
    raise ValueError(f"`ce` and `emo` must have the same shape (got {np.shape(ce)}, "
                     f"{np.shape(emo)}).")
  ce = jnp.maximum(jnp.asarray(ce, jnp.float32), 0.0)
  emo = jnp.maximum(jnp.asarray(emo, jnp.float32), 0.0)
  if mode == 1:
    limit = UNCAPPED_RATIO_LIMIT if max_ratio is None else max_ratio
    return 0.5 * (_stopped_ratio(ce, emo, limit) * emo + ce)
  # CE = inf (a -inf target logit): sg(EMO/CE) · CE tends to sg(EMO), not 0 · inf; its derivative
  # in EMO is 0, as it is at every finite CE, so that dL/dEMO = 1 there too.
  weighted_ce = jnp.where(jnp.isinf(ce), jax.lax.stop_gradient(emo),
                          _stopped_ratio(emo, ce, UNCAPPED_RATIO_LIMIT) * ce)
  return weighted_ce + emo


@_renamed_embeddings
def emo_ce_loss(
    logits: ArrayLike,
    labels: ArrayLike,
    cost_embeddings: ArrayLike,
    *,
    mode: int = 1,
    max_ratio: float | None = MODE1_MAX_RATIO,
    where: ArrayLike | None = None,
) -> jax.Array:
  r"""EMO combined with cross-entropy per token, as published (see :func:`emo_ce_combination`).

  .. math::
    \text{mode 1: } L = \tfrac12\big(\min(\mathrm{sg}(\mathrm{CE}/\mathrm{EMO}), r_{\max})
      \cdot \mathrm{EMO} + \mathrm{CE}\big), \qquad
    \text{mode 2: } L = \mathrm{sg}(\mathrm{EMO}/\mathrm{CE})\,\mathrm{CE} + \mathrm{EMO}

  ``max_ratio`` ``r_max`` = 3 is the packaged loss (EMOLoss) and the LLaMA script; ``None``
  (uncapped) is the paper's language-modelling runs (DRSY/EMO ``gpt2.py``, mode ``emo``).

  Differences from the authors' packaged loss, deliberately: labels are not shifted inside (the
  caller passes ``logits[:, :-1]``, ``tokens[:, 1:]``), the one-hot target needs no ``1e-15``
  smoothing (the low-rank form has no ``log`` of it), and the reduction (masked mean over tokens)
  is left to the caller. Cross-entropy is ``optax.losses.softmax_cross_entropy*``.

  Args:
    logits: ``[..., V]`` unnormalised scores (any float dtype; computed in float32).
    labels: integer class indices ``[...]`` or soft labels ``[..., V]``.
    cost_embeddings: ``[V, k]`` frozen cost embeddings, e.g. a copy of the pretrained LM head.
    mode: 1 ("more weight on MLE", default) or 2 ("more weight on EMO").
    max_ratio: cap of the mode-1 ratio (default 3.0), ``None`` for uncapped.
    where: optional boolean mask ``[...]`` (padding); masked tokens give exactly 0.

  Returns:
    ``[...]`` float32 per-token loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> import emoloss
    >>> jnp.set_printoptions(precision=4)
    >>> embeddings = jnp.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]])
    >>> logits = jnp.array([[0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    >>> print(emoloss.emo_ce_loss(logits, jnp.array([0, 0]), embeddings))
    [1.9561 3.0949]

  References:
    Ren et al., "EMO: Earth Mover Distance Optimization for Auto-Regressive Language
    Modeling", ICLR 2024 (arXiv 2310.04691); code DRSY/EMO (PyPI ``EMOLoss``).
  """
  _check_mode(mode)
  _check_max_ratio(max_ratio)
  logits, labels, integer, where = _validation.prepare_classification(logits, labels, where)
  ce = _kernels.softmax_cross_entropy(logits, labels, integer)
  emo = emo_loss(logits, labels, cost_embeddings)
  return _masking.mask_loss(emo_ce_combination(ce, emo, mode=mode, max_ratio=max_ratio), where)
