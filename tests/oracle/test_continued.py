"""The continued-training check replays the selected run: train_student with ``fixed_steps`` equal
to the selected step gives the selected checkpoint bit for bit (the same batches, learning rates
and compiled step), so training to twice that step continues the very run that was selected."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.lm.model import ModelConfig
from benchmarks.oracle import finetune, run


def test_fixed_steps_replays_the_selected_run_bit_for_bit():
  model_config = ModelConfig(vocab_size=11, seq_len=6, d_model=8, num_layers=1, num_heads=2)
  config = run.Config(student_steps=80, eval_every=5, patience=2, min_delta=1e-3, batch_size=8,
                      warmup_steps=3)
  rng = np.random.default_rng(0)
  rows = rng.integers(0, 11, size=(48, 6)).astype(np.int32)
  val_rows = rng.integers(0, 11, size=(16, 6)).astype(np.int32)
  objectives = tuple(run.BY_NAME[n] for n in ("ce", "emo"))
  cost = jnp.zeros((11, 8))
  selected, record = run.train_student(config, model_config, objectives, 0, 3, rows, val_rows,
                                       cost)
  assert 0 < record["steps"] < record["steps_run"]  # the rule stopped after its best step
  replay, replay_record = run.train_student(config, model_config, objectives, 0, 3, rows,
                                            val_rows, cost, fixed_steps=record["steps"])
  assert replay_record["steps_run"] == record["steps"] and not replay_record["stopped_early"]
  assert finetune.state_digest(nnx.state(replay)) == finetune.state_digest(nnx.state(selected))
  assert replay_record["best_val_nll"] == record["best_val_nll"]
  longer, _ = run.train_student(config, model_config, objectives, 0, 3, rows, val_rows, cost,
                                fixed_steps=2 * record["steps"])
  assert finetune.state_digest(nnx.state(longer)) != finetune.state_digest(nnx.state(selected))


def test_decayed_training_keeps_the_best_or_the_last_state():
  model_config = ModelConfig(vocab_size=11, seq_len=6, d_model=8, num_layers=1, num_heads=2)
  rng = np.random.default_rng(1)
  rows = rng.integers(0, 11, size=(48, 6)).astype(np.int32)
  val_rows = rng.integers(0, 11, size=(16, 6)).astype(np.int32)
  objectives = tuple(run.BY_NAME[n] for n in ("ce", "emo"))
  models = finetune.Models(model_config)
  start = nnx.state(models.of(jax.device_get(nnx.state(models.of(models.template)))))

  def train(keep):
    return finetune.decayed_training(
        models.of(start), objectives, 0, 0, finetune.FINETUNE_PHASE, rows, val_rows,
        jnp.zeros((11, 8)), steps=30, schedule=finetune.linear_decay(1e-2, 30), batch_size=8,
        eval_every=5, weight_decay=0.0, keep=keep)

  best, record = train("best")
  last, last_record = train("last")
  assert record["val_curve"] == last_record["val_curve"]  # the same run
  assert record["val_curve"][0] == run.validation_nll(models.of(start), val_rows)
  assert record["best_val_nll"] == min(record["val_curve"])
  assert record["steps"] == record["val_steps"][int(np.argmin(record["val_curve"]))]
  assert last_record["steps"] == 30
  np.testing.assert_allclose(run.validation_nll(models.of(best), val_rows),
                             record["best_val_nll"], rtol=1e-6)
  np.testing.assert_allclose(run.validation_nll(models.of(last), val_rows),
                             record["val_curve"][-1], rtol=1e-6)
  assert finetune.linear_decay(2.0, 4)(0) == 2.0 and finetune.linear_decay(2.0, 4)(2) == 1.0
  rate = finetune.cosine_decay(1.0, 100, 10)
  assert rate(0) == 0.1 and abs(rate(10) - 1.0) < 1e-12 and abs(rate(100) - 0.1) < 1e-12
