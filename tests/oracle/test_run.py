"""The known-oracle experiment (python -m benchmarks.oracle) end to end, in its --quick mode.

One quick run (module fixture) is checked for its files and for properties that must hold
whatever the numbers: exact KLs are >= 0, training with CE lowers the forward KL of the
initialisation, and the oracle's PPL_oracle on its own samples equals its PPL_test within
sampling error (both estimate the oracle's entropy rate).
"""

import json
import math
from pathlib import Path

import pytest

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
  assert {c["verdict"] for c in results["claims"]} <= {
      "holds", "does not hold", "inconclusive at this size", "unstable (non-finite training)"}


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
