"""Training with resumable ``.npz`` checkpoints and best-by-validation checkpoint choice.

One compiled train step serves every run: the graph definition and the objectives are static,
the objective an index into them (``lax.switch``), the learning rate an argument. A run
(:func:`train_run`) evaluates the validation NLL every ``eval_every`` steps, keeps the parameters
with the lowest one (as the EMO paper picks its checkpoint by validation loss), and checkpoints
its full state at each evaluation, so an interrupted run continues from the last one with the
same batches.

Checkpoints are plain ``.npz`` files (flattened nnx state by key path + JSON metadata):
``orbax-checkpoint`` is installed, but these models have a few hundred thousand parameters and
are saved ~10 times per run, where orbax's directory layout and asynchronous machinery add more
time than the write itself; ``.npz`` is one atomic file per run.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import emoloss
from benchmarks import outputs
from benchmarks.lm import data as data_lib
from benchmarks.lm import metrics
from benchmarks.lm.config import UsageError
from benchmarks.lm.model import ModelConfig, build_model
from benchmarks.lm.objectives import Objective, token_loss


class LossPath(NamedTuple):
  """Static settings of the loss computation."""
  fused: bool = False
  chunk_size: int = 1024


def _nll_and_emo(hidden, head, targets, cost, with_emo: bool, path: LossPath):
  if path.fused:
    out = emoloss.fused_token_stats(hidden, head, targets, cost if with_emo else None,
                                    chunk_size=path.chunk_size)
    return out.nll, out.emo
  logits = jnp.einsum("btd,vd->btv", hidden, head)
  nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, targets)
  return nll, (emoloss.emo_loss(logits, targets, cost) if with_emo else None)


def objective_losses(objective: Objective, hidden, head, targets, cost, path: LossPath):
  """Per-token ``(loss, nll)`` of ``objective``; EMO is computed only for the EMO family, with
  the cost embedding ``cost`` (``objective.cost`` ``"base"`` or ``"given"``), the model's own
  ``head`` under stop-gradient (``"own"``), or none (``"identity"``: EMO from the NLL)."""
  if objective.cost == "own":
    cost = jax.lax.stop_gradient(head)
  with_emo = objective.family == "emo" and objective.cost != "identity"
  nll, emo = _nll_and_emo(hidden, head, targets, cost, with_emo, path)
  return token_loss(objective, nll, emo), nll


def scale_by_learning_rate_argument() -> optax.GradientTransformationExtraArgs:
  """``u -> -learning_rate * u`` with ``learning_rate`` passed to ``update`` (a traced scalar),
  so the schedule lives outside the compiled step and every run shares one program."""

  def update_fn(updates, state, params=None, *, learning_rate, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda u: -learning_rate * u, updates), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


@functools.cache
def adamw(weight_decay: float) -> optax.GradientTransformationExtraArgs:
  """Clipping at global norm 1, Adam, decoupled weight decay, learning rate per step."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(),
                     optax.add_decayed_weights(weight_decay), scale_by_learning_rate_argument())


def learning_rate_schedule(peak_lr: float, steps: int, warmup_steps: int):
  """Linear warmup to ``peak_lr``, cosine decay to 10 % of it at ``steps``."""
  warmup = min(warmup_steps, max(1, steps // 5))
  return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup, max(steps, warmup + 1),
                                            end_value=0.1 * peak_lr)


@functools.partial(jax.jit, static_argnames=("graphdef", "objectives", "path"),
                   donate_argnames=("state",))
def train_step(graphdef, state, tokens, cost, objective_index, learning_rate, *,
               objectives: tuple[Objective, ...], path: LossPath):
  """One AdamW step of ``objectives[objective_index]`` on ``tokens [B, T + 1]``; returns the new
  state and the batch-mean loss and NLL."""
  model, optimizer = nnx.merge(graphdef, state)
  branches = [functools.partial(objective_losses, o, path=path) for o in objectives]

  def loss_fn(model):
    hidden = model.hidden_states(tokens[:, :-1])
    loss, nll = jax.lax.switch(objective_index, branches, hidden, model.head, tokens[:, 1:],
                               cost)
    return jnp.mean(loss), jnp.mean(nll)

  (loss, nll), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads, learning_rate=learning_rate)
  return nnx.state((model, optimizer)), loss, nll


# ----------------------------------------------------------------------------------------------
# Checkpoints


def flatten_state(state, prefix: str) -> dict[str, np.ndarray]:
  """``{prefix + key path: array}`` of a pytree."""
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return {f"{prefix}{jax.tree_util.keystr(k)}": np.asarray(v) for k, v in leaves}


