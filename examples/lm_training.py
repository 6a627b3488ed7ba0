"""Training a decoder LM with emoloss's one-pass EMO + CE loss: Flax NNX, bf16 parameters, Optax
with gradient accumulation, a (data, model) device mesh and Orbax checkpoints.

The pieces a real training stack needs, at a size that runs in seconds on a CPU:

* a Flax NNX decoder (pre-norm attention + MLP blocks) with bfloat16 parameters and an untied LM
  head ``[V, d]``; the loss never materialises the ``[tokens, V]`` logits: the final hidden states
  and the head go to :func:`emoloss.fused_loss` (EMO + CE, published mode 1) on the mesh;
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
* Orbax checkpoints of ``(params, opt_state)`` per step (``--checkpoint-dir``, ``--save-every``):
  a run started again resumes from the latest complete one and continues bit for bit (the data of
  each step are a function of the step);
* several processes (a TPU pod slice, a multi-node GPU job) joined by ``jax.distributed``
  (``--coordinator-address``, ``--num-processes``, ``--process-id``, or ``--distributed`` for
  JAX's auto-detection): the mesh spans every process's devices, each process generates only the
  batch rows its own devices hold (row ``r`` of step ``i`` depends on the seed, ``i`` and ``r``
  alone), logs from process 0 only, and writes its shards of one Orbax checkpoint.

  python examples/lm_training.py                       # one device
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
    python examples/lm_training.py --mesh 2 4          # 8 simulated CPU devices: data 2 x model 4
  python examples/launch_local.py --processes 2 --devices-per-process 2 -- \\
    examples/lm_training.py --mesh 2 2                 # 2 local processes x 2 CPU devices

The docs' "Scaling out" page has the launch lines for a TPU pod, SLURM and Kubernetes.

bfloat16 parameters are updated in place here (the optimizer state is float32); a long run would
keep a float32 master copy of the parameters to avoid losing small updates to rounding.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
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
# Data: a fixed random bigram chain, so the loss has something to learn. Row r of step i's global
# batch is a function of (seed, i, r) alone, which is what makes a resumed run identical and lets
# each process generate (read) only the rows its own devices hold.


@functools.cache
def bigram_table(seed: int, vocab: int) -> np.ndarray:
  return np.random.default_rng(seed).dirichlet(np.full(vocab, 0.05), vocab)


def rows_at(config: Config, step: int, rows: range) -> tuple[np.ndarray, np.ndarray]:
  """``tokens [len(rows), T]`` and a boolean ``mask`` (padding at the end of some sequences) of
  the given rows of step ``step``'s global batch."""
  table = bigram_table(config.seed, config.vocab)
  tokens = np.zeros((len(rows), config.seq), np.int32)
  mask = np.zeros((len(rows), config.seq), bool)
  for i, row in enumerate(rows):
    rng = np.random.default_rng([config.seed, step, row])
    tokens[i, 0] = rng.integers(0, config.vocab)
    for t in range(1, config.seq):
      cumulative = table[tokens[i, t - 1]].cumsum()
      tokens[i, t] = min(int((cumulative < rng.random()).sum()), config.vocab - 1)
    mask[i] = np.arange(config.seq) < rng.integers(config.seq // 2, config.seq + 1)
  return tokens, mask


def batch_at(config: Config, step: int) -> tuple[np.ndarray, np.ndarray]:
  """The whole global batch of step ``step``: ``tokens [B, T]`` and ``mask [B, T]``."""
  return rows_at(config, step, range(config.batch))


def global_batch_at(config: Config, step: int, mesh) -> tuple[jax.Array, jax.Array]:
  """Step ``step``'s batch as global arrays with rows split over the mesh's data axis. Each
  process generates only the rows of its own devices' shards (``make_array_from_callback`` asks
  it for those alone); with one process and no mesh, the whole batch."""
  if mesh is None:
    return tuple(jnp.asarray(x) for x in batch_at(config, step))
  sharding = NamedSharding(mesh, P("data", None))
  pieces = {}

  def piece(index, which):
    rows = range(*index[0].indices(config.batch))
    if rows not in pieces:
      pieces[rows] = rows_at(config, step, rows)
    return pieces[rows][which]
  shape = (config.batch, config.seq)
  return (jax.make_array_from_callback(shape, sharding, lambda index: piece(index, 0)),
          jax.make_array_from_callback(shape, sharding, lambda index: piece(index, 1)))


# ----------------------------------------------------------------------------------------------
# Loss, gradient accumulation, optimizer.


def token_sum_loss(params, graphdef, cost, tokens, mask, mesh):
  """Sum over the target tokens of the published EMO + CE mix (the head goes to the one-pass
  loss; no [tokens, V] logits), with the vocabulary split over the mesh's model axis."""
  model = nnx.merge(graphdef, params)
  hidden = model(tokens[:, :-1])
  hidden = hidden.reshape(-1, hidden.shape[-1])
  return emoloss.fused_loss(hidden, model.head[...], tokens[:, 1:].reshape(-1), cost,
                            per_token=emoloss.emo_ce_per_token(mode=1), reduction="sum",
                            where=mask[:, 1:].reshape(-1), mesh=mesh, data_axis="data",
                            model_axis="model")


def accumulated_gradients(params, graphdef, cost, tokens, mask, micro_batches, mesh=None):
  """``(loss, grads)`` of the full batch's token mean, as the float32 sum over ``micro_batches``
  pieces (strided: rows ``j::micro_batches``) of ``∇(token sum of the piece) / (target tokens
  of the whole batch)``."""
  count = jnp.maximum(jnp.sum(mask[:, 1:]), 1).astype(jnp.float32)
  # Micro-batch j holds rows j, j + micro_batches, ...: each data shard (a contiguous block of
  # rows) contributes equally to every micro-batch, so no rows move between devices.
  split = lambda x: jnp.swapaxes(x.reshape((-1, micro_batches) + x.shape[1:]), 0, 1)
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
  """A ``(data, model)`` mesh over the first ``DATA * MODEL`` devices. ``jax.devices()`` lists
  the devices process by process, so with several processes the ``data`` axis runs across
  processes (each holds a contiguous block of the batch's rows) and ``model`` within one first."""
  if shape is None:
    return None
  devices = np.array(jax.devices()[: shape[0] * shape[1]]).reshape(shape)
  return Mesh(devices, ("data", "model"))


def param_spec(path, _) -> P:
  """The head's rows over the model axis; everything else replicated."""
  return P("model", None) if any(getattr(k, "key", None) == "head" for k in path) else P()


def place(tree, mesh, spec_fn):
  """Global arrays of the (identical on every process) host values of ``tree``: each process
  fills only the shards of its own devices."""
  if mesh is None:
    return tree

  def put(path, x):
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, NamedSharding(mesh, spec_fn(path, x)),
                                        lambda index: value[index])
  return jax.tree_util.tree_map_with_path(put, tree)


