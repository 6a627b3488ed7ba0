"""The levanter recipe of docs/trainer.md, run in levanter's own `Trainer` (not in CI: a manual
lane, `pytest -m levanter tests/integration/test_levanter.py` in a venv with marin-levanter; the
command and its result are in docs/trainer.md).

A tiny Llama built from code (random weights, nothing downloaded) trains for 30 steps: with the
recipe's loss and plain CE, each step's loss equals that of levanter's own
`compute_next_token_loss` run to float32 rounding (the check of docs/trainer.md); with EMO + CE and
the frozen initial head as the cost, the loss falls.
"""

import numpy as np
import pytest

from tests.integration.ce_check import load_check_ce_matches, load_from_trainer_doc

pytestmark = pytest.mark.levanter

VOCAB, SEQ, BATCH, STEPS = 64, 16, 4, 30


@pytest.fixture(scope="module")
def lev():
  try:
    import haliax as hax
    import jmp
    import levanter
    from levanter.checkpoint import CheckpointerConfig
    from levanter.models.llama import LlamaConfig
    from levanter.models.lm_model import LmExample
    from levanter.tracker import NoopConfig
    from levanter.trainer import Trainer, TrainerConfig
  except ImportError as error:
    pytest.fail(f"this lane needs marin-levanter (docs/trainer.md gives the command): {error}")
  import types
  return types.SimpleNamespace(hax=hax, jmp=jmp, levanter=levanter, LlamaConfig=LlamaConfig,
                               LmExample=LmExample, NoopConfig=NoopConfig, Trainer=Trainer,
                               TrainerConfig=TrainerConfig, CheckpointerConfig=CheckpointerConfig)


def levanter_loss_fn(model, example, *, key=None):
  return model.compute_next_token_loss(example, key=key)


def batches(lev, n, seed=0):
  """Arithmetic progressions mod the vocabulary, with a prompt of 3 tokens (not predicted)."""
  hax = lev.hax
  Batch, Pos = hax.Axis("batch", BATCH), hax.Axis("position", SEQ)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    start = rng.integers(0, VOCAB, size=(BATCH, 1))
    stride = rng.integers(1, 4, size=(BATCH, 1))
    tokens = hax.named(((start + stride * np.arange(SEQ)) % VOCAB).astype(np.int32), (Batch, Pos))
    weight = hax.named(np.broadcast_to(np.arange(SEQ) >= 2, (BATCH, SEQ)).astype(np.float32),
                       (Batch, Pos))
    out.append(hax.vmap(lambda t, w: lev.LmExample.causal(t, loss_weight=w), Batch)(tokens, weight))
  return out


def train(lev, tmp_path, loss_fn):
  import jax
  import optax
  config = lev.TrainerConfig(
      id="emoloss-check", num_train_steps=STEPS, train_batch_size=BATCH, tracker=lev.NoopConfig(),
      mp=lev.jmp.get_policy("f32"), log_jaxprs=False, log_xla_hlo=False,
      log_dir=tmp_path / "logs", require_accelerator=False,
      checkpointer=lev.CheckpointerConfig(base_path=str(tmp_path / "ckpt")))
  losses = []
  with lev.Trainer(config, optax.adam(3e-3), loss_fn, add_default_hooks=False) as trainer:
    state = trainer.initial_state(jax.random.PRNGKey(0), model_init=lambda: tiny_llama(lev))
    for example in batches(lev, STEPS):
      info = trainer.train_step(state, example)
      state = info.state
      losses.append(info.loss)
  return np.asarray(losses)


def tiny_llama(lev):
  """A two-layer Llama with random float32 weights and an untied head."""
  import jax
  config = lev.LlamaConfig(max_seq_len=SEQ, hidden_dim=32, intermediate_dim=64, num_layers=2,
                           num_heads=2, num_kv_heads=1)
  return config.build(lev.hax.Axis("vocab", VOCAB), key=jax.random.PRNGKey(1))


def test_levanter_recipe(lev, tmp_path):
  import functools

  import jax.numpy as jnp
  check_ce_matches = load_check_ce_matches()
  emoloss_loss_fn = load_from_trainer_doc("### levanter", "emoloss_loss_fn")  # the recipe
  theirs = train(lev, tmp_path / "a", levanter_loss_fn)
  ours = train(lev, tmp_path / "b", emoloss_loss_fn)
  gaps = [check_ce_matches(a, b) for a, b in zip(ours, theirs)]
  print(f"levanter: CE vs compute_next_token_loss over {STEPS} steps, max relative gap "
        f"{max(gaps):.1e}; loss {theirs[0]:.3f} -> {theirs[-1]:.3f}")
  model0 = tiny_llama(lev)  # the initial model again: the trainer's steps donate its arrays
  cost = jnp.array(model0.get_lm_head().rearrange((model0.Vocab, model0.Embed)).array)
  emo = train(lev, tmp_path / "c", functools.partial(emoloss_loss_fn, cost=cost))
  print(f"levanter: EMO + CE loss, first 5 steps {emo[:5].mean():.3f}, last 5 {emo[-5:].mean():.3f}")
  assert emo[-5:].mean() < emo[:5].mean() - 0.2
