"""The LM fine-tuning experiment (benchmarks/lm_finetune.py) end to end, in its --quick mode.

One quick run (module fixture, about a minute on 2 CPU cores) is checked for its files, for the
claim it exists to test (every objective lowers the pretrained model's held-out perplexity on the
fine-tuning domain), for metrics that agree with an independent NumPy evaluation of the saved
checkpoint, and for resuming: a rerun loads every phase, and an interrupted phase continues from
its checkpoint to the same result. Bad command lines exit with a message and no traceback.
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "lm_finetune.py"
DOMAINS = ("finetune_val", "pretrain_val")


def _load_script():
  spec = importlib.util.spec_from_file_location("lm_finetune", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules["lm_finetune"] = module  # dataclasses look the module up while it is executed
  spec.loader.exec_module(module)
  return module


lm = _load_script()


def _quick_args(out: Path) -> list[str]:
  return ["--quick", "--out", str(out / "checkpoints"), "--json", str(out / "results.json"),
          "--no-progress"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  """One ``--quick`` run: its folder, arguments, returned results and duration."""
  out = tmp_path_factory.mktemp("lm_quick")
  args = _quick_args(out)
  started = time.perf_counter()
  results = lm.main(args)
  return SimpleNamespace(out=out, args=args, results=results,
                         seconds=time.perf_counter() - started)


def _rows(results: dict) -> dict:
  """Result rows by objective (``None`` for the pretrained model)."""
  return {row["objective"]: row for row in results["results"]}


def _checkpoint_meta(path: Path) -> dict:
  with np.load(path) as stored:
    return json.loads(str(stored["__meta__"]))


def _checkpoints(results: dict) -> list[str]:
  config = lm.Config(**dict(results["config"], objectives=tuple(results["config"]["objectives"])))
  return ["pretrain.npz"] + [lm.finetune_name(o, config) + ".npz" for o in lm.OBJECTIVES]


def test_quick_run_writes_json_plot_table_and_checkpoints(quick):
  with open(quick.out / "results.json") as f:
    stored = json.load(f)
  assert stored == json.loads(json.dumps(quick.results))
  assert [row["objective"] for row in stored["results"]] == [None, *lm.OBJECTIVES]
  assert stored["loss_path"] == "fused"
  assert stored["config"]["vocab_size"] == lm.QUICK["vocab_size"]
  png = (quick.out / "results.png").read_bytes()
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
  markdown = (quick.out / "results.md").read_text()
  assert stored["table_markdown"] in markdown and "results.png" in markdown
  for name in _checkpoints(stored):
    meta = _checkpoint_meta(quick.out / "checkpoints" / name)
    assert meta["done"] is True
    assert meta["step"] == (lm.QUICK["pretrain_steps"] if name == "pretrain.npz"
                            else lm.QUICK["finetune_steps"])


def test_every_objective_lowers_the_pretrained_perplexity_on_the_new_domain(quick):
  rows = _rows(quick.results)
  pretrained = rows[None]["finetune_val"]["perplexity"]
  # Pretraining itself learned something: far below a uniform guess over the vocabulary.
  assert rows[None]["pretrain_val"]["perplexity"] < lm.QUICK["vocab_size"] / 4
  for objective in lm.OBJECTIVES:
    assert rows[objective]["finetune_val"]["perplexity"] < pretrained, objective


def test_metrics_are_consistent(quick):
  rows = _rows(quick.results)
  curves = quick.results["curves"]
  steps = lm.QUICK["finetune_steps"]
  expected_steps = list(range(0, steps + 1, lm.QUICK["eval_every"]))
  for row in rows.values():
    for domain in DOMAINS:
      metrics = row[domain]
      assert metrics["perplexity"] == pytest.approx(math.exp(metrics["nll"]), rel=1e-12)
      assert 0.0 <= metrics["accuracy"] <= 1.0
      assert 0.0 <= metrics["emo_cost"] <= 2.0  # 1 - cos lies in [0, 2]
  for objective in lm.OBJECTIVES:
    for domain in DOMAINS:
      curve = curves[objective][domain]
      assert curve["step"] == expected_steps
      for metric in ("perplexity", "accuracy", "emo_cost"):
        # Step 0 is the pretrained model; the last point is the reported row.
        assert curve[metric][0] == pytest.approx(rows[None][domain][metric], rel=1e-6)
        assert curve[metric][-1] == rows[objective][domain][metric]
    losses = quick.results["train_loss"][objective]["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  pretrain_curve = curves["pretrain"]["finetune_val"]
  assert pretrain_curve["perplexity"][-1] == pytest.approx(
      rows[None]["finetune_val"]["perplexity"], rel=1e-6)


def test_reported_metrics_match_a_numpy_evaluation_of_the_checkpoint(quick):
  """Perplexity, accuracy and EMO cost of the pretrained model on the held-out docs, recomputed
  from its saved checkpoint with NumPy (logits from the model, everything after by hand)."""
  from flax import nnx

  results = quick.results
  config = lm.Config(**dict(results["config"], objectives=tuple(results["config"]["objectives"])))
  model = lm.build_model(config, seed=12345)  # the weights all come from the checkpoint
  graphdef, template = nnx.split((model, lm.make_optimizer(model, config)))
  state, _ = lm.load_checkpoint(str(quick.out / "checkpoints" / "pretrain.npz"), template)
  model, _ = nnx.merge(graphdef, state)
  with np.load(quick.out / "checkpoints" / "data.npz") as data:
    stream = data["finetune_val"]
  windows = lm.eval_windows(stream, config.seq_len, config.eval_tokens, config.batch_size)
  logits = np.asarray(nnx.jit(lambda model, tokens: model(tokens))(model, windows[:, :-1]),
                      np.float64)
  targets = windows[:, 1:]
  target_logits = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = np.mean(logsumexp(logits, axis=-1) - target_logits)
  accuracy = np.mean(np.argmax(logits, axis=-1) == targets)
  unit = np.asarray(model.head, np.float64)
  unit /= np.linalg.norm(unit, axis=-1, keepdims=True)
  emo = np.mean(1.0 - np.einsum("btk,btk->bt", softmax(logits, axis=-1) @ unit, unit[targets]))
  reported = _rows(results)[None]["finetune_val"]
  assert reported["perplexity"] == pytest.approx(math.exp(nll), rel=1e-4)
  assert reported["accuracy"] == pytest.approx(accuracy, abs=1e-3)
  assert reported["emo_cost"] == pytest.approx(emo, rel=1e-4)


def test_rerun_loads_every_phase_and_reports_the_same(quick, capsys):
  folder = quick.out / "checkpoints"
  names = _checkpoints(quick.results)
  stamps = {name: os.stat(folder / name).st_mtime_ns for name in names}
  started = time.perf_counter()
  again = lm.main(quick.args)
  seconds = time.perf_counter() - started
  printed = capsys.readouterr().out
  assert printed.count("finished earlier") == len(names)
  assert {name: os.stat(folder / name).st_mtime_ns for name in names} == stamps
  assert seconds < 0.3 * quick.seconds, (seconds, quick.seconds)
  for objective, row in _rows(quick.results).items():
    for domain in DOMAINS:
      assert _rows(again)[objective][domain] == pytest.approx(row[domain], rel=1e-6)


class _Interrupted(Exception):
  pass


def test_an_interrupted_phase_continues_from_its_checkpoint(quick, tmp_path, monkeypatch):
  """CE fine-tuning stopped after its step-40 checkpoint, then rerun: same result as unbroken."""
  source = quick.out / "checkpoints"
  folder = tmp_path / "checkpoints"
  shutil.copytree(source, folder)
  ce_checkpoint = folder / "finetune_ce.npz"
  ce_checkpoint.unlink()
  batch_at = lm.batch_at

  def failing_batch_at(stream, step, config, phase):
    if phase == "finetune" and step == 45:
      raise _Interrupted
    return batch_at(stream, step, config, phase)

  args = ["--quick", "--out", str(folder), "--json", str(tmp_path / "r.json"), "--no-progress"]
  monkeypatch.setattr(lm, "batch_at", failing_batch_at)
  with pytest.raises(_Interrupted):
    lm.main(args)
  assert _checkpoint_meta(ce_checkpoint)["step"] == 40
  assert _checkpoint_meta(ce_checkpoint)["done"] is False
  monkeypatch.setattr(lm, "batch_at", batch_at)
  resumed = lm.main(args)
  assert _checkpoint_meta(ce_checkpoint)["done"] is True
  original = quick.results
  np.testing.assert_allclose(resumed["train_loss"]["ce"]["loss"],
                             original["train_loss"]["ce"]["loss"], rtol=1e-6)
  for domain in DOMAINS:
    for metric, values in original["curves"]["ce"][domain].items():
      np.testing.assert_allclose(resumed["curves"]["ce"][domain][metric], values, rtol=1e-6)


def _run_script(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=120)


def _bad_inputs(tmp: Path) -> dict:
  empty_folder = tmp / "no_text"
  empty_folder.mkdir()
  binary = tmp / "weights.txt"
  binary.write_bytes(b"\x00\x01\x02" * 100)
  tiny = tmp / "tiny.txt"
  tiny.write_text("def f(x):\n  return x + 1\n" * 50)
  return {
      "unknown flag": (["--learning-rate", "1e-3"], "unrecognized arguments: --learning-rate"),
      "abbreviated flag": (["--quic"], "unrecognized arguments: --quic"),
      "missing corpus": (["--finetune-corpus", str(tmp / "nowhere")], "no such file or folder"),
      "folder without text": (["--pretrain-corpus", str(empty_folder)], "holds no readable text"),
      "binary corpus": (["--finetune-corpus", str(binary)], "binary file"),
      "vocabulary below the byte alphabet": (["--vocab-size", "100"],
                                             "smaller than the model needs"),
      "vocabulary the corpus cannot fill": (
          ["--quick", "--pretrain-corpus", str(tiny), "--out", str(tmp / "out")],
          "the tokenizer learned only"),
  }


def test_bad_command_lines_exit_with_a_message_and_no_traceback(tmp_path):
  for case, (args, message) in _bad_inputs(tmp_path).items():
    process = _run_script(*args)
    assert process.returncode == 2, (case, process.stderr)
    assert message in process.stderr, (case, process.stderr)
    assert "usage: lm_finetune.py" in process.stderr, case
    assert "Traceback" not in process.stderr + process.stdout, (case, process.stderr)


@pytest.mark.slow
def test_default_configuration(tmp_path):
  """The README's run (about 10 minutes on 2 cores): the same claim at the default size."""
  results = lm.main(["--out", str(tmp_path / "checkpoints"), "--json",
                     str(tmp_path / "results.json"), "--no-progress"])
  rows = _rows(results)
  for objective in lm.OBJECTIVES:
    assert (rows[objective]["finetune_val"]["perplexity"]
            < rows[None]["finetune_val"]["perplexity"]), objective
