"""The known-oracle experiment (python -m benchmarks.oracle) end to end, in its --quick mode.

One quick run (module fixture) is checked for its files and for properties that must hold
whatever the numbers: exact KLs are >= 0, training with CE lowers the forward KL of the
initialisation, the early-stopping rule ends every run before its step cap (the quick students
overfit 128 training samples), and the oracle's PPL_oracle on its own samples equals its PPL_test
within sampling error (both estimate the oracle's entropy rate).
"""

import json
import math
from pathlib import Path

import pytest

from benchmarks.lm.stats import VERDICTS
from benchmarks.oracle import report, run

pytestmark = pytest.mark.experiments  # end-to-end run: second test lane


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("oracle")
  args = ["--quick", "--out", str(out / "cache"), "--json", str(out / "results.json"),
          "--no-progress"]
  results = run.main(args)
  return out, results


def test_writes_json_markdown_and_png(quick):
  out, results = quick
  stored = json.loads(Path(out / "results.json").read_text())
  assert stored["claims"] == json.loads(json.dumps(results["claims"]))
  assert Path(out / "results.png").stat().st_size > 1000
  markdown = Path(out / "results.md").read_text()
  assert "PPL_oracle" in markdown and "results.png" in markdown
  assert {c["verdict"] for c in results["claims"]} <= {*VERDICTS, "unstable (non-finite training)"}
  assert "## Vocabulary sweep" in markdown and "## Convergence" in markdown
  for key in ("per_regime", "comparisons", "claims", "convergence", "vocab_trend"):
    assert key in stored


def test_exact_divergences_are_non_negative(quick):
  _, results = quick
  for per_seed in results["per_regime"].values():
    for models in per_seed:
      for name, metrics in models.items():
        if "forward_kl" not in metrics:
          continue
        for key in ("forward_kl", "reverse_kl", "forward_kl_on_student", "reverse_kl_on_oracle",
                    "emo_gap_oracle_prefixes", "emo_gap_student_prefixes"):
          assert metrics[key] >= -1e-6, (name, key, metrics[key])
        for key in ("tv_oracle_prefixes", "tv_student_prefixes"):
          assert 0.0 <= metrics[key] <= 1.0 + 1e-6, (name, key)


def test_training_with_ce_lowers_the_forward_kl(quick):
  _, results = quick
  for per_seed in results["per_regime"].values():
    for models in per_seed:
      assert models["ce"]["forward_kl"] < 0.9 * models["untrained"]["forward_kl"]
      assert models["ce"]["ppl_test"] < models["untrained"]["ppl_test"]


def test_the_convergence_rule_stops_and_is_summarised(quick):
  _, results = quick
  cap = results["config"]["student_steps"]
  for vocab, sweep in results["vocab_sweep"].items():
    for per_seed in sweep["per_regime"].values():
      for models in per_seed:
        for name, metrics in models.items():
          if name == "untrained":
            continue
          assert metrics["stopped_early"] and metrics["steps_run"] < cap, (vocab, name)
          assert metrics["steps"] <= metrics["steps_run"]
          assert min(metrics["val_curve"]) == metrics["best_val_nll"]
  convergence = results["convergence"]["same"]
  assert set(convergence) == {str(v) for v in (320, 300)}
  for row in convergence.values():
    assert row["ce_ppl_test"] > 0 and row["oracle_ppl_test"] > 0 and row["steps"] > 0


def test_vocab_trend_and_sharpening_diagnostic(quick):
  _, results = quick
  trend = results["vocab_trend"]
  assert trend["vocab_sizes"] == [300, 320] and trend["n"] == 2
  assert trend["low"] <= trend["slope"] <= trend["high"]
  assert trend["verdict"] in VERDICTS
  for per_seed in results["per_regime"].values():
    for models in per_seed:
      for metrics in models.values():
        if "entropy_gap" in metrics:  # H(Q) - H(P) and log PPL_oracle = H(Q) + KL(Q||P)
          assert metrics["entropy_q_student_prefixes"] >= 0
          gap = metrics["entropy_q_student_prefixes"] - metrics["entropy_p_student_prefixes"]
          assert abs(metrics["entropy_gap"] - gap) < 1e-9
          # the cross-entropy under P of Q's samples estimates H(Q) + KL(Q||P)
          identity = metrics["entropy_q_student_prefixes"] + metrics["reverse_kl"]
          assert abs(metrics["log_ppl_oracle"] - identity) < 6 * metrics["log_ppl_oracle_se"]


def test_the_oracle_scores_itself_within_sampling_error(quick):
  _, results = quick
  self_ = results["oracle"]["self"]
  error = math.hypot(self_["log_ppl_test_se"], self_["log_ppl_oracle_se"])
  assert error > 0
  assert abs(self_["log_ppl_oracle"] - self_["log_ppl_test"]) < 4 * error
  for key in ("forward_kl", "reverse_kl", "tv_oracle_prefixes", "emo_gap_student_prefixes"):
    assert abs(self_[key]) < 1e-5


def test_claims_use_the_declared_margins(quick):
  _, results = quick
  for claim in results["claims"]:
    assert claim["margin"] == report.MARGINS[claim["metric"]].margin


def test_rejects_bad_arguments(capsys):
  with pytest.raises(SystemExit):
    run.main(["--quick", "--objectives", "ce,nope"])
  assert "--objectives" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    run.main(["--quick", "--seeds", "0"])


def test_quick_run_of_the_small_regime_alone(tmp_path, capsys):
  """`--regimes small` (one seed per objective in --quick): it reports instead of failing with
  KeyError: 'same' after training; one seed gives no interval and 'inconclusive at this size';
  no vocabulary sweep (it runs the `same` regime); the run lists the files it wrote."""
  json_path = tmp_path / "small.json"
  results = run.main(["--quick", "--regimes", "small", "--out", str(tmp_path / "cache"),
                      "--json", str(json_path), "--no-progress"])
  assert list(results["per_regime"]) == ["small"] and results["claims"]
  for claim in results["claims"]:
    assert claim["n"] == 1 and claim["verdict"] == "inconclusive at this size"
    assert math.isnan(claim["low"]) and math.isnan(claim["high"])
  assert results["vocab_trend"]["verdict"].startswith("not testable here")
  assert results["vocab_comparisons"] == {}
  printed = capsys.readouterr().out
  for suffix in (".json", ".md", ".png"):
    path = json_path.with_suffix(suffix)
    assert path.stat().st_size > 0 and str(path) in printed
  assert "inconclusive at this size" in (tmp_path / "small.md").read_text()
