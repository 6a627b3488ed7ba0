"""Sharded one-pass loss against one device, on 8 simulated CPU devices.

Run by tests/fused/test_onepass.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before JAX starts).
Prints "ALL OK" when every check passes; raises otherwise.
"""


import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import emoloss
from emoloss.fused import _onepass
from tests.fused import helpers  # the checkout is on PYTHONPATH (helpers.run_on_8_cpu_devices)


def z_loss(s):
  return s.nll + 0.1 * s.lse ** 2


def fused_loss(hidden, head, labels, cost, *, block, frozen_head=False, mesh=None,
               data_axis=None, model_axis=None, **options):
  """emoloss.fused_loss (frozen: the head under stop_gradient); with a ∂W block other than the
  default, its implementation with that internal setting."""
  head = jax.lax.stop_gradient(head) if frozen_head else head
  if block == 4096:
    if mesh is not None:
      options.update(mesh=mesh, data_axis=data_axis, model_axis=model_axis)
    return emoloss.fused_loss(hidden, head, labels, cost, **options)
  defaults = {"per_token": emoloss.ce_per_token, "reduction": "mean", "where": None,
              "chunk_size": None, "softcap": None, "temperature": 1.0, "label_smoothing": 0.0}
  options = {**defaults, **options}
  where = options.pop("where")
  return _onepass.reduced_loss(hidden, head, labels, cost, where, mesh=mesh,
                               data_axis=data_axis, model_axis=model_axis,
                               vocab_block_size=block, **options)


def problem(n, v, d, k, seed=0):
  return helpers.make_problem(n, v, d, k, seed)


