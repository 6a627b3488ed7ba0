"""The known-oracle experiment's command line (benchmarks/oracle/run.py): refusals that must come
before any training, damaged caches, help texts. No training."""

import numpy as np
import pytest

from benchmarks.lm.config import UsageError
from benchmarks.oracle import run


@pytest.fixture
def no_training(monkeypatch):
  def started(*args, **kwargs):
    raise AssertionError("training started before the command line was refused")
  monkeypatch.setattr(run, "run_experiment", started)


def _refused(args, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    run.main(args)
  assert exit_info.value.code == 2
  return capsys.readouterr().err


@pytest.mark.parametrize("args,missing", [
    (["--objectives", "ce"], "regime same"),
    (["--regimes", "same,small", "--objectives", "tailr_open"], "regime small"),
])
def test_an_objective_subset_that_leaves_a_regime_with_ce_alone_is_refused_before_training(
    args, missing, tmp_path, capsys, no_training):
  error = _refused(["--quick", "--out", str(tmp_path / "c"), *args], capsys)
  assert f"leaves {missing} with CE alone" in error


@pytest.mark.parametrize("which", ["folder", "under_a_file", "sibling_folder"])
def test_an_unusable_json_path_is_refused_before_training(which, tmp_path, capsys, no_training):
  (tmp_path / "a_file").write_text("x")
  (tmp_path / "r.md").mkdir()
  json_path = {"folder": tmp_path, "under_a_file": tmp_path / "a_file" / "r.json",
               "sibling_folder": tmp_path / "r.json"}[which]
  error = _refused(["--quick", "--out", str(tmp_path / "c"), "--json", str(json_path)], capsys)
  assert "--json" in error


def test_quick_never_writes_into_the_committed_results(tmp_path, capsys, no_training):
  error = _refused(["--quick", "--out", str(tmp_path / "c"), "--json",
                    "benchmarks/results/oracle.json"], capsys)
  assert "benchmarks/results" in error


def test_regimes_without_same_run_no_vocabulary_sweep():
  """The sweep is of the `same` regime: `--regimes small` runs none (it used to train the
  sweep and then fail with KeyError: 'same')."""
  config = run.config_from_args(run.build_parser().parse_args(["--quick", "--regimes", "small"]))
  assert config.regimes == ("small",) and config.sweep_vocab_sizes == ()
  assert config.vocab_sizes() == (config.vocab_size,)


def test_a_truncated_sample_cache_names_the_file_and_the_remedy(tmp_path):
  path = tmp_path / "samples.npz"
  np.savez(path, train=np.zeros((4, 3), np.int32))
  path.write_bytes(path.read_bytes()[:30])
  with pytest.raises(UsageError) as error:
    run.oracle_samples(run.Config(), None, 0, str(tmp_path))
  assert str(path) in str(error.value) and "Delete it" in str(error.value)


def test_every_option_has_help_text_with_its_default():
  for action in run.build_parser()._actions:
    if action.dest != "help":
      assert action.help and "default" in action.help, action.option_strings
