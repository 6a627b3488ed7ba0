"""Decisions of the LM experiment's orchestration (benchmarks/lm/evaluation.py) on hand-made
inputs: MixCE's η within noise of the best, and the ablation arms' distances."""

import math

import numpy as np
import pytest

from benchmarks.lm import evaluation


def _scores(values):
  return {f"{eta:g}": {"mauve_tfidf": float(np.mean(runs)), "runs": list(runs)}
          for eta, runs in values.items()}


def test_choose_eta_takes_the_smallest_eta_within_two_sigma_of_the_best():
  scores = _scores({0.1: (0.80, 0.82), 0.3: (0.84, 0.86), 0.5: (0.87, 0.85), 0.9: (0.88, 0.90)})
  # σ from the run pairs: sqrt(mean((a - b)^2 / 2)) = sqrt(0.0002) ≈ 0.0141
  chosen = evaluation.choose_eta(scores, "mauve_tfidf")
  sigma = math.sqrt(np.mean([0.02 ** 2 / 2] * 4))
  assert chosen["noise_one_run"] == pytest.approx(sigma)
  assert chosen["best"] == pytest.approx(0.89)
  # within 0.89 - 2σ = 0.8617: η = 0.5 (0.86) is not, 0.9 is; η = 0.3 (0.85) is not
  assert chosen["within_noise"] == [0.9] and chosen["eta"] == 0.9
  noisy = _scores({0.1: (0.70, 0.90), 0.5: (0.80, 0.82), 0.9: (0.85, 0.83)})
  assert evaluation.choose_eta(noisy, "mauve_tfidf")["eta"] == 0.1  # all within noise


def test_ablation_distances_relative_to_the_fine_tuning_step_and_sample_agreement():
  base = {"w": np.zeros(4)}
  states = {"emo": {"w": np.array([1.0, 0.0, 0.0, 0.0])},
            "emo_own": {"w": np.array([1.0, 0.0, 0.0, 0.001])},
            "emo_random": {"w": np.array([0.0, 1.0, 0.0, 0.0])}}
  tokens = {"emo": np.array([[1, 2, 3], [4, 5, 6]]), "emo_own": np.array([[1, 2, 3], [4, 5, 6]]),
            "emo_random": np.array([[1, 2, 0], [4, 5, 6]])}
  out = evaluation.ablation_distances(states, base, tokens, ("emo_own", "emo_random"))
  assert out["emo_own"]["relative_distance"] == pytest.approx(0.001 / math.sqrt(1 + 1e-6))
  assert out["emo_own"]["identical_samples"] == 1.0 and out["emo_own"]["coincides"]
  assert out["emo_random"]["relative_distance"] == pytest.approx(math.sqrt(2))
  at_base = evaluation.ablation_distances({"emo": base, "emo_own": base}, base, {}, ("emo_own",))
  assert at_base["emo_own"]["relative_distance"] == 0.0 and at_base["emo_own"]["coincides"]
  assert out["emo_random"]["token_agreement"] == pytest.approx(5 / 6)
  assert out["emo_random"]["identical_samples"] == 0.5 and not out["emo_random"]["coincides"]
  unknown = evaluation.ablation_distances(states, base, {}, ("emo_random",))["emo_random"]
  assert unknown["identical_samples"] is None and not unknown["coincides"]
