"""Shared by the fused-path tests (test_chunked, test_onepass, test_properties and the 8-device
checks): random problems, the one naive reference (the logits materialised), the one
``assert_close``, and the runner of a check script on 8 simulated CPU devices.

The data come from NumPy's generator: ``jax.random`` compiles one program per shape (about 0.4 s
each on CPU), a cost the test data do not need.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax

from emoloss import TokenStats, emo_loss

ROOT = Path(__file__).resolve().parents[2]
COLLECTIVE = re.compile(
    r"=\s*(.*?)\s(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
    r"(?:-start)?\(")


def make_problem(n: int, v: int, d: int, k: int, seed: int = 0, scale: float = 1.0):
  """``hidden [n, d]`` (times ``scale``), ``head [v, d]``, ``labels [n]`` in ``[0, v)`` and
  ``cost [v, k]``: standard normal float32 arrays and uniform labels."""
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(scale * rng.standard_normal((n, d)), jnp.float32)
  head = jnp.asarray(rng.standard_normal((v, d)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
  cost = jnp.asarray(rng.standard_normal((v, k)), jnp.float32)
  return hidden, head, labels, cost


RTOL = 1e-5  # float32: relative to the largest reference entry of each array


def assert_close(actual, expected, rtol: float = RTOL, name: str = "") -> None:
  """``max |actual - expected| <= rtol * max |expected|`` (compared in float64)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  scale = max(float(np.max(np.abs(expected))), 1e-30)
  error = float(np.max(np.abs(actual - expected)))
  assert error <= rtol * scale, f"{name}: max error {error:.3g} > {rtol:g} x {scale:.3g}"


def transformed_logits(hidden, head, softcap=None, temperature=1.0, **_):
  """Materialised float32 logits (inputs upcast) with the soft-cap, then the temperature."""
  logits = jnp.dot(hidden.astype(jnp.float32), head.astype(jnp.float32).T)
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  return logits / temperature


def naive_token_stats(hidden, head, labels, cost, where=None, **options) -> TokenStats:
  """The naive path: transformed logits materialised, then optax (smoothed targets from
  optax.smooth_labels) / emoloss.emo_loss, and the entropy from log_softmax; masked tokens 0."""
  logits = transformed_logits(hidden, head, **options)
  mask = (lambda x: x) if where is None else (lambda x: jnp.where(where, x, 0.0))
  targets = optax.smooth_labels(jax.nn.one_hot(labels, head.shape[0]),
                                options.get("label_smoothing", 0.0))
  nll = mask(optax.losses.softmax_cross_entropy(logits, targets))
  lse = mask(jax.nn.logsumexp(logits, axis=-1))
  emo = None if cost is None else emo_loss(logits, labels, cost, where=where)
  log_p = jax.nn.log_softmax(logits)
  entropy = mask(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1))
  return TokenStats(nll=nll, emo=emo, lse=lse, entropy=entropy)


def naive_loss(hidden, head, labels, cost, per_token, where=None, reduction="mean", **options):
  """The naive reduced loss: ``per_token`` of :func:`naive_token_stats` (unmasked), summed over
  the unmasked tokens, divided by their count for a mean."""
  values = per_token(naive_token_stats(hidden, head, labels, cost, **options))
  mask = jnp.ones(labels.shape) if where is None else where.astype(jnp.float32)
  total = jnp.sum(jnp.where(mask > 0, values, 0.0))
  return total if reduction == "sum" else total / jnp.maximum(jnp.sum(mask), 1.0)


def cotangents(n: int, seed: int = 0):
  """``[3, n]`` per-token weights, one row per output of the fused path (nll, emo, lse)."""
  return jnp.asarray(np.random.default_rng(seed + 1000).standard_normal((3, n)), jnp.float32)


def run_on_8_cpu_devices(script: str) -> None:
  """Runs ``tests/fused/<script>`` in a subprocess with 8 simulated CPU devices (the XLA flag
  must be set before JAX starts) and this checkout first on the path; it must print ALL OK."""
  path = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=path)
  result = subprocess.run([sys.executable, str(Path(__file__).with_name(script))], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert "ALL OK" in result.stdout, result.stdout[-3000:]


def assert_only_small_all_reduces(hlo_text: str, limit: int, expect_some: bool = False) -> None:
  """Every collective of a compiled program (its HLO text) is an all-reduce (no gather of the
  head or the logits), and each array it moves holds at most ``limit`` elements."""
  ops = COLLECTIVE.findall(hlo_text)
  assert ops or not expect_some, "expected psum/pmax collectives"
  kinds = {kind for _, kind in ops}
  assert kinds <= {"all-reduce"}, kinds
  for shapes, _ in ops:
    for dims in re.findall(r"\w+\[([\d,]*)\]", shapes):
      size = int(np.prod([int(x) for x in dims.split(",") if x])) if dims else 1
      assert size <= limit, (shapes, limit)


def dot_flops(jaxpr, trips=1):
  """FLOPs of every dot_general in a jaxpr, each multiplied by the trip count of its scans."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2 * trips * int(np.prod(out)) * int(np.prod([lhs[i] for i in lhs_contract]))
    inner = trips * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += dot_flops(sub, inner)
  return total
