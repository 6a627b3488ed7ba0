"""examples/lm_training.py: gradient accumulation equals the full batch, and the 8-device run
(data x model mesh, sharded one-pass EMO + CE) trains and resumes from Orbax bit for bit."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.experiments

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "lm_training.py"


@pytest.fixture(scope="module")
def example():
  return runpy.run_path(str(SCRIPT))


def test_accumulated_gradient_is_the_full_batch_token_mean_gradient(example):
  """Four micro-batches (rows j::4) with different amounts of padding: the float32 sum of their
  gradients
  (token sums over the global token count) equals the gradient of the full batch's token mean,
  computed in one piece, to float32 summation order; the mean of per-micro-batch means (the
  common mistake) does not."""
  config = example["Config"](dtype="float32", batch=8, micro_batches=4)
  graphdef, params, _, cost = example["init"](config, None)
  tokens, mask = (jnp.asarray(x) for x in example["batch_at"](config, 3))
  pieces = [(tokens[j::4], mask[j::4]) for j in range(4)]  # the example's micro-batches
  assert len({int(m[:, 1:].sum()) for _, m in pieces}) > 1  # uneven padding
  loss_sum = example["token_sum_loss"]
  count = jnp.sum(mask[:, 1:]).astype(jnp.float32)
  full_loss, full = jax.value_and_grad(
      lambda p: loss_sum(p, graphdef, cost, tokens, mask, None) / count)(params)
  loss, accumulated = jax.jit(lambda p: example["accumulated_gradients"](
      p, graphdef, cost, tokens, mask, 4))(params)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(full))
  errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), accumulated, full)
  assert max(jax.tree.leaves(errors)) <= 1e-5 * scale, errors

  def mean_of_means(p):
    return sum(loss_sum(p, graphdef, cost, t, m, None) / m[:, 1:].sum() for t, m in pieces) / 4
  wrong = jax.grad(mean_of_means)(params)
  gaps = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), wrong, full)
  assert max(jax.tree.leaves(gaps)) > 100 * max(jax.tree.leaves(errors))


def test_bf16_run_on_a_data_model_mesh_of_8_devices_resumes_bit_for_bit(example):
  """The example on 8 simulated CPU devices (data 2 x model 4, bf16 parameters): the loss goes
  down, its first value matches one device (bf16 rounding), and training resumed from an Orbax
  checkpoint ends with the same parameters bit for bit."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  code = (f"import runpy, json; r = runpy.run_path({str(SCRIPT)!r})['main']("
          "['--steps', '6', '--mesh', '2', '4', '--check-resume']); "
          "print('RESULT', json.dumps(r))")
  result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

  sharded = json.loads(result.stdout.split("RESULT", 1)[1])
  assert sharded["resume_bit_for_bit"] is True
  losses = sharded["losses"]
  assert losses[-1] < losses[0]
  single = example["train"](example["Config"](steps=1), None)[2]
  np.testing.assert_allclose(losses[0], single[0], rtol=2e-2)


def test_data_rows_depend_on_step_and_row_only(example):
  """Row r of step i is the same whether generated with the whole batch or alone (what lets each
  process generate only its own rows), and steps differ."""
  config = example["Config"]()
  tokens, mask = example["batch_at"](config, 5)
  for rows in (range(3, 4), range(8, 16)):
    part_tokens, part_mask = example["rows_at"](config, 5, rows)
    np.testing.assert_array_equal(part_tokens, tokens[rows.start:rows.stop])
    np.testing.assert_array_equal(part_mask, mask[rows.start:rows.stop])
  assert not np.array_equal(example["batch_at"](config, 6)[0], tokens)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--micro-batches", "3"], "--micro-batches must be a divisor of the batch"),
    (["--micro-batches", "0"], "--micro-batches must be a divisor of the batch"),
    (["--mesh", "3", "3"], "--mesh 3 3 needs 9 devices"),
    (["--mesh", "0", "1"], "--mesh sizes must be positive"),
    (["--stop-at", "3"], "--save-every and --stop-at need --checkpoint-dir"),
    (["--steps", "4", "--stop-at", "5", "--checkpoint-dir", "x"], "--stop-at must lie in"),
])
def test_unusable_settings_are_usage_errors(example, argv, message, capsys):
  """Settings the run cannot use stop before training with status 2 and a message naming the
  option (instead of an IndexError, a reshape error or a ZeroDivisionError later)."""
  with pytest.raises(SystemExit) as exit_info:
    example["main"](argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
