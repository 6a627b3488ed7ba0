"""Training a decoder LM with emoloss's one-pass EMO + CE loss: Flax NNX, bf16 parameters, Optax
with gradient accumulation, a (data, model) device mesh and Orbax checkpoints.

The pieces a real training stack needs, at a size that runs in seconds on a CPU:

* a Flax NNX decoder (pre-norm attention + MLP blocks) with bfloat16 parameters and an untied LM
  head ``[V, d]``; the loss never materialises the ``[tokens, V]`` logits: the final hidden states
  and the head go to :func:`emoloss.sharded_onepass_loss` (EMO + CE, published mode 1);
* gradient accumulation over micro-batches that reproduces the full-batch token-mean gradient:
  each micro-batch's loss is its token **sum** divided by the **global** count of target tokens of
  the whole batch (counted before splitting), so the micro-batch gradients add up to the gradient
  of the full batch's token mean (a mean of per-micro-batch means would weight a micro-batch with
  many padding tokens too much). The micro-batches are a ``lax.scan`` (one jitted step); their
  gradients are summed in float32 and the Optax chain (clipping, AdamW with float32 state) runs
  once per step;
* a mesh with a ``data`` axis (batch) and a ``model`` axis (the head's vocabulary rows and the
  cost embeddings are split over it; the loss combines the shards with ``psum``/``pmax`` of
  per-token vectors);
* an Orbax checkpoint of ``(params, opt_state, step)``: training resumed from it continues bit for
  bit (the data of each step are a function of the step).

  python examples/lm_training.py                       # one device
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
    python examples/lm_training.py --mesh 2 4          # 8 simulated CPU devices: data 2 x model 4

bfloat16 parameters are updated in place here (the optimizer state is float32); a long run would
keep a float32 master copy of the parameters to avoid losing small updates to rounding.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import emoloss


@dataclasses.dataclass(frozen=True)
class Config:
  vocab: int = 256
  dim: int = 64
  heads: int = 4
  layers: int = 2
  seq: int = 33              # tokens per sequence (32 predicted targets)
  batch: int = 16            # sequences per optimizer step
  micro_batches: int = 4     # gradient accumulation: the step's batch in this many pieces
  steps: int = 20
  learning_rate: float = 3e-3
  dtype: str = "bfloat16"    # parameters and activations
  seed: int = 0


# ----------------------------------------------------------------------------------------------
# Model.


class Block(nnx.Module):
  def __init__(self, config: Config, rngs: nnx.Rngs):
    kw = {"param_dtype": jnp.dtype(config.dtype), "dtype": jnp.dtype(config.dtype),
          "rngs": rngs}
    self.norm1 = nnx.RMSNorm(config.dim, **kw)
    self.attention = nnx.MultiHeadAttention(config.heads, config.dim, decode=False, **kw)
    self.norm2 = nnx.RMSNorm(config.dim, **kw)
    self.up = nnx.Linear(config.dim, 4 * config.dim, **kw)
    self.down = nnx.Linear(4 * config.dim, config.dim, **kw)

  def __call__(self, x, mask):
    x = x + self.attention(self.norm1(x), mask=mask)
    return x + self.down(jax.nn.gelu(self.up(self.norm2(x))))


class Decoder(nnx.Module):
  """Token embedding, ``layers`` blocks, a final norm; ``head [V, d]`` is read by the loss."""

  def __init__(self, config: Config, rngs: nnx.Rngs):
    dtype = jnp.dtype(config.dtype)
    self.embed = nnx.Embed(config.vocab, config.dim, param_dtype=dtype, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs) for _ in range(config.layers)])
    self.norm = nnx.RMSNorm(config.dim, param_dtype=dtype, dtype=dtype, rngs=rngs)
    init = jax.nn.initializers.normal(config.dim ** -0.5)
    self.head = nnx.Param(init(rngs.params(), (config.vocab, config.dim), dtype))

  def __call__(self, tokens):
    x = self.embed(tokens)
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.norm(x)  # [B, T, d] final hidden states


# ----------------------------------------------------------------------------------------------
# Data: a fixed random bigram chain, so the loss has something to learn; batch i is a function of
# (seed, i), which is what makes a resumed run identical.


def batch_at(config: Config, step: int) -> tuple[np.ndarray, np.ndarray]:
  """``tokens [B, T]`` and a boolean ``mask [B, T]`` (padding at the end of some sequences)."""
  table = np.random.default_rng(config.seed).dirichlet(np.full(config.vocab, 0.05), config.vocab)
  rng = np.random.default_rng([config.seed, step])
  tokens = np.zeros((config.batch, config.seq), np.int32)
  tokens[:, 0] = rng.integers(0, config.vocab, config.batch)
  for t in range(1, config.seq):
    cumulative = table[tokens[:, t - 1]].cumsum(axis=1)
    tokens[:, t] = np.minimum((cumulative < rng.random((config.batch, 1))).sum(axis=1),
                              config.vocab - 1)
  lengths = rng.integers(config.seq // 2, config.seq + 1, config.batch)
  return tokens, np.arange(config.seq)[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------------------------
# Loss, gradient accumulation, optimizer.


def token_sum_loss(params, graphdef, cost, tokens, mask, mesh):
  """Sum over the target tokens of the published EMO + CE mix (the head goes to the one-pass
  loss; no [tokens, V] logits), with the vocabulary split over the mesh's model axis."""
  model = nnx.merge(graphdef, params)
  hidden = model(tokens[:, :-1])
  hidden = hidden.reshape(-1, hidden.shape[-1])
  options = {"per_token": emoloss.emo_ce_per_token(mode=1), "reduction": "sum",
             "where": mask[:, 1:].reshape(-1)}
  labels = tokens[:, 1:].reshape(-1)
  if mesh is None:
    return emoloss.onepass_loss(hidden, model.head[...], labels, cost, **options)
  return emoloss.sharded_onepass_loss(hidden, model.head[...], labels, cost, mesh=mesh,
                                      data_axis="data", model_axis="model", **options)


