"""Every experiment script behaves like a tool: each option of its ``--help`` has a help text
with its default, and a ``--quick`` run never writes into ``benchmarks/results/`` (refused
before any work when asked to; its default output folder lies elsewhere)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from benchmarks import outputs

pytestmark = pytest.mark.experiments  # imports the experiments' dependencies: second test lane

ROOT = Path(__file__).resolve().parents[1]
CLASSIFICATION = ("accuracy_vs_ce", "exact_toy", "flooding", "long_tail", "rare_f1", "tiger")


def _fused_bench():
  spec = importlib.util.spec_from_file_location("fused_bench", ROOT / "benchmarks" /
                                                "fused_bench.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _mains():
  from benchmarks.lm import run as lm_run
  from benchmarks.oracle import run as oracle_run
  yield "lm", lm_run.main
  yield "oracle", oracle_run.main
  for name in CLASSIFICATION:
    yield name, importlib.import_module(f"benchmarks.classification.{name}").main
  yield "fused_bench", _fused_bench().main


def _option_blocks(text: str) -> dict[str, str]:
  """``{option: its help text}`` of an argparse help screen."""
  blocks: dict[str, str] = {}
  current = None
  for line in text.split("options:", 1)[1].splitlines():
    found = re.match(r"  (-\S+)", line)
    if found:
      current = found.group(1).rstrip(",")
      blocks[current] = line
    elif current and line.startswith("    "):
      blocks[current] += " " + line.strip()
  return blocks


@pytest.mark.parametrize("name,main", list(_mains()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help_text_and_its_default(name, main, capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(["--help"])
  assert exit_info.value.code == 0
  blocks = _option_blocks(capsys.readouterr().out)
  assert len(blocks) > 3, name
  for option, text in blocks.items():
    if option == "-h":
      continue
    assert "default:" in text, (name, option, text)
    assert "default: None" not in text, (name, option, text)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_a_quick_classification_run_refuses_the_committed_results_before_training(
    name, tmp_path, capsys):
  main = importlib.import_module(f"benchmarks.classification.{name}").main
  with pytest.raises(SystemExit) as exit_info:
    main(["--quick", "--out", outputs.RESULTS])
  assert exit_info.value.code == 2 and "benchmarks/results" in capsys.readouterr().err
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(SystemExit) as exit_info:
    main(["--quick", "--out", str(tmp_path / "a_file")])
  assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_the_quick_classification_folder_is_named_and_not_the_committed_results():
  import argparse

  from benchmarks.classification import common
  folder = common.output_dir(argparse.Namespace(out=None, quick=True))
  assert folder == common.QUICK_DIR and folder.name == "classification_quick"
  assert not str(folder.resolve()).startswith(str(Path(outputs.RESULTS).resolve()))


def test_fused_bench_quick_refuses_the_committed_results_before_timing(capsys):
  with pytest.raises(SystemExit) as exit_info:
    _fused_bench().main(["--quick", "--output", str(Path(outputs.RESULTS) / "fused_cpu")])
  assert exit_info.value.code == 2 and "benchmarks/results" in capsys.readouterr().err
  args = type("Args", (), {"scaling": False, "options": False, "dtype": "float32",
                           "quick": True, "output": None})()
  stem = _fused_bench().output_stem(args)
  assert stem.parent.name == "fused_bench_quick"
