"""emoloss inside tunix's real PeftTrainer (the `tunix` lane: `.ci/run` runs it in its own venv
with google-tunix pinned; `pytest -m tunix tests/integration/test_tunix.py`).

A tiny Gemma3 built from code (random weights, no download) trains for a few dozen steps through
the trainer's public loss hook, `PeftTrainer.with_loss_fn`, with `emoloss.fused_loss` on the
hidden states after the final norm (`output_hidden_states=True`) and the tied head:

* plain CE: the logged loss equals that of tunix's own default loss at every logged step, to
  float32 rounding (the check of docs/trainer.md, loaded from the page);
* EMO + CE with the frozen initial head as the cost: the logged loss decreases, and so does the CE
  measured by tunix's own loss.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emoloss
from tests.integration.ce_check import load_check_ce_matches, load_from_trainer_doc

pytestmark = pytest.mark.tunix

VOCAB, SEQ, BATCH, STEPS = 64, 16, 4, 30
PAD = 0


@pytest.fixture(scope="module")
def tx():
  """The tunix modules (imported here, so that the default lane collects this file without
  tunix installed; this lane must not pass by skipping)."""
  try:
    from flax import nnx
    from tunix.models.gemma3 import model as gemma3
    from tunix.sft import peft_trainer, utils
  except ImportError as error:
    pytest.fail(f"the tunix lane needs google-tunix (.ci/run installs it in its own venv): {error}")
  import types
  return types.SimpleNamespace(nnx=nnx, gemma3=gemma3, peft_trainer=peft_trainer, utils=utils)


def tiny_gemma3(tx, seed=0):
  """A two-layer Gemma3 (both sliding-window layers, window 8 of 16 tokens) with random float32
  weights."""
  config = tx.gemma3.ModelConfig(
      num_layers=2, num_embed=VOCAB, embed_dim=32, hidden_dim=64, num_heads=2, head_dim=16,
      num_kv_heads=1, sliding_window_size=8, param_dtype=jnp.float32)
  return tx.gemma3.Gemma3(config, rngs=tx.nnx.Rngs(seed))


def batches(tx, n, seed=0):
  """Learnable sequences (arithmetic progressions mod the vocabulary) of random lengths, padded
  with PAD; the first two tokens are a prompt, not a target (input_mask False)."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    start = rng.integers(1, VOCAB, size=(BATCH, 1))
    stride = rng.integers(1, 4, size=(BATCH, 1))
    tokens = 1 + (start + stride * np.arange(SEQ)) % (VOCAB - 1)
    valid = np.arange(SEQ) < rng.integers(SEQ // 2, SEQ + 1, size=(BATCH, 1))
    out.append(tx.peft_trainer.TrainingInput(
        input_tokens=np.where(valid, tokens, PAD).astype(np.int32),
        input_mask=valid & (np.arange(SEQ) >= 2)))
  return out


def model_inputs(tx):
  """The usual tunix `gen_model_input_fn`: positions and a causal mask from the padding."""
  def gen(x):
    not_pad = x.input_tokens != PAD
    return {"input_tokens": x.input_tokens, "input_mask": x.input_mask,
            "positions": tx.utils.build_positions_from_mask(not_pad),
            "attention_mask": tx.utils.make_causal_attn_mask(not_pad)}
  return gen


def recipe(cost=None):
  """The loss of the tunix recipe of docs/trainer.md, as printed there."""
  return load_from_trainer_doc("### tunix", "emoloss_loss")(cost)


def train(tx, loss_fn=None, learning_rate=3e-3):
  """STEPS steps of PeftTrainer (full fine-tuning: no LoRA); returns the model and the logged
  training losses, one per step."""
  model = tiny_gemma3(tx)
  config = tx.peft_trainer.TrainingConfig(
      eval_every_n_steps=STEPS + 1, max_steps=STEPS, pbar_description=None)
  trainer = tx.peft_trainer.PeftTrainer(model, optax.adam(learning_rate), config)
  trainer = trainer.with_gen_model_input_fn(model_inputs(tx))
  if loss_fn is not None:
    trainer = trainer.with_loss_fn(loss_fn)
  trainer.train(batches(tx, STEPS))
  return model, np.asarray(trainer.metrics_logger.get_metric_history("", "loss", "train"))


def tunix_loss(tx, model):
  """tunix's own default loss, read from a fresh trainer's public `loss_fn` attribute."""
  config = tx.peft_trainer.TrainingConfig(eval_every_n_steps=1, max_steps=1)
  return tx.peft_trainer.PeftTrainer(model, optax.sgd(0.0), config).loss_fn


@pytest.fixture(scope="module")
def default_run(tx):
  return train(tx)


def test_ce_through_the_loss_hook_equals_tunix_default_loss_at_every_step(tx, default_run):
  check_ce_matches = load_check_ce_matches()
  _, theirs = default_run
  _, ours = train(tx, recipe())
  assert len(ours) == len(theirs) == STEPS
  gaps = [check_ce_matches(a, b) for a, b in zip(ours, theirs)]
  print(f"CE vs tunix's default loss over {STEPS} logged steps: max relative gap {max(gaps):.1e}")
  assert theirs[-1] < theirs[0] - 0.3  # the runs train (a comparison of two frozen runs is weak)


def test_step0_check_catches_a_lost_mask_through_tunix(tx):
  """The same check at step 0 (the trainer's own loss, called through its public attribute)
  fails when the glue drops the mask."""
  check_ce_matches = load_check_ce_matches()
  model = tiny_gemma3(tx)
  inputs = model_inputs(tx)(batches(tx, 1)[0])
  theirs = tunix_loss(tx, model)(model, **inputs)
  check_ce_matches(recipe()(model, **inputs), theirs)

  def no_mask(model, input_tokens, input_mask, positions, attention_mask):
    model(input_tokens, positions, None, attention_mask, output_hidden_states=True)
    hidden = tx.nnx.pop(model, tx.nnx.Intermediate)["all_hidden_states"].get_value()[-1]
    return emoloss.fused_loss(hidden[:, :-1].reshape(-1, hidden.shape[-1]),
                              model.embedder.input_embedding[...], input_tokens[:, 1:].ravel())

  with pytest.raises(AssertionError, match="emoloss CE"):
    check_ce_matches(no_mask(model, **inputs), theirs)


def test_emo_ce_with_the_frozen_head_as_cost_trains(tx):
  cost = jnp.array(tiny_gemma3(tx).embedder.input_embedding[...])  # the initial head, frozen
  model, losses = train(tx, recipe(cost), learning_rate=1e-2)
  assert len(losses) == STEPS and np.all(np.isfinite(losses))
  first, last = losses[:5].mean(), losses[-5:].mean()
  print(f"EMO + CE logged loss: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
  assert last < first - 0.3
  # The CE itself (tunix's own loss) falls too, on batches the run did not train on.
  held_out = [model_inputs(tx)(b) for b in batches(tx, 4, seed=1)]
  initial = tiny_gemma3(tx)
  default_loss = tunix_loss(tx, initial)
  ce_before = np.mean([float(default_loss(initial, **x)) for x in held_out])
  ce_after = np.mean([float(default_loss(model, **x)) for x in held_out])
  print(f"held-out CE (tunix's loss) before {ce_before:.3f}, after EMO + CE training {ce_after:.3f}")
  assert ce_after < ce_before - 0.3
