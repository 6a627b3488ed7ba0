"""The known-oracle experiment (python -m benchmarks.oracle) end to end, in its --quick mode.

One quick run (module fixture) is checked for its files and for properties that must hold
whatever the numbers: exact KLs are >= 0, training with CE lowers the forward KL of the
initialisation, every student runs its budget and keeps its best validation checkpoint, a
worker process fills the cache the main run reads, and the oracle's PPL_oracle on its own samples equals its PPL_test
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
      start = models.get("untrained", models.get("base"))  # from scratch / pretrained
      assert models["ce"]["forward_kl"] < 0.99 * start["forward_kl"]
      assert models["ce"]["ppl_test"] < start["ppl_test"]


def test_every_student_runs_its_budget_and_keeps_its_best_checkpoint(quick):
  _, results = quick
  config = results["config"]
  for vocab, sweep in results["vocab_sweep"].items():
    for regime, per_seed in sweep["per_regime"].items():
      budget = config["student_steps"] if regime == "same" else config["small_student_steps"]
      for models in per_seed:
        for name, metrics in models.items():
          if name == "untrained":
            continue
          assert metrics["steps_run"] == budget, (vocab, name)
          assert len(metrics["val_curve"]) == budget // config["eval_every"] + 1
          assert metrics["steps"] in metrics["val_steps"]
          assert min(metrics["val_curve"]) == metrics["best_val_nll"]
          # the selected step is the one with the lowest validation NLL
          assert metrics["val_curve"][metrics["val_steps"].index(metrics["steps"])] == min(
              metrics["val_curve"])
  convergence = results["convergence"]["same"]
  assert set(convergence) == {str(v) for v in (320, 300)}
  for row in convergence.values():
    assert row["ce_ppl_test"] > 0 and row["oracle_ppl_test"] > 0 and row["steps"] > 0
    assert 0.0 <= row["selected_in_last_quarter"] <= 1.0 and not row["stopped_early"]
  main = convergence[str(config["vocab_size"])]
  assert main["continued_steps"] == [2 * s for s in main["selected_steps"]]


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


def _finetune_runs(results):
  for regime, per_seed in results["per_regime"].items():
    if regime.startswith(report.FINETUNE_PREFIX):
      for models in per_seed:
        yield regime, models


def test_finetuning_starts_from_the_pretrained_checkpoint_bit_for_bit(quick):
  """Every fine-tuned student of a seed starts from the very parameters the pretrained student
  was evaluated with (equal SHA-256 of every leaf) and so has the same step-0 validation NLL."""
  _, results = quick
  runs = list(_finetune_runs(results))
  assert runs
  for regime, models in runs:
    tuned = [n for n in models if n != "base"]
    assert tuned[0] == "ce" and len(tuned) >= 2
    for name in tuned:
      assert models[name]["start_digest"] == models["base"]["digest"], (regime, name)
      assert models[name]["val_curve"][0] == models[tuned[0]]["val_curve"][0]
      assert models[name]["steps"] <= models[name]["steps_run"]
  digests = {models["base"]["digest"] for _, models in runs}
  assert len(digests) == len(runs)  # each seed pretrains its own student


def test_finetuning_regime_reports_the_shift_and_its_checks(quick):
  _, results = quick
  finetune = results["finetune"]
  target = finetune["target"]
  assert target["kl_p_p0"] > 0 and target["kl_p0_p"] > 0  # P is shifted from P0
  for regime, info in finetune.items():
    if regime == "target":
      continue
    assert info["kl_p_p0"] == target["kl_p_p0"] and info["seeds"] == 2
    row = results["convergence"][regime][str(results["config"]["vocab_size"])]
    assert row["base_ce_ratio"] > 1.0  # fine-tuning on P lowers PPL_test against P
    for metric in ("reverse_kl", "forward_kl"):
      check = row[f"continued_{metric}_drop"]
      assert check["n"] == 2 and check["low"] <= check["mean"] <= check["high"]
    assert row["continued_steps"] == [2 * s for s in row["selected_steps"]]
  for regime in ("same",):  # the from-scratch regime's continued check
    row = results["convergence"][regime][str(results["config"]["vocab_size"])]
    assert row["continued_steps"] == [2 * s for s in row["selected_steps"]]
    assert "continued_reverse_kl_drop" in row and "paired_steps" in row
  claims = {(c["regime"], c["objective"], c["metric"]) for c in results["claims"]}
  assert ("ft_d32", "emo", "reverse_kl") in claims and ("ft_d32", "tailr_open",
                                                        "log_ppl_oracle") in claims


def test_temperature_curve_at_one_equals_the_untempered_student(quick):
  """CE's temperature curve at T = 1 is the CE student itself: every exact metric equal bit for
  bit (same samples, logits divided by 1.0); the matched temperatures give equal entropies."""
  _, results = quick
  for regime, curves in results["temperature_curves"].items():
    for models, curve in zip(results["per_regime"][regime], curves):
      at_one = [p for p in curve["curve"] if p["temperature"] == 1.0]
      assert len(at_one) == 1
      for key, value in models["ce"].items():
        if key in at_one[0] and isinstance(value, float):
          assert at_one[0][key] == value, (regime, key)
      entropies = [p["entropy_q_student_prefixes"] for p in curve["curve"]]
      assert entropies == sorted(entropies)  # a hotter CE is more entropic
      for name, matched in curve["matched"].items():
        assert matched["target_entropy"] == models[name]["entropy_q_student_prefixes"]
        if matched["inside_grid"]:  # interpolated on the grid, then evaluated exactly
          spread = max(entropies) - min(entropies)
          assert abs(matched["entropy_q_student_prefixes"] - matched["target_entropy"]) < 0.25 * spread
  control = results["temperature_control"]
  for regime, block in control.items():
    for name, entry in block["objectives"].items():
      assert entry["verdict"] in VERDICTS
      assert entry["reverse_kl"]["n"] == 2


def test_finetuning_kls_are_non_negative(quick):
  _, results = quick
  for regime, curves in results["temperature_curves"].items():
    points = [p for c in curves for p in (*c["curve"], *c["matched"].values())]
    for models in results["per_regime"][regime]:
      points += [m for m in models.values() if "forward_kl" in m]
    points += [c for c in results["continued"][regime] if c]
    for metrics in points:
      for key in ("forward_kl", "reverse_kl", "forward_kl_on_student", "reverse_kl_on_oracle"):
        assert metrics[key] >= -1e-6, (regime, key, metrics[key])


def test_results_keep_their_keys_and_add_the_new_ones(quick):
  _, results = quick
  for key in ("command", "config", "objectives", "data", "oracle", "machine", "per_regime",
              "vocab_sweep", "comparisons", "claims", "convergence", "vocab_comparisons",
              "vocab_trend", "wall_seconds", "finetune", "temperature_control"):
    assert key in results, key
  trend = results["vocab_trend"]
  assert trend["vocab_sizes"] == [300, 320]
  assert trend["oracles_per_vocab"] == {"300": 1, "320": 1}


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


def _metrics(results: dict) -> dict:
  """Every per-seed exact metric of a run (timings left out)."""
  keys = ("forward_kl", "reverse_kl", "ppl_test", "steps")
  regimes = {**results["per_regime"],
             **{f"v{v}": s["per_regime"]["same"] for v, s in results["vocab_sweep"].items()}}
  return {(regime, i, name): tuple(m.get(k) for k in keys)
          for regime, per_seed in regimes.items() for i, models in enumerate(per_seed)
          for name, m in models.items()}


def test_a_worker_fills_the_cache_that_the_main_run_then_reads(quick, tmp_path):
  """``--worker`` trains the fine-tuning regime and the sweep (seeds last first); the main run
  on that cache retrains none of them and gives the numbers of a run without a worker."""
  _, alone = quick
  cache = tmp_path / "cache"
  assert run.main(["--quick", "--worker", "--out", str(cache), "--no-progress"]) == {}
  made = {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")
          if p.name.startswith(("student_", "ft_"))}
  assert any(p.parent.name == "finetune" for p in made)
  assert any(p.parent.name == "v300" for p in made)
  assert not any(p.parent.name == "v320" for p in made)  # the main vocabulary: the main run's
  results = run.main(["--quick", "--out", str(cache), "--json", str(tmp_path / "r.json"),
                      "--no-progress"])
  assert {p: p.stat().st_mtime_ns for p in made} == made  # reused, not retrained
  assert _metrics(results) == _metrics(alone)
