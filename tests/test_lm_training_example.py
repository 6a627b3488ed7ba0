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
  """Four micro-batches with different amounts of padding: the float32 sum of their gradients
  (token sums over the global token count) equals the gradient of the full batch's token mean,
  computed in one piece, to float32 summation order; the mean of per-micro-batch means (the
  common mistake) does not."""
  config = example["Config"](dtype="float32", batch=8, micro_batches=4)
  graphdef, params, _, cost = example["init"](config, None)
  tokens, mask = (jnp.asarray(x) for x in example["batch_at"](config, 3))
  assert len({int(m[:, 1:].sum()) for m in np.split(np.asarray(mask), 4)}) > 1  # uneven padding
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
    pieces = zip(np.split(np.asarray(tokens), 4), np.split(np.asarray(mask), 4))
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
