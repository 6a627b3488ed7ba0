"""Sharded fused CE + EMO against one device, on 8 simulated CPU devices.

Run by tests/fused/test_chunked.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before JAX starts).
Prints "ALL OK" when every check passes; raises otherwise.
"""


import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import emoloss
from tests.fused import helpers  # the checkout is on PYTHONPATH (helpers.run_on_8_cpu_devices)


def problem(n, v, d, k, seed=0):
  return (*helpers.make_problem(n, v, d, k, seed), helpers.cotangents(n, seed))


def program(fn, labels, cost, where, weights):
  """Outputs and gradients (w.r.t. hidden, head) of a scalar using every output."""
  def scalar(h, w):
    out = fn(h, w, labels, cost, where)
    total = (jnp.sum(weights[0] * out.nll) + jnp.sum(weights[2] * out.lse ** 2)
             + jnp.sum(weights[1] * out.entropy))
    return total if out.emo is None else total + jnp.sum(weights[1] * out.emo)
  return lambda h, w: (fn(h, w, labels, cost, where), jax.grad(scalar, argnums=(0, 1))(h, w))


def check(mesh, data_axis, model_axis, n, v, d, k, chunk_size, with_emo, masked, **options):
  """Outputs (entropy included) and gradients of the sharded path against one device, with the
  fused options (soft-cap, temperature, label smoothing over the global V, frozen head)."""
  hidden, head, labels, cost, weights = problem(n, v, d, k)
  cost = cost if with_emo else None
  where = (jnp.arange(n) % 5 != 2) if masked else None
  fused = {key: value for key, value in options.items() if key != "frozen_head"}
  frozen = (lambda w: jax.lax.stop_gradient(w)) if options.get("frozen_head") else (lambda w: w)
  single = program(lambda h, w, y, e, m: emoloss.fused_token_stats(
      h, frozen(w), y, e, where=m, chunk_size=chunk_size, **fused), labels, cost, where, weights)
  sharded = jax.jit(program(lambda h, w, y, e, m: emoloss.fused_token_stats(
      h, frozen(w), y, e, mesh=mesh, data_axis=data_axis, model_axis=model_axis, where=m,
      chunk_size=chunk_size, **fused), labels, cost, where, weights))
  args = (jax.device_put(hidden, NamedSharding(mesh, P(data_axis, None))),
          jax.device_put(head, NamedSharding(mesh, P(model_axis, None))))
  expected, got = single(hidden, head), sharded(*args)
  for name, a, b in zip(("nll", "emo", "lse", "entropy", "d hidden", "d head"),
                        jax.tree.leaves(got, is_leaf=lambda x: x is None),
                        jax.tree.leaves(expected, is_leaf=lambda x: x is None)):
    if b is None:
      assert a is None, name
      continue
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    error, scale = np.max(np.abs(a - b)), np.max(np.abs(b))
    if name == "d head" and options.get("frozen_head"):
      assert np.all(a == 0.0) and np.all(b == 0.0), name
      continue
    assert error <= 1e-5 * scale, f"{name}: {error} > 1e-5 * {scale} on {mesh}"
  head_sharding = NamedSharding(mesh, P(model_axis, None))  # ∂W stays sharded like W
  if not options.get("frozen_head"):  # (a frozen head's zero cotangent is a broadcast constant)
    assert got[1][1].sharding.is_equivalent_to(head_sharding, 2), got[1][1].sharding
  # Neither the head nor the logits is gathered: no all-gather/all-to-all at all, and every
  # all-reduce moves at most one device's token block of hidden- or cost-sized rows (partial
  # ∂hidden and p @ Ê, per-token max / sum-exp / target logit over the model axis) or one
  # device's head shard (∂W summed over the data axis), which is less than the full head [V, d]
  # or one device's logits block [N / data, V].
  data_size = 1 if data_axis is None else mesh.shape[data_axis]
  local_tokens = n // data_size
  model_size = 1 if model_axis is None else mesh.shape[model_axis]
  limit = max(local_tokens * max(d, k), v // model_size * d)
  assert limit < min(v * d, local_tokens * v)  # the check below can tell a gather apart
  helpers.assert_only_small_all_reduces(sharded.lower(*args).compile().as_text(), limit,
                                        expect_some=True)
  print("ok", {"mesh": dict(mesh.shape), "emo": with_emo, "masked": masked, "v": v,
              "chunk": chunk_size, **options})


def main():
  assert jax.device_count() == 8, jax.devices()
  explicit = jax.make_mesh((2, 4), ("data", "model"),
                           axis_types=(AxisType.Explicit, AxisType.Explicit))
  auto = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  vocab_only = Mesh(np.array(jax.devices()), ("model",))
  # V / 4 = 22 vocabulary rows per device, chunks of 4: a partial last chunk on every device.
  check(explicit, "data", "model", n=32, v=88, d=8, k=4, chunk_size=4, with_emo=True,
        masked=True)
  check(auto, "data", "model", n=32, v=88, d=8, k=4, chunk_size=11, with_emo=True, masked=False)
  check(auto, "data", "model", n=32, v=88, d=8, k=4, chunk_size=8, with_emo=False, masked=True)
  check(vocab_only, None, "model", n=16, v=96, d=8, k=4, chunk_size=5, with_emo=True,
        masked=True)
  check(explicit, "data", "model", n=32, v=88, d=8, k=4, chunk_size=4, with_emo=True,
        masked=True, softcap=2.0, temperature=0.7, label_smoothing=0.1)
  check(auto, "data", "model", n=32, v=88, d=8, k=4, chunk_size=8, with_emo=False,
        masked=False, softcap=30.0, frozen_head=True)
  print("ALL OK")


if __name__ == "__main__":
  main()
