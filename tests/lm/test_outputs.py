"""The experiments' file handling (benchmarks/outputs.py) and its users in the LM experiment:
atomic report writing, damaged cache files, output paths checked before any work."""

import json
import os

import numpy as np
import pytest

from benchmarks import outputs
from benchmarks.lm import data as lm_data
from benchmarks.lm import report, train
from benchmarks.lm.config import UsageError


def test_a_failing_writer_leaves_the_previous_file_whole(tmp_path):
  path = tmp_path / "report.md"
  path.write_text("previous report")
  with pytest.raises(RuntimeError), outputs.atomic_file(str(path)) as f:
    f.write("half a rep")
    raise RuntimeError("stopped while writing")
  assert path.read_text() == "previous report"
  assert os.listdir(tmp_path) == ["report.md"]  # no temporary file left behind
  outputs.write_json(str(path), {"a": 1})
  assert json.loads(path.read_text()) == {"a": 1}
  assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # as a plain open() gives


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_results_are_left_whole_when_the_report_fails(tmp_path):
  """A report that raises (as an objective subset once did, with StopIteration) must not leave
  an empty Markdown file beside a new JSON that says the run is complete."""
  json_path = tmp_path / "results.json"
  for name, text in (("results.json", '{"old": true}'), ("results.md", "old report"),
                     ("results.png", "old figure")):
    (tmp_path / name).write_text(text)

  def failing_markdown(results, png):
    raise StopIteration

  def plot(path, results):
    with open(path, "w") as f:
      f.write("new figure")

  with pytest.raises(StopIteration):
    report.write_results(str(json_path), {"complete": True}, plot, failing_markdown)
  assert json.loads(json_path.read_text()) == {"old": True}
  assert (tmp_path / "results.md").read_text() == "old report"
  assert (tmp_path / "results.png").read_text() == "old figure"
  assert sorted(os.listdir(tmp_path)) == ["results.json", "results.md", "results.png"]
  report.write_results(str(json_path), {"complete": True}, plot, lambda r, png: f"see {png}")
  assert (tmp_path / "results.md").read_text() == "see results.png"
  assert (tmp_path / "results.png").read_text() == "new figure"
  assert json.loads(json_path.read_text()) == {"complete": True}


def test_a_truncated_json_cache_names_the_file_and_the_remedy(tmp_path):
  path = tmp_path / "eval_A_s0_ce.json"
  path.write_text('{"test": {"nll": 3.1')
  with pytest.raises(UsageError) as error:
    lm_data.cached_json(str(path), lambda: pytest.fail("a cached file is not recomputed"))
  assert str(path) in str(error.value) and "Delete it" in str(error.value)
  assert "--out" in str(error.value)


def test_a_truncated_checkpoint_names_the_file_and_the_remedy(tmp_path):
  path = tmp_path / "ft_A_s0_ce.npz"
  train.save_checkpoint(str(path), {"state": {"w": np.ones(3, np.float32)}}, {"step": 1})
  trees, meta = train.load_checkpoint(str(path), {"state": {"w": np.zeros(3, np.float32)}})
  assert meta["step"] == 1 and np.all(np.asarray(trees["state"]["w"]) == 1)
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(UsageError) as error:
    train.load_checkpoint(str(path), {"state": {"w": np.zeros(3, np.float32)}})
  assert str(path) in str(error.value) and "Delete it" in str(error.value)


def test_unusable_output_paths_are_refused(tmp_path):
  folder = tmp_path / "existing_folder"
  folder.mkdir()
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  with pytest.raises(UsageError, match="existing folder"):
    outputs.check_output_file(str(folder), "--json")
  (tmp_path / "r.md").mkdir()
  with pytest.raises(UsageError, match="existing folder"):
    outputs.check_output_file(str(tmp_path / "r.json"), "--json", (".md", ".png"))
  with pytest.raises(UsageError, match="is a file"):
    outputs.check_output_file(str(a_file / "r.json"), "--json")
  with pytest.raises(UsageError, match="is a file"):
    outputs.check_output_dir(str(a_file), "--out")
  outputs.check_output_file(str(tmp_path / "new" / "r.json"), "--json", (".md",))
  with pytest.raises(UsageError, match="--quick"):
    outputs.check_quick_destination(os.path.join(outputs.RESULTS, "x.json"), "--json")
  outputs.check_quick_destination(str(tmp_path / "x.json"), "--json")


def test_native_log_spam_is_counted_and_other_lines_pass(capfd):
  """faiss prints 'WARNING clustering ...' from C++ (not through Python's logging): such lines
  written to the process's standard error are counted, every other line still shown."""
  before = outputs.SILENCED["WARNING clustering"]
  with outputs.counting_native_lines("WARNING clustering"):
    os.write(2, b"WARNING clustering 100 points to 10 centroids: please provide at least 390\n")
    os.write(2, b"another message\n")
    os.write(2, b"WARNING clustering 120 points to 12 centroids: please provide at least 468\n")
  assert outputs.SILENCED["WARNING clustering"] == before + 2
  err = capfd.readouterr().err
  assert "another message" in err and "WARNING clustering" not in err


def test_mauve_scores_print_no_faiss_warnings(capfd):
  from benchmarks.lm import metrics
  rng = np.random.default_rng(0)
  p, q = rng.normal(size=(100, 8)), rng.normal(0.5, 1.0, size=(100, 8))
  score = metrics.mauve_score(p, q, seeds=(1,))
  assert 0.0 < score <= 1.0
  assert "WARNING clustering" not in capfd.readouterr().err