def accumulated_gradients(params, graphdef, cost, tokens, mask, micro_batches, mesh=None):
  """``(loss, grads)`` of the full batch's token mean, as the float32 sum over ``micro_batches``
  pieces of ``∇(token sum of the piece) / (target tokens of the whole batch)``."""
  count = jnp.maximum(jnp.sum(mask[:, 1:]), 1).astype(jnp.float32)
  split = lambda x: x.reshape((micro_batches, -1) + x.shape[1:])
  grad_fn = jax.value_and_grad(lambda p, t, m: token_sum_loss(p, graphdef, cost, t, m, mesh))

  def body(carry, piece):
    loss, grads = carry
    value, g = grad_fn(params, *piece)
    grads = jax.tree.map(lambda a, b: a + b.astype(jnp.float32) / count, grads, g)
    return (loss + value / count, grads), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                  (split(tokens), split(mask)))
  return loss, grads


def optimizer(config: Config) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(config.learning_rate, weight_decay=0.01))


def float32(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


@functools.cache  # one compiled step per (config, model structure, mesh), reused by resumed runs
def make_step(config: Config, graphdef, mesh):
  tx = optimizer(config)

  @jax.jit
  def step(params, opt_state, cost, tokens, mask):
    loss, grads = accumulated_gradients(params, graphdef, cost, tokens, mask,
                                        config.micro_batches, mesh)
    updates, opt_state = tx.update(grads, opt_state, float32(params))
    params = jax.tree.map(lambda p, u: (p.astype(jnp.float32) + u).astype(p.dtype), params,
                          updates)
    return params, opt_state, loss
  return step


# ----------------------------------------------------------------------------------------------
# Setup on a mesh, training, checkpoints.


def make_mesh(shape: tuple[int, int] | None) -> Mesh | None:
  if shape is None:
    return None
  devices = np.array(jax.devices()[: shape[0] * shape[1]]).reshape(shape)
  return Mesh(devices, ("data", "model"))


def param_spec(path, _) -> P:
  """The head's rows over the model axis; everything else replicated."""
  return P("model", None) if any(getattr(k, "key", None) == "head" for k in path) else P()


def place(tree, mesh, spec_fn):
  if mesh is None:
    return tree
  return jax.tree_util.tree_map_with_path(
      lambda path, x: jax.device_put(x, NamedSharding(mesh, spec_fn(path, x))), tree)


def init(config: Config, mesh):
  """``(graphdef, params, opt_state, cost)``: the cost embeddings of EMO are a frozen float32
  copy of the initial head (in a fine-tuning run: the pretrained model's head)."""
  model = Decoder(config, nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  params = place(params, mesh, param_spec)
  cost = place(model.head[...].astype(jnp.float32), mesh, lambda *_: P("model", None))
  opt_state = place(optimizer(config).init(float32(params)), mesh, param_spec)  # moments as params
  return graphdef, params, opt_state, cost


def train(config: Config, mesh=None, start=None, stop=None, checkpoint=None, state=None):
  """Runs steps ``[start, stop)`` from ``state`` (``(params, opt_state)``, default a fresh
  init); saves ``(params, opt_state, step)`` to ``checkpoint`` at the end when given. Returns
  ``(params, opt_state, losses)``."""
  graphdef, params, opt_state, cost = init(config, mesh)
  if state is not None:
    params, opt_state = state
  step_fn = make_step(config, graphdef, mesh)
  data = NamedSharding(mesh, P("data", None)) if mesh is not None else None
  losses = []
  for i in range(start or 0, config.steps if stop is None else stop):
    tokens, mask = (jnp.asarray(x) if data is None else jax.device_put(x, data)
                    for x in batch_at(config, i))
    params, opt_state, loss = step_fn(params, opt_state, cost, tokens, mask)
    losses.append(float(loss))
  if checkpoint is not None:
    save(checkpoint, params, opt_state, (config.steps if stop is None else stop))
  return params, opt_state, losses


def save(path: Path, params, opt_state, step: int) -> None:
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(Path(path).absolute(), {"params": params, "opt_state": opt_state,
                                            "step": step})
  checkpointer.wait_until_finished()


def restore(path: Path, config: Config, mesh):
  """``(params, opt_state, step)`` restored with the shardings and dtypes of a fresh init."""
  _, params, opt_state, _ = init(config, mesh)
  target = {"params": params, "opt_state": opt_state, "step": 0}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = ocp.StandardCheckpointer().restore(Path(path).absolute(), abstract)
  return restored["params"], restored["opt_state"], int(restored["step"])


def resume_is_bit_for_bit(config: Config, mesh, directory: Path) -> bool:
  """Trains ``config.steps`` in one go, and again as two halves through a checkpoint: the
  final parameters must be identical bit for bit."""
  straight, _, _ = train(config, mesh)
  half = config.steps // 2
  train(config, mesh, stop=half, checkpoint=directory / "half")
  params, opt_state, step = restore(directory / "half", config, mesh)
  assert step == half
  resumed, _, _ = train(config, mesh, start=half, state=(params, opt_state))
  same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                      straight, resumed)
  return all(jax.tree.leaves(same))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=Config.steps)
  parser.add_argument("--micro-batches", type=int, default=Config.micro_batches)
  parser.add_argument("--dtype", default=Config.dtype, choices=["bfloat16", "float32"])
  parser.add_argument("--mesh", type=int, nargs=2, default=None, metavar=("DATA", "MODEL"),
                      help="data x model mesh (needs DATA * MODEL devices)")
  parser.add_argument("--check-resume", action="store_true",
                      help="also train through an Orbax checkpoint and compare bit for bit")
  args = parser.parse_args(argv)
  config = Config(steps=args.steps, micro_batches=args.micro_batches, dtype=args.dtype)
  mesh = make_mesh(tuple(args.mesh) if args.mesh else None)
  _, _, losses = train(config, mesh)
  print(f"loss (token-mean EMO + CE) over {config.steps} steps: {losses[0]:.4f} -> "
        f"{losses[-1]:.4f}")
  result = {"losses": losses}
  if args.check_resume:
    with tempfile.TemporaryDirectory() as directory:
      result["resume_bit_for_bit"] = resume_is_bit_for_bit(config, mesh, Path(directory))
    print("resumed from the checkpoint bit for bit:", result["resume_bit_for_bit"])
  return result


if __name__ == "__main__":
  main()
