"""Smoke run of benchmarks/fused_bench.py --quick: it completes, and its memory column shows the
fused path's point (checked from XLA's compiled memory analysis, not from timings)."""

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.experiments  # end-to-end --quick runs: second test lane

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fused_bench.py"


def _load_script():
  spec = importlib.util.spec_from_file_location("fused_bench", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def assert_timing_columns(row, name, naive):
  """The time columns of one method are what its timings give: 0 < fastest <= median call,
  ratios to naive CE of the medians and of the fastest calls, GFLOP/s of its matmul work over its
  fastest call, and the fraction of the plain matmul's GFLOP/s timed in the same rounds."""
  m = row["methods"][name]
  assert 0 < m["seconds_min"] <= m["seconds_median"] < float("inf"), (name, m)
  assert m["time_vs_naive_ce"] == pytest.approx(m["seconds_median"] / naive["seconds_median"])
  assert m["min_time_vs_naive_ce"] == pytest.approx(m["seconds_min"] / naive["seconds_min"])
  flops = _load_script().matmul_flops(name, row["N"], row["V"], row["d"], row["k"])
  assert m["gflops"] == pytest.approx(flops / m["seconds_min"] / 1e9), name
  assert m["fraction_of_matmul"] == pytest.approx(m["gflops"] / row["matmul_gflops"]), name


def test_quick_benchmark_writes_results_and_fused_memory_is_small(tmp_path):
  stem = tmp_path / "fused"
  _load_script().main(["--quick", "--output", str(stem)])
  result = json.loads(stem.with_suffix(".json").read_text())
  assert "| fused CE+EMO |" in stem.with_suffix(".md").read_text()
  timed = [row for row in result["rows"] if row["timed"]]
  compiled_only = [row for row in result["rows"] if not row["timed"]]
  assert timed and compiled_only
  for row in timed:  # every method ran, and its columns are its own timings' ratios
    naive = row["methods"]["naive CE"]
    for name in ("naive CE", "naive CE+EMO", "fused CE", "fused CE+EMO", "one-pass CE",
                 "one-pass CE+EMO"):
      assert_timing_columns(row, name, naive)
    assert naive["time_vs_naive_ce"] == 1.0
  for row in result["rows"]:
    memory = {name: m["temp_bytes"] for name, m in row["methods"].items() if "temp_bytes" in m}
    logits_bytes = row["N"] * row["V"] * 4
    # The naive paths hold at least the [N, V] float32 logits; the fused ones far less.
    assert memory["naive CE"] >= logits_bytes and memory["naive CE+EMO"] >= logits_bytes
    assert memory["fused CE"] < 0.25 * memory["naive CE"], row
    assert memory["fused CE+EMO"] < 0.25 * memory["naive CE+EMO"], row
  big = compiled_only[-1]["methods"]
  assert big["fused CE+EMO"]["temp_bytes"] <= 0.05 * big["naive CE+EMO"]["temp_bytes"]
  # One-pass: a few [token chunk, V] blocks and the [V, d] ∂W accumulator, below the logits.
  for name in ("one-pass CE", "one-pass CE+EMO"):
    reference = big["naive CE+EMO" if "EMO" in name else "naive CE"]["temp_bytes"]
    assert big[name]["temp_bytes"] < 0.5 * reference, name


def test_quick_scaling_run_with_the_gpu_command_options(tmp_path):
  """The scaling grid with the options of the GPU command (--backend, --dtype bfloat16)."""
  stem = tmp_path / "scaling"
  _load_script().main(["--quick", "--scaling", "--backend", "cpu", "--dtype", "bfloat16",
                       "--output", str(stem)])
  result = json.loads(stem.with_suffix(".json").read_text())
  assert result["scaling"] and len(result["rows"]) == 2
  assert result["dtype"] == "bfloat16" and result["platform"] == "cpu" and result["device"]
  for row in result["rows"]:
    assert set(row["methods"]) == {"naive CE", "naive CE+EMO", "one-pass CE", "one-pass CE+EMO"}
    for name in row["methods"]:
      assert_timing_columns(row, name, row["methods"]["naive CE"])
  assert "| one-pass CE+EMO |" in stem.with_suffix(".md").read_text()


def test_quick_options_run(tmp_path):
  """--options: every option method runs beside its baseline (the ratios' units are 1)."""
  stem = tmp_path / "options"
  _load_script().main(["--quick", "--options", "--memory-sizes", "--output", str(stem)])
  result = json.loads(stem.with_suffix(".json").read_text())
  module = _load_script()
  (row,) = result["rows"]
  assert set(row["methods"]) == set(module.OPTION_METHODS)
  for name, base in module.OPTION_BASE.items():
    m, b = row["methods"][name], row["methods"][base]
    assert m["time_vs_base"] == pytest.approx(m["seconds_median"] / b["seconds_median"]), name
    assert m["min_time_vs_base"] == pytest.approx(m["seconds_min"] / b["seconds_min"]), name
    assert b["time_vs_base"] == 1.0, base
  assert "| one-pass CE frozen head |" in stem.with_suffix(".md").read_text()
