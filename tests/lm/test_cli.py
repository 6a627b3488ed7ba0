"""The LM experiment's command line (benchmarks/lm/run.py): refusals that must come before any
training, the checkpoints' key, help texts and where a run says its files went. No training."""

import dataclasses
import json

import pytest

from benchmarks.lm import run as lm_run
from benchmarks.lm.config import QUICK, Config, UsageError


@pytest.fixture
def no_training(monkeypatch):
  """A command line that gets as far as training fails the test."""
  def started(*args, **kwargs):
    raise AssertionError("training started before the command line was refused")
  monkeypatch.setattr(lm_run, "run_experiment", started)


def _refused(args, capsys) -> str:
  with pytest.raises(SystemExit) as exit_info:
    lm_run.main(args)
  assert exit_info.value.code == 2
  return capsys.readouterr().err


@pytest.mark.parametrize("objectives,regimes,missing", [
    ("emo_cap3", None, "regime B"),       # the quick regime B runs ce, emo only
    ("ce", None, "regime C"),
    ("tailr", "B", "regime B"),
])
def test_an_objective_subset_that_leaves_a_regime_with_ce_alone_is_refused_before_training(
    objectives, regimes, missing, tmp_path, capsys, no_training):
  args = ["--quick", "--objectives", objectives, "--out", str(tmp_path / "c")]
  args += ["--regimes", regimes] if regimes else []
  error = _refused(args, capsys)
  assert f"leaves {missing} with CE alone" in error and "CE baseline" in error


def test_an_objective_subset_that_compares_in_every_regime_is_accepted(tmp_path):
  args = lm_run.build_parser().parse_args(["--quick", "--objectives", "emo"])
  config = lm_run.config_from_args(args)
  assert config.objectives == ("ce", "emo")


@pytest.mark.parametrize("which", ["folder", "under_a_file", "sibling_folder"])
def test_an_unusable_json_path_is_refused_before_training(which, tmp_path, capsys, no_training):
  (tmp_path / "a_file").write_text("x")
  (tmp_path / "r.png").mkdir()
  json_path = {"folder": tmp_path, "under_a_file": tmp_path / "a_file" / "r.json",
               "sibling_folder": tmp_path / "r.json"}[which]
  error = _refused(["--quick", "--out", str(tmp_path / "c"), "--json", str(json_path)], capsys)
  assert "--json" in error


def test_an_unusable_out_folder_is_refused_before_training(tmp_path, capsys, no_training):
  (tmp_path / "a_file").write_text("x")
  error = _refused(["--quick", "--out", str(tmp_path / "a_file")], capsys)
  assert "--out" in error and "is a file" in error


def test_quick_never_writes_into_the_committed_results(tmp_path, capsys, no_training):
  error = _refused(["--quick", "--out", str(tmp_path / "c"), "--json",
                    "benchmarks/results/lm_finetune.json"], capsys)
  assert "benchmarks/results" in error
  out_dir, json_path = lm_run.output_paths(lm_run.build_parser().parse_args(["--quick"]))
  assert "benchmarks/results" not in json_path and json_path.startswith(out_dir)


def test_the_loss_path_and_chunk_size_key_the_checkpoints(tmp_path):
  """Checkpoints trained on the fused path are not reused by a plain-path run (or another
  chunk size): the run is refused unless --overwrite discards them."""
  fused = Config(**QUICK, loss_path="fused")
  lm_run.prepare_out_dir(str(tmp_path), fused, overwrite=False)
  (tmp_path / "ft_A_s0_ce.npz").write_bytes(b"a checkpoint")
  for changed in (dataclasses.replace(fused, loss_path="plain"),
                  dataclasses.replace(fused, chunk_size=fused.chunk_size // 2)):
    with pytest.raises(UsageError) as error:
      lm_run.prepare_out_dir(str(tmp_path), changed, overwrite=False)
    assert ("loss_path" if changed.loss_path == "plain" else "chunk_size") in str(error.value)
  lm_run.prepare_out_dir(str(tmp_path), dataclasses.replace(fused, loss_path="plain"),
                         overwrite=True)
  assert not (tmp_path / "ft_A_s0_ce.npz").exists()
  assert json.loads((tmp_path / "config.json").read_text())["loss_path"] == "plain"
  # settings that only add runs still reuse the checkpoints
  (tmp_path / "ft_A_s0_ce.npz").write_bytes(b"a checkpoint")
  plain = dataclasses.replace(fused, loss_path="plain")
  lm_run.prepare_out_dir(str(tmp_path), dataclasses.replace(plain, seeds=3), overwrite=False)
  assert (tmp_path / "ft_A_s0_ce.npz").exists()


def test_every_option_has_help_text_with_its_default():
  parser = lm_run.build_parser()
  for action in parser._actions:
    if action.dest == "help":
      continue
    assert action.help and "default" in action.help, action.option_strings
