"""The computations compared across process layouts (tests/multiproc/test_losses.py): the sharded
fused and one-pass losses with their gradients, and one optimiser step, on fixed global arrays.

``run_all(mesh)`` runs them on a ``(data, model)`` mesh, whatever the number of processes (each
process fills only its own devices' shards of the global arrays), or on one device with
``mesh=None`` (one device). The loss calls are in ``token_stats_loss`` and ``onepass_mix_loss``
alone.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import emoloss

N, V, D, K = 32, 24, 8, 4  # tokens, vocabulary, hidden size, cost embedding size
UNMASKED = (14, 5)  # unmasked tokens among the first and the second half of the rows


def problem(seed: int = 0) -> dict[str, np.ndarray]:
  """Global arrays: hidden [N, D], head [V, D], labels [N], cost [V, K], and masks whose two
  halves (the two data shards: different processes) have different unmasked counts."""
  rng = np.random.default_rng(seed)
  masks = []
  for _ in range(2):  # one mask per optimiser micro-step
    halves = [np.isin(np.arange(N // 2), rng.permutation(N // 2)[:u]) for u in UNMASKED]
    masks.append(np.concatenate(halves))
  return {"hidden": rng.standard_normal((N, D)).astype(np.float32),
          "head": rng.standard_normal((V, D)).astype(np.float32),
          "labels": rng.integers(0, V, (2, N)).astype(np.int32),
          "cost": rng.standard_normal((V, K)).astype(np.float32),
          "where": np.stack(masks),
          "proj": (np.eye(D) + 0.1 * rng.standard_normal((D, D))).astype(np.float32)}


SPECS = {"hidden": P("data", None), "head": P("model", None), "labels": P(None, "data"),
         "cost": P("model", None), "where": P(None, "data"), "proj": P()}


def place(arrays: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Global arrays on ``mesh``: tokens over ``data``, the vocabulary over ``model``."""
  if mesh is None:
    return {name: jnp.asarray(x) for name, x in arrays.items()}
  return {name: jax.make_array_from_callback(x.shape, NamedSharding(mesh, SPECS[name]),
                                             lambda index, x=x: x[index])
          for name, x in arrays.items()}


def token_stats_loss(h, w, labels, cost, where, mesh):
  """Masked token mean of ``nll + 0.5 emo`` from the fused per-token statistics (soft-capped)."""
  out = emoloss.fused_token_stats(h, w, labels, cost, where=where, chunk_size=5, softcap=3.0,
                                  mesh=mesh)
  return jnp.sum(jnp.where(where, out.nll + 0.5 * out.emo, 0.0)) / jnp.sum(where)


def onepass_mix_loss(h, w, labels, cost, where, mesh):
  """The published EMO + CE mix (mode 1) in one pass, token mean, label smoothing 0.1."""
  return emoloss.fused_loss(h, w, labels, cost, per_token=emoloss.emo_ce_per_token(1),
                            where=where, chunk_size=4, label_smoothing=0.1, mesh=mesh)


def optimizer() -> optax.GradientTransformation:
  """Flooding (its level above the loss: the first step ascends) before Tiger accumulating two
  micro-steps, as in a training loop."""
  return optax.chain(emoloss.flood(4.0), emoloss.tiger(0.05, accumulation_steps=2))


def gathered(tree):
  """NumPy values of global arrays (from every process)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)


def run_all(mesh) -> dict[str, np.ndarray]:
  """Values and gradients of both losses, and two optimiser micro-steps (one Tiger update) on
  the parameters ``{proj (replicated), head (vocabulary-sharded)}``, as NumPy arrays. (Two
  compiled programs and one gather: each process compiles its own, so fewer is faster.)"""
  x = place(problem(), mesh)

  @jax.jit
  def losses(h, w, labels, cost, where):
    results = {}
    for name, loss in (("fused", token_stats_loss), ("onepass", onepass_mix_loss)):
      value, (d_hidden, d_head) = jax.value_and_grad(
          lambda h, w, loss=loss: loss(h, w, labels, cost, where, mesh), argnums=(0, 1))(h, w)
      results.update({f"{name}/value": value, f"{name}/d_hidden": d_hidden,
                      f"{name}/d_head": d_head})
    return results
  results = losses(x["hidden"], x["head"], x["labels"][0], x["cost"], x["where"][0])

  tx = optimizer()

  @jax.jit
  def step(params, state, hidden, labels, cost, where):
    def loss(p):
      return onepass_mix_loss(hidden @ p["proj"], p["head"], labels, cost, where, mesh)
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, value=value)
    return optax.apply_updates(params, updates), state, value

  params = {"proj": x["proj"], "head": x["head"]}
  state = tx.init(params)
  for i in range(2):
    params, state, results[f"step{i}/value"] = step(params, state, x["hidden"], x["labels"][i],
                                                    x["cost"], x["where"][i])
  momentum, = (s.mu for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "mu"))
               if hasattr(s, "mu"))  # Tiger's momentum (its state's `mu`)
  results.update({"step/proj": params["proj"], "step/head": params["head"],
                  "step/momentum_proj": momentum["proj"], "step/momentum_head": momentum["head"]})
  return gathered(results)


def compiled_programs(mesh) -> dict[str, str]:
  """The HLO text of each loss's value-and-gradient program compiled for ``mesh`` (for the
  communication checks)."""
  x = place(problem(), mesh)
  texts = {}
  for name, loss in (("fused", token_stats_loss), ("onepass", onepass_mix_loss)):
    fn = jax.jit(jax.value_and_grad(
        lambda h, w, y, c, m, loss=loss: loss(h, w, y, c, m, mesh), argnums=(0, 1)))
    lowered = fn.lower(x["hidden"], x["head"], x["labels"][0], x["cost"], x["where"][0])
    texts[name] = lowered.compile().as_text()
  return texts
