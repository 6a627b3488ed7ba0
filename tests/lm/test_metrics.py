"""Metrics of the LM experiment (benchmarks/lm/metrics.py) against hand computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.lm import metrics


def test_rep_and_distinct_n_on_hand_made_texts():
  texts = ["a b a b a b", "x y z"]
  # "a b a b a b": bigrams ab ba ab ba ab -> 2 unique of 5; "x y z": 2 of 2.
  assert metrics.rep_n(texts, 2) == pytest.approx(((1 - 2 / 5) + 0.0) / 2)
  assert metrics.distinct_n(texts, 2) == pytest.approx(4 / 7)
  assert metrics.distinct_n(texts, 1) == pytest.approx(5 / 9)
  assert metrics.rep_n(["one"], 2) == 0.0 and metrics.distinct_n([""], 2) == 0.0


def test_zipf_coefficient_recovers_an_exact_power_law():
  counts = (1000 / np.arange(1, 60) ** 1.3).astype(int)
  text = " ".join(f"w{i} " * c for i, c in enumerate(counts) if c > 0)
  assert metrics.zipf_coefficient([text]) == pytest.approx(1.3, abs=0.03)


def test_token_statistics_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 2
  targets = rng.integers(0, 7, size=(3, 5))
  mask = rng.random((3, 5)) > 0.3
  got = metrics.summarize_statistics(metrics.token_statistics(
      jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)))
  z = logits[mask].astype(np.float64)
  y = targets[mask]
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  nll = -np.log(p[np.arange(len(y)), y])
  confidence, correct = p.max(-1), (p.argmax(-1) == y).astype(float)
  bins = np.minimum((confidence * 15).astype(int), 14)
  ece = sum(abs(confidence[bins == b].sum() - correct[bins == b].sum()) for b in range(15))
  one_hot = np.eye(7)[y]
  assert got["tokens"] == mask.sum()
  assert got["nll"] == pytest.approx(nll.mean(), rel=1e-5)
  assert got["accuracy"] == pytest.approx(correct.mean())
  assert got["ece"] == pytest.approx(ece / len(y), rel=1e-5)
  assert got["brier"] == pytest.approx(((p - one_hot) ** 2).sum(-1).mean(), rel=1e-5)
  entropy = -(p * np.log(p)).sum(-1).mean()
  assert got["entropy_gap"] == pytest.approx(entropy - nll.mean(), rel=1e-4)


def test_mauve_separates_shifted_features_and_tfidf_featurizer_shape():
  rng = np.random.default_rng(1)
  human = rng.normal(size=(200, 8))
  same = metrics.mauve_score(human[:100], human[100:], seeds=[0])
  shifted = metrics.mauve_score(human, rng.normal(size=(200, 8)) + 3.0, seeds=[0])
  assert same > 0.9 and shifted < 0.1
  featurize = metrics.tfidf_featurizer([f"word{i % 7} other{i % 5} x" for i in range(50)], 4)
  features = featurize(["word1 other2 x", "nothing known"])
  assert features.shape == (2, 4)
  np.testing.assert_allclose(np.linalg.norm(features[0]), 1.0, rtol=1e-6)
  assert np.all(features[1] == 0.0)  # no known n-gram: the zero vector


def test_code_tokens_split_identifiers_numbers_and_punctuation():
  assert metrics.code_tokens("self.fit(X, y=2)  # 10x") == [
      "self", ".", "fit", "(", "X", ",", "y", "=", "2", ")", "#", "10", "x"]


def test_code_token_tfidf_sees_punctuation_that_words_glue_together():
  """The same code spaced differently: one text of code tokens for the code-token featuriser,
  two different texts of words for the word one."""
  reference = [f"a.b(c) d = e[{i}] f(g, h)" for i in range(40)] + ["a . b ( c ) x , y"] * 40
  code = metrics.tfidf_featurizer(reference, 4, tokens="code")
  words = metrics.tfidf_featurizer(reference, 4, tokens="words")
  texts = ["a.b(c) f(g, h)", "a . b ( c ) f ( g , h )"]
  np.testing.assert_allclose(code(texts)[0], code(texts)[1], atol=1e-9)
  assert not np.allclose(words(texts)[0], words(texts)[1], atol=1e-3)
  with pytest.raises(ValueError, match="tokens"):
    metrics.tfidf_featurizer(reference, 4, tokens="bytes")


def test_within_group_correlation_removes_each_group_level():
  rng = np.random.default_rng(0)
  groups = np.repeat(np.arange(4), 10)
  x = rng.normal(size=40)
  y = -0.8 * x + 0.3 * rng.normal(size=40)
  plain = metrics.within_group_correlation(x, y, groups)
  shifted = metrics.within_group_correlation(x + 5 * groups, y - 3 * groups ** 2, groups)
  assert shifted == pytest.approx(plain, rel=1e-12)
  # the reference: Pearson correlation of the residuals of a one-way fit per group
  rx = x - np.array([x[groups == g].mean() for g in groups])
  ry = y - np.array([y[groups == g].mean() for g in groups])
  assert plain == pytest.approx(np.corrcoef(rx, ry)[0, 1], rel=1e-12)
  assert plain < -0.8
  assert np.isnan(metrics.within_group_correlation([1, 1], [2, 3], [0, 0]))


def test_the_step_correlation_is_none_in_the_results_when_every_run_selected_one_step():
  """Every run of a regime selected its last checkpoint: the correlation has no spread to
  measure, so the results hold ``None`` (valid JSON, not NaN) and the report says why."""
  from benchmarks.lm import report  # pylint: disable=import-outside-toplevel
  regime = {"objectives": ["ce", "emo"],
            "seeds": [{"seed": s, "records": {"ce": {"best_step": 160}, "emo": {"best_step": 160}}}
                      for s in (0, 1)]}
  flat = [{name: {f"{k}/unbiased": 0.1 * s + 0.01 * i for k in report.FEATURISERS}
           for i, name in enumerate(("ce", "emo"))} for s in (0, 1)]
  assert report.selected_step_correlation(regime, flat) == {k: None for k in report.FEATURISERS}
  regime["seeds"][1]["records"]["emo"]["best_step"] = 80
  correlations = report.selected_step_correlation(regime, flat)
  assert all(c is not None and -1 <= c <= 1 for c in correlations.values())