def init(config: Config, mesh):
  """``(graphdef, params, opt_state, cost)``: the cost embeddings of EMO are a frozen float32
  copy of the initial head (in a fine-tuning run: the pretrained model's head). Every process
  computes the same initial values from ``config.seed``."""
  model = Decoder(config, nnx.Rngs(config.seed))
  graphdef, params = nnx.split(model, nnx.Param)
  opt_state = optimizer(config).init(float32(params))
  cost = model.head[...].astype(jnp.float32)
  return (graphdef, place(params, mesh, param_spec),
          place(opt_state, mesh, param_spec),  # the moments sharded as their parameters
          place(cost, mesh, lambda *_: P("model", None)))


def checkpoints(directory) -> ocp.CheckpointManager:
  """Orbax's manager of the step checkpoints in ``directory`` (one sub-folder per step). Every
  process writes its own shards of the same checkpoint; a step's folder is written under a
  temporary name and renamed when every process has finished, so an interrupted save leaves no
  step folder and ``latest_step()`` is always a complete checkpoint. With several hosts the
  folder must be one that all of them see (a shared file system, or ``gs://...``)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
  directory = str(directory)
  if "://" not in directory:
    directory = os.path.abspath(directory)
  return ocp.CheckpointManager(epath.Path(directory), options=options)


def restore(manager: ocp.CheckpointManager, step: int, params, opt_state):
  """``(params, opt_state)`` of checkpoint ``step``, with the shardings and dtypes of the given
  (freshly initialised) trees."""
  target = {"params": params, "opt_state": opt_state}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return restored["params"], restored["opt_state"]


def train(config: Config, mesh=None, *, checkpoint_dir: str | Path | None = None,
          save_every: int = 0, stop: int | None = None, log=print):
  """Trains up to step ``stop`` (default ``config.steps``). With ``checkpoint_dir``, resumes from
  its latest complete checkpoint if there is one, and saves ``(params, opt_state)`` every
  ``save_every`` steps (0: never) and at ``stop``. Returns ``(params, opt_state, losses)``, the
  losses of the steps run here."""
  graphdef, params, opt_state, cost = init(config, mesh)
  stop = config.steps if stop is None else stop
  manager, start = None, 0
  if checkpoint_dir is not None:
    manager = checkpoints(checkpoint_dir)
    latest = manager.latest_step()
    if latest is not None:
      params, opt_state = restore(manager, latest, params, opt_state)
      start = latest
      log(f"resumed from the checkpoint of step {latest} in {checkpoint_dir}")
  step_fn = make_step(config, graphdef, mesh)
  losses = []
  for i in range(start, stop):
    tokens, mask = global_batch_at(config, i, mesh)
    params, opt_state, loss = step_fn(params, opt_state, cost, tokens, mask)
    losses.append(float(loss))
    if manager is not None and (i + 1 == stop or (save_every and (i + 1) % save_every == 0)):
      manager.save(i + 1, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
                   force=True)
  if manager is not None:
    manager.wait_until_finished()
    manager.close()
  return params, opt_state, losses


def host_values(tree):
  """NumPy copies of global arrays (gathered from every process when there are several)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)