def unflatten_state(stored, template, prefix: str, path: str):
  """The pytree ``template`` filled from ``stored`` (an open ``.npz``)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  restored = []
  for key, leaf in leaves:
    name = f"{prefix}{jax.tree_util.keystr(key)}"
    if name not in stored.files or stored[name].shape != np.shape(leaf):
      raise UsageError(f"checkpoint {os.path.basename(path)} does not match the model ({name}); "
                       f"rerun with --overwrite or another --out.")
    restored.append(jnp.asarray(stored[name], dtype=np.asarray(leaf).dtype))
  return jax.tree_util.tree_unflatten(treedef, restored)


def save_checkpoint(path: str, trees: dict[str, Any], meta: dict) -> None:
  """Several pytrees (by name) and JSON ``meta`` in one atomic ``.npz``."""
  arrays = {}
  for name, tree in trees.items():
    arrays.update(flatten_state(tree, f"{name}:"))
  data_lib.atomic_savez(path, __meta__=np.asarray(json.dumps(meta)), **arrays)


def load_checkpoint(path: str, templates: dict[str, Any]) -> tuple[dict[str, Any], dict]:
  """The pytrees saved by :func:`save_checkpoint` in the structure of ``templates``, and meta
  (a damaged file is a UsageError naming it and the remedy)."""
  def load(path):
    with np.load(path) as stored:
      trees = {name: unflatten_state(stored, t, f"{name}:", path)
               for name, t in templates.items()}
      meta = json.loads(str(stored["__meta__"]))
    return trees, meta
  return outputs.load_cached(path, load)


def load_model(path: str, model_config: ModelConfig, which: str = "best"):
  """The model saved in a run's checkpoint (``which``: ``"best"`` or ``"final"``)."""
  model = build_model(model_config, 0)
  trees, _ = load_checkpoint(path, {which: nnx.state(model)})
  nnx.update(model, trees[which])
  return model


# ----------------------------------------------------------------------------------------------
# A run


class Run(NamedTuple):
  """One training run: ``objectives[objective_index]`` on ``stream`` from ``init_state``."""
  name: str                      # checkpoint file stem
  objective_index: int
  stream: np.ndarray
  steps: int
  lr: float
  seed: int                      # batch order (with phase)
  phase: int                     # 0 pretraining, 1 fine-tuning


def train_run(run: Run, *, model_config: ModelConfig, objectives: tuple[Objective, ...],
              init_state, cost, val_sets: dict, batch_size: int, eval_batch_size: int,
              eval_every: int,
              warmup_steps: int, weight_decay: float, path: LossPath, out_dir: str,
              progress: bool = True, log=print) -> tuple[Any, dict]:
  """Trains (or resumes, or loads) ``run``; returns the best model state by the NLL on the first
  of ``val_sets`` (name -> (windows, mask)) and the run's record (validation curves of every
  set, training loss, best step, seconds)."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  checkpoint = os.path.join(out_dir, f"{run.name}.npz")
  model = build_model(model_config, 0)
  nnx.update(model, jax.tree.map(jnp.array, init_state))  # copies: the step donates its state
  optimizer = nnx.Optimizer(model, adamw(weight_decay), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  best = nnx.state(model)
  record = {"objective": objectives[run.objective_index].name, "steps": [], "train_loss": [],
            "train_nll": [], "curves": {}, "best_step": 0, "best_nll": None, "seconds": 0.0}
  step = 0
  if os.path.exists(checkpoint):
    trees, record = load_checkpoint(checkpoint, {"state": state, "best": best})
    state, best, step = trees["state"], trees["best"], record["step"]
    if record.get("done"):
      return best, record
    log(f"{run.name}: resuming from step {step}")

  schedule = learning_rate_schedule(run.lr, run.steps, warmup_steps)
  first = next(iter(val_sets))

  def evaluate_now(at_step: int):
    nonlocal best
    model, _ = nnx.merge(graphdef, state)
    for name, (windows, mask) in val_sets.items():
      result = metrics.evaluate(model, windows, mask, eval_batch_size)
      curve = record["curves"].setdefault(name, {"step": []})
      curve["step"].append(at_step)
      for metric in ("nll", "accuracy"):
        curve.setdefault(metric, []).append(result[metric])
    value = record["curves"][first]["nll"][-1]
    if record["best_nll"] is None or value < record["best_nll"]:
      record["best_nll"], record["best_step"] = value, at_step
      best = jax.tree.map(jnp.array, nnx.state(model))

  def save(done: bool):
    save_checkpoint(checkpoint, {"state": state, "best": best}, dict(record, step=step,
                                                                     done=done))

  if step == 0:
    evaluate_now(0)
  started = time.perf_counter() - record["seconds"]
  bar = tqdm(total=run.steps, initial=step, desc=run.name, disable=not progress,
             dynamic_ncols=True, leave=False)
  window = []
  while step < run.steps:
    tokens = data_lib.batch_at(run.stream, run.seed, run.phase, step, batch_size,
                               model_config.seq_len)
    state, loss, nll = train_step(graphdef, state, tokens, cost, np.int32(run.objective_index),
                                  np.float32(schedule(step)), objectives=objectives, path=path)
    step += 1
    window.append((loss, nll))
    if step % 10 == 0 or step == run.steps:
      values = np.asarray(window, np.float64)
      if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"{run.name}: non-finite loss at step {step}.")
      record["steps"].append(step)
      record["train_loss"].append(float(values[:, 0].mean()))
      record["train_nll"].append(float(values[:, 1].mean()))
      window = []
      bar.set_postfix(loss=f"{record['train_loss'][-1]:.3f}", refresh=False)
      bar.update(step - bar.n)
    if step % eval_every == 0 or step == run.steps:
      evaluate_now(step)
      record["seconds"] = time.perf_counter() - started
      save(done=step == run.steps)
  bar.close()
  return best, record
