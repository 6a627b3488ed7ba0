"""Metrics of a language model on held-out text and of its samples (pure functions).

* Token level, over a whole held-out stream (:func:`evaluate`): perplexity, next-token accuracy,
  and calibration -- expected calibration error over 15 equal-width bins of the top-1
  probability, multi-class Brier score ``Σ_v (p_v - [v = y])²``, and mean predictive entropy
  next to the mean negative log-likelihood (for a calibrated model the two agree: the entropy is
  the model's own expectation of its log-loss).
* Samples (:func:`text_statistics`): rep-n (share of repeated n-grams in a continuation, as in
  DRSY/EMO ``test_utils.repetitiveness``), corpus distinct-n, and the Zipf coefficient of the
  word frequencies; reported as gaps to the human continuations.
* Distribution level (:func:`mauve_score`): MAUVE (Pillutla et al., NeurIPS 2021) with the
  ``mauve-text`` package on precomputed features (nothing downloaded), averaged over k-means
  seeds; featurisers: :func:`benchmarks.lm.model.pooled_hidden_states` of a frozen model, and
  :func:`tfidf_featurizer` (code-token 1-3-gram TF-IDF reduced by TruncatedSVD; model-free,
  the primary one).
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ECE_BINS = 15


def token_statistics(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict:
  """Sums over the masked-in tokens of ``logits [..., V]`` / ``targets [...]``: ``tokens``,
  ``nll``, ``correct``, ``brier``, ``entropy`` and, per confidence bin, ``bin_count``,
  ``bin_confidence`` and ``bin_correct`` (``[ECE_BINS]``)."""
  weight = mask.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  probs = jnp.exp(log_probs)
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  confidence = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  brier = jnp.sum(probs * probs, axis=-1) - 2.0 * jnp.exp(target_log_prob) + 1.0
  entropy = -jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)
  bins = jnp.clip((confidence * ECE_BINS).astype(jnp.int32), 0, ECE_BINS - 1)
  one_hot = jax.nn.one_hot(bins, ECE_BINS) * weight[..., None]
  axes = tuple(range(one_hot.ndim - 1))
  return {
      "tokens": jnp.sum(weight),
      "nll": -jnp.sum(weight * target_log_prob),
      "correct": jnp.sum(weight * correct),
      "brier": jnp.sum(weight * brier),
      "entropy": jnp.sum(weight * entropy),
      "bin_count": jnp.sum(one_hot, axis=axes),
      "bin_confidence": jnp.sum(one_hot * confidence[..., None], axis=axes),
      "bin_correct": jnp.sum(one_hot * correct[..., None], axis=axes),
  }


def summarize_statistics(totals: dict) -> dict:
  """Per-token means of :func:`token_statistics` sums: ``perplexity``, ``nll``, ``accuracy``,
  ``ece``, ``brier``, ``entropy``, ``entropy_gap`` (entropy - nll) and ``tokens``."""
  n = float(totals["tokens"])
  count = np.asarray(totals["bin_count"], np.float64)
  gaps = np.abs(np.asarray(totals["bin_confidence"]) - np.asarray(totals["bin_correct"]))
  nll = float(totals["nll"]) / n
  entropy = float(totals["entropy"]) / n
  return {
      "perplexity": math.exp(nll), "nll": nll, "accuracy": float(totals["correct"]) / n,
      "ece": float(np.sum(gaps)) / n if count.sum() else 0.0,
      "brier": float(totals["brier"]) / n, "entropy": entropy, "entropy_gap": entropy - nll,
      "tokens": int(n),
  }


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _eval_batch(graphdef, state, windows: jax.Array, mask: jax.Array) -> dict:
  model = nnx.merge(graphdef, state)
  return token_statistics(model(windows[:, :-1]), windows[:, 1:], mask)


def evaluate(model, windows: np.ndarray, mask: np.ndarray, batch_size: int) -> dict:
  """:func:`summarize_statistics` of ``model`` on ``[n, T + 1]`` windows with a ``[n, T]``
  target mask (:func:`benchmarks.lm.data.covering_windows`), ``batch_size`` rows at a time."""
  graphdef, state = nnx.split(model)
  totals = None
  for start in range(0, len(windows), batch_size):
    part = _eval_batch(graphdef, state, windows[start:start + batch_size],
                       mask[start:start + batch_size])
    totals = part if totals is None else jax.tree.map(jnp.add, totals, part)
  return summarize_statistics(jax.device_get(totals))


# ----------------------------------------------------------------------------------------------
# Samples as text


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
  return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def rep_n(texts: Sequence[str], n: int) -> float:
  """Mean over texts of ``1 - unique n-grams / n-grams`` (words split on whitespace; a text
  with no n-gram counts 0): the share of repeated n-grams within one continuation."""
  values = []
  for text in texts:
    grams = _ngrams(text.split(), n)
    values.append(1.0 - len(set(grams)) / len(grams) if grams else 0.0)
  return float(np.mean(values))


def distinct_n(texts: Sequence[str], n: int) -> float:
  """Unique n-grams over all n-grams of all texts (corpus distinct-n; 0 with none)."""
  grams = [g for text in texts for g in _ngrams(text.split(), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def zipf_coefficient(texts: Sequence[str], top: int = 5000) -> float:
  """``s`` of the least-squares fit ``log f = c - s log r`` over the ``top`` most frequent
  words (rank ``r``, frequency ``f``; Holtzman et al., 2020); ``nan`` with fewer than 2."""
  counts = collections.Counter(w for text in texts for w in text.split())
  freqs = np.array(sorted(counts.values(), reverse=True)[:top], np.float64)
  if freqs.size < 2:
    return float("nan")
  ranks = np.arange(1, freqs.size + 1, dtype=np.float64)
  slope = np.polyfit(np.log(ranks), np.log(freqs), 1)[0]
  return float(-slope)


def text_statistics(texts: Sequence[str]) -> dict:
  """rep-2, rep-3, distinct-1/2/3 and the Zipf coefficient of continuations."""
  return {"rep2": rep_n(texts, 2), "rep3": rep_n(texts, 3), "distinct1": distinct_n(texts, 1),
          "distinct2": distinct_n(texts, 2), "distinct3": distinct_n(texts, 3),
          "zipf": zipf_coefficient(texts)}


# ----------------------------------------------------------------------------------------------
# MAUVE


CODE_TOKEN_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[^\sA-Za-z0-9_]"
"""Code tokens: identifiers and keywords, digit runs, and single punctuation characters."""


def code_tokens(text: str) -> list[str]:
  """The code tokens of ``text`` (:data:`CODE_TOKEN_PATTERN`), e.g. ``"self.fit(X, y=2)"`` ->
  ``self . fit ( X , y = 2 )``."""
  import re  # pylint: disable=import-outside-toplevel
  return re.findall(CODE_TOKEN_PATTERN, text)


def tfidf_featurizer(reference_texts: Sequence[str], dim: int, seed: int = 0,
                     tokens: str = "code") -> Callable[[Sequence[str]], np.ndarray]:
  """A model-free featuriser: 1-3-gram TF-IDF (sublinear tf) of code tokens
  (``tokens="code"``, :data:`CODE_TOKEN_PATTERN`) or of whitespace-separated words
  (``"words"``), fitted on ``reference_texts``, reduced to ``dim`` dimensions by TruncatedSVD,
  rows L2-normalised. Independent of every model under test."""
  from sklearn.decomposition import TruncatedSVD  # pylint: disable=import-outside-toplevel
  from sklearn.feature_extraction.text import (  # pylint: disable=import-outside-toplevel
      TfidfVectorizer,
  )
  if tokens not in ("code", "words"):
    raise ValueError(f"`tokens` must be 'code' or 'words' (got {tokens!r}).")
  pattern = CODE_TOKEN_PATTERN if tokens == "code" else r"\S+"
  vectorizer = TfidfVectorizer(ngram_range=(1, 3), token_pattern=pattern, lowercase=False,
                               sublinear_tf=True, min_df=2, max_features=50_000)
  matrix = vectorizer.fit_transform(reference_texts)
  svd = TruncatedSVD(n_components=min(dim, matrix.shape[1] - 1), random_state=seed)
  svd.fit(matrix)

  def featurize(texts: Sequence[str]) -> np.ndarray:
    features = svd.transform(vectorizer.transform(texts))
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)

  return featurize


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seeds: Sequence[int]) -> float:
  """MAUVE of ``q`` (model) against ``p`` (human) features, averaged over k-means ``seeds``
  (``mauve.compute_mauve`` on the CPU, default settings: about ``n / 10`` clusters, scaling
  factor 5)."""
  import mauve  # pylint: disable=import-outside-toplevel

  from benchmarks import outputs  # pylint: disable=import-outside-toplevel
  with outputs.counting_native_lines(FAISS_WARNING):  # counted; the run reports the total
    values = [mauve.compute_mauve(p_features=np.asarray(p_features, np.float64),
                                  q_features=np.asarray(q_features, np.float64), device_id=-1,
                                  verbose=False, seed=int(s)).mauve for s in seeds]
  return float(np.mean(values))


# faiss's k-means prints this for fewer than 39 training points per centroid (MAUVE's default of
# about n / 10 clusters gives 10 to 20 points each): counted, reported once per run.
FAISS_WARNING = "WARNING clustering"


def within_group_correlation(x: Sequence[float], y: Sequence[float], groups: Sequence) -> float:
  """Pearson correlation of ``x`` and ``y`` after subtracting each group's mean from both
  (e.g. the selected checkpoint step and MAUVE of the models of each seed: the seed's own level
  removed); ``nan`` without spread."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  groups = np.asarray(groups)
  dx, dy = x.copy(), y.copy()
  for g in np.unique(groups):
    at = groups == g
    dx[at] -= x[at].mean()
    dy[at] -= y[at].mean()
  denominator = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
  return float(np.sum(dx * dy) / denominator) if denominator > 0 else float("nan")