def check(mesh, data_axis, model_axis, n, v, d, k, chunk, per_token, with_emo, masked,
          reduction, block=4096, **extra):
  """Loss and gradients of the sharded path against one device; ``extra`` are further keyword
  arguments of both (fused options, entropy, frozen head)."""
  hidden, head, labels, cost = problem(n, v, d, k)
  cost = cost if with_emo else None
  where = (jnp.arange(n) % 5 != 2) if masked else None
  options = {"per_token": per_token, "where": where, "reduction": reduction,
             "chunk_size": chunk, "block": block, **extra}
  single = jax.jit(jax.value_and_grad(
      lambda h, w: fused_loss(h, w, labels, cost, **options), argnums=(0, 1)))
  def loss(h, w):
    return fused_loss(h, w, labels, cost, mesh=mesh, data_axis=data_axis,
                      model_axis=model_axis, **options)
  sharded = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  args = (jax.device_put(hidden, NamedSharding(mesh, P(data_axis, None))),
          jax.device_put(head, NamedSharding(mesh, P(model_axis, None))))
  expected, got = single(hidden, head), sharded(*args)
  for name, a, b in zip(("loss", "d hidden", "d head"), jax.tree.leaves(got),
                        jax.tree.leaves(expected)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    error, scale = np.max(np.abs(a - b)), np.max(np.abs(b))
    if name == "d head" and extra.get("frozen_head"):
      assert np.all(a == 0.0) and np.all(b == 0.0), name
      continue
    assert error <= 1e-5 * scale, f"{name}: {error} > 1e-5 * {scale} on {mesh}"
  value_only = float(jax.jit(loss)(*args))  # no gradient: the vocabulary-chunked forward pass
  assert abs(value_only - float(expected[0])) <= 1e-5 * abs(float(expected[0])), value_only
  head_sharding = NamedSharding(mesh, P(model_axis, None))  # ∂W stays sharded like W
  if not extra.get("frozen_head"):  # (a frozen head's zero cotangent is a broadcast constant)
    assert got[1][1].sharding.is_equivalent_to(head_sharding, 2), got[1][1].sharding
  # No all-gather/all-to-all; every all-reduce moves at most one device's token rows of hidden
  # or cost size (∂h over the model axis, target cost rows, per-token statistics) or one
  # device's head shard (∂W over the data axis): less than the head or a logits block.
  local_tokens = n // (1 if data_axis is None else mesh.shape[data_axis])
  local_vocab = v // (1 if model_axis is None else mesh.shape[model_axis])
  limit = max(local_tokens * max(d, k), local_vocab * d)
  if model_axis is None:  # a replicated head: ∂W [V, d] is all-reduced over the data axis
    limit = v * d
  else:
    assert limit < min(v * d, local_tokens * v)  # the check below can tell a gather apart
  helpers.assert_only_small_all_reduces(sharded.lower(*args).compile().as_text(), limit)
  print("ok", {"mesh": dict(mesh.shape), "emo": with_emo, "masked": masked, "chunk": chunk,
              "reduction": reduction, **{k: v for k, v in extra.items() if k != "per_token"}})


def check_closed_over_weight(mesh):
  """d/da of a loss whose per_token closes over ``a`` (an explicit argument of the custom VJP,
  replicated on the mesh): equal to one device."""
  hidden, head, labels, cost = problem(32, 88, 8, 4)
  def loss(a, **kw):
    per_token = lambda s: a * s.nll + a ** 2 * s.emo
    return emoloss.fused_loss(hidden, head, labels, cost, per_token=per_token, chunk_size=4,
                              **kw)
  single = jax.grad(loss)(2.0)
  sharded = jax.jit(jax.grad(lambda a: loss(a, mesh=mesh)))(2.0)
  assert abs(float(sharded) - float(single)) <= 1e-5 * abs(float(single)), (sharded, single)
  # The value alone (no gradient: the vocabulary-chunked forward pass), the weight a jit argument.
  value = jax.jit(lambda a: loss(a, mesh=mesh))(2.0)
  expected = loss(2.0)
  assert abs(float(value) - float(expected)) <= 1e-5 * abs(float(expected)), (value, expected)
  print("ok closed-over weight", dict(mesh.shape))


def entropy_bonus(s):
  return s.nll - 0.1 * s.entropy


def main():
  assert jax.device_count() == 8, jax.devices()
  explicit = jax.make_mesh((2, 4), ("data", "model"),
                           axis_types=(AxisType.Explicit, AxisType.Explicit))
  auto = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  vocab_only = Mesh(np.array(jax.devices()), ("model",))
  data_only = Mesh(np.array(jax.devices()), ("data",))
  # 16 tokens per device in chunks of at most 5 (4 chunks of 4): uneven chunking; 22 vocabulary
  # rows per device, ∂W updated in blocks of 8 (the last one overlapping).
  check(explicit, "data", "model", n=32, v=88, d=8, k=4, chunk=5,
        per_token=emoloss.emo_ce_per_token(1), with_emo=True, masked=True, reduction="mean",
        block=8)
  check(auto, "data", "model", n=32, v=88, d=8, k=4, chunk=8, per_token=z_loss,
        with_emo=False, masked=False, reduction="sum")
  check(vocab_only, None, "model", n=16, v=96, d=8, k=4, chunk=6,
        per_token=emoloss.emo_ce_per_token(2), with_emo=True, masked=True, reduction="mean")
  check(data_only, "data", None, n=64, v=40, d=8, k=4, chunk=3,
        per_token=emoloss.emo_ce_per_token(1, max_ratio=None), with_emo=True, masked=True,
        reduction="mean")
  check(explicit, "data", "model", n=32, v=88, d=8, k=4, chunk=5,
        per_token=emoloss.emo_ce_per_token(1), with_emo=True, masked=True, reduction="mean",
        block=8, softcap=2.0, temperature=0.7, label_smoothing=0.1)
  check(auto, "data", "model", n=32, v=88, d=8, k=4, chunk=8, per_token=entropy_bonus,
        with_emo=False, masked=True, reduction="sum", softcap=30.0,
        frozen_head=True)
  check_closed_over_weight(explicit)
  print("ALL OK")


if __name__ == "__main__":
  main()
