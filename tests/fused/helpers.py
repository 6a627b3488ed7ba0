"""Shared by the fused-path tests (test_chunked, test_onepass and their 8-device checks): random
problems, and the runner of a check script on 8 simulated CPU devices.

The data come from NumPy's generator: ``jax.random`` compiles one program per shape (about 0.4 s
each on CPU), a cost the test data do not need.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax.extend
import jax.numpy as jnp
import numpy as np

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
