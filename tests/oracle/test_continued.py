"""The students' training loop: the recipe of every phase (a decaying learning rate over a fixed
number of steps, the best or the last validation checkpoint kept)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.lm.model import ModelConfig, build_model
from benchmarks.oracle import finetune, run, training


def test_train_student_keeps_the_best_or_the_last_checkpoint_of_one_run():
  """From the seed's initialisation (step 0's validation NLL is that model's), for exactly
  ``steps`` steps; ``keep`` chooses the returned state, not the run."""
  model_config = ModelConfig(vocab_size=11, seq_len=6, d_model=8, num_layers=1, num_heads=2)
  config = run.Config(eval_every=5, batch_size=8, warmup_steps=3)
  rng = np.random.default_rng(0)
  rows = rng.integers(0, 11, size=(48, 6)).astype(np.int32)
  val_rows = rng.integers(0, 11, size=(16, 6)).astype(np.int32)
  objectives = tuple(run.BY_NAME[n] for n in ("ce", "emo"))

  def train(keep):
    return run.train_student(config, model_config, objectives, 0, 3, rows, val_rows,
                             jnp.zeros((11, 8)), steps=60, keep=keep)

  best, record = train("best")
  last, last_record = train("last")
  assert record["val_curve"] == last_record["val_curve"] and record["steps_run"] == 60
  assert record["val_curve"][0] == training.validation_nll(build_model(model_config, 3), val_rows)
  assert last_record["steps"] == 60 and record["steps"] == 40  # this tiny run overfits
  np.testing.assert_allclose(training.validation_nll(best, val_rows), min(record["val_curve"]),
                             rtol=1e-6)
  np.testing.assert_allclose(training.validation_nll(last, val_rows), record["val_curve"][-1],
                             rtol=1e-6)
  assert finetune.state_digest(nnx.state(best)) != finetune.state_digest(nnx.state(last))


def test_decayed_training_keeps_the_best_or_the_last_state():
  model_config = ModelConfig(vocab_size=11, seq_len=6, d_model=8, num_layers=1, num_heads=2)
  rng = np.random.default_rng(1)
  rows = rng.integers(0, 11, size=(48, 6)).astype(np.int32)
  val_rows = rng.integers(0, 11, size=(16, 6)).astype(np.int32)
  objectives = tuple(run.BY_NAME[n] for n in ("ce", "emo"))
  models = finetune.Models(model_config)
  start = nnx.state(models.of(jax.device_get(nnx.state(models.of(models.template)))))

  def train(keep):
    return training.decayed_training(
        models.of(start), objectives, 0, 0, finetune.FINETUNE_PHASE, rows, val_rows,
        jnp.zeros((11, 8)), steps=30, schedule=training.linear_decay(1e-2, 30), batch_size=8,
        eval_every=5, weight_decay=0.0, keep=keep)

  best, record = train("best")
  last, last_record = train("last")
  assert record["val_curve"] == last_record["val_curve"]  # the same run
  assert record["val_curve"][0] == training.validation_nll(models.of(start), val_rows)
  assert record["best_val_nll"] == min(record["val_curve"])
  assert record["steps"] == record["val_steps"][int(np.argmin(record["val_curve"]))]
  assert last_record["steps"] == 30
  np.testing.assert_allclose(training.validation_nll(models.of(best), val_rows),
                             record["best_val_nll"], rtol=1e-6)
  np.testing.assert_allclose(training.validation_nll(models.of(last), val_rows),
                             record["val_curve"][-1], rtol=1e-6)
  assert training.linear_decay(2.0, 4)(0) == 2.0 and training.linear_decay(2.0, 4)(2) == 1.0
  rate = training.cosine_decay(1.0, 100, 10)
  assert rate(0) == 0.1 and abs(rate(10) - 1.0) < 1e-12 and abs(rate(100) - 0.1) < 1e-12