def fingerprint(params) -> str:
  """SHA-256 of the parameters' bytes: equal fingerprints are equal parameters bit for bit."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(host_values(params)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def resume_is_bit_for_bit(config: Config, mesh, directory: Path) -> bool:
  """Trains ``config.steps`` in one go, and again as two halves through a checkpoint: the
  final parameters must be identical bit for bit."""
  straight, _, _ = train(config, mesh)
  train(config, mesh, checkpoint_dir=directory, stop=config.steps // 2)
  resumed, _, _ = train(config, mesh, checkpoint_dir=directory)
  same = jax.tree.map(np.array_equal, host_values(straight), host_values(resumed))
  return all(jax.tree.leaves(same))


# ----------------------------------------------------------------------------------------------
# Command line: one process, or one of several joined by jax.distributed.


def distributed_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group(
      "several processes", "one process per host (or per GPU) joined by jax.distributed; every "
      "process runs this same command with its own --process-id")
  group.add_argument("--distributed", action="store_true",
                     help="join a multi-process run; without the three settings below, "
                     "jax.distributed.initialize() detects them (TPU pod, SLURM, Open MPI, "
                     "Kubernetes)")
  group.add_argument("--coordinator-address", metavar="HOST:PORT",
                     help="process 0's address and a free port (implies --distributed)")
  group.add_argument("--num-processes", type=int, metavar="N")
  group.add_argument("--process-id", type=int, metavar="I", help="0 .. N-1")
  group.add_argument("--heartbeat-timeout", type=int, default=60, metavar="SECONDS",
                     help="a process silent this long is declared lost and every other process "
                     "stops with an error naming it (default %(default)s)")
  group.add_argument("--initialization-timeout", type=int, default=300, metavar="SECONDS",
                     help="how long to wait for every process to join (default %(default)s)")


def initialize_distributed(args) -> None:
  """``jax.distributed.initialize`` from the command line (before any other use of JAX). On
  CPUs the collectives between processes go through gloo (TCP)."""
  settings = (args.coordinator_address, args.num_processes, args.process_id)
  if not args.distributed and all(x is None for x in settings):
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      args.coordinator_address, args.num_processes, args.process_id,
      initialization_timeout=args.initialization_timeout,
      heartbeat_timeout_seconds=args.heartbeat_timeout)


def check_arguments(parser: argparse.ArgumentParser, args, config: Config) -> None:
  """Usage errors (exit status 2 and a message naming the option) for settings the run cannot
  use, before anything is trained."""
  if args.steps < 1:
    parser.error(f"--steps must be at least 1, got {args.steps}")
  if args.micro_batches < 1 or config.batch % args.micro_batches:
    parser.error(f"--micro-batches must be a divisor of the batch of {config.batch} sequences "
                 f"(1, 2, 4, 8 or 16), got {args.micro_batches}")
  if args.save_every < 0:
    parser.error(f"--save-every must be 0 (never) or positive, got {args.save_every}")
  if args.stop_at is not None and not 1 <= args.stop_at <= args.steps:
    parser.error(f"--stop-at must lie in [1, --steps], got {args.stop_at}")
  if (args.save_every or args.stop_at is not None) and args.checkpoint_dir is None:
    parser.error("--save-every and --stop-at need --checkpoint-dir")
  if args.check_resume and jax.process_count() > 1:
    parser.error("--check-resume runs in one process (with several, train with --stop-at and "
                 "run again: the second run resumes)")
  if args.mesh is None:
    return
  data, model = args.mesh
  if data < 1 or model < 1:
    parser.error(f"--mesh sizes must be positive, got {data} {model}")
  if data * model > jax.device_count():
    parser.error(f"--mesh {data} {model} needs {data * model} devices; there are "
                 f"{jax.device_count()}")
  if jax.process_count() > 1 and data * model != jax.device_count():
    parser.error(f"--mesh {data} {model} must use all {jax.device_count()} devices of the "
                 f"{jax.process_count()} processes")
  if (config.batch // args.micro_batches) % data:
    parser.error(f"--mesh: DATA={data} must divide the micro-batch of "
                 f"{config.batch // args.micro_batches} sequences (batch {config.batch} / "
                 f"--micro-batches {args.micro_batches})")
  if config.vocab % model:
    parser.error(f"--mesh: MODEL={model} must divide the vocabulary of {config.vocab}")


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      epilog="several processes on one machine: python examples/launch_local.py --processes 2 "
      "--devices-per-process 2 -- examples/lm_training.py --mesh 2 2")
  parser.add_argument("--steps", type=int, default=Config.steps)
  parser.add_argument("--micro-batches", type=int, default=Config.micro_batches)
  parser.add_argument("--dtype", default=Config.dtype, choices=["bfloat16", "float32"])
  parser.add_argument("--mesh", type=int, nargs=2, default=None, metavar=("DATA", "MODEL"),
                      help="data x model mesh (needs DATA * MODEL devices; with several "
                      "processes, all of them; default with several processes: DATA = all)")
  parser.add_argument("--checkpoint-dir", default=None,
                      help="Orbax checkpoints (a local folder, or gs://... with several hosts); "
                      "a run resumes from the latest complete one there")
  parser.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                      help="also save every STEPS steps (default: only at the end)")
  parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                      help="stop (and save) after step STEP; a later run resumes there")
  parser.add_argument("--check-resume", action="store_true",
                      help="also train through an Orbax checkpoint and compare bit for bit")
  distributed_arguments(parser)
  args = parser.parse_args(argv)
  config = Config(steps=args.steps, micro_batches=max(args.micro_batches, 1), dtype=args.dtype)
  initialize_distributed(args)
  if args.mesh is None and jax.process_count() > 1:
    args.mesh = [jax.device_count(), 1]
  check_arguments(parser, args, config)
  log = print if jax.process_index() == 0 else (lambda *_, **__: None)
  mesh = make_mesh(tuple(args.mesh) if args.mesh else None)
  if jax.process_count() > 1:
    log(f"{jax.process_count()} processes, {jax.device_count()} devices, mesh "
        f"{dict(mesh.shape)}; each process reads the batch rows of its own devices")
  params, _, losses = train(config, mesh, checkpoint_dir=args.checkpoint_dir,
                            save_every=args.save_every, stop=args.stop_at, log=log)
  stop = args.stop_at or args.steps
  if losses:
    log(f"loss (token-mean EMO + CE) over steps {stop - len(losses) + 1}..{stop}: "
        f"{losses[0]:.4f} -> {losses[-1]:.4f}")
  result = {"losses": losses, "fingerprint": fingerprint(params)}
  log(f"parameters after step {stop}: sha256 {result['fingerprint']}")
  if args.check_resume:
    with tempfile.TemporaryDirectory() as directory:
      result["resume_bit_for_bit"] = resume_is_bit_for_bit(config, mesh, Path(directory))
    log("resumed from the checkpoint bit for bit:", result["resume_bit_for_bit"])
  return result


if __name__ == "__main__":
  main()
