"""Shared pieces of the classification experiments: data, model, training loop, metrics, output.

Every experiment trains a small Flax NNX model full-batch, several seeds at once: the model is
split into a graph definition and a parameter pytree, the parameters of the seeds are stacked on
a leading axis and the whole training step is ``jax.vmap``-ed over it; steps run inside
``jax.lax.scan`` in chunks of ``eval_every`` steps, and metrics are taken between chunks (the
progress bar advances per chunk).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import outputs
from benchmarks.machine import machine_description

Array = jax.Array
Batch = Mapping[str, Array]

RESULTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "results"


# ----------------------------------------------------------------------------------------------
# Command line and output.


QUICK_DIR = pathlib.Path(outputs.quick_output_dir("classification_quick"))


def base_parser(description: str,
                seeds: tuple[int, int] | None = None) -> argparse.ArgumentParser:
  """Arguments shared by every experiment: ``--quick``, ``--out``, ``--seeds``, ``--first-seed``,
  ``--no-progress``; ``seeds`` is the experiment's ``(full, quick)`` number of seeds (``None``:
  a deterministic experiment that uses no seed). Every option's help shows its default."""
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=outputs.HelpFormatter)
  parser.add_argument(
      "--quick", action="store_true",
      help="reduced size for CI; writes into runs/classification_quick/ unless --out is given "
      "(never into benchmarks/results/)")
  parser.add_argument(
      "--out", type=pathlib.Path, default=None,
      help="output folder (default: benchmarks/results/, the committed results, for a full run; "
      "runs/classification_quick/ with --quick)")
  seeds_help = ("number of paired seeds (default: "
                + (f"{seeds[0]}; --quick: {seeds[1]})" if seeds else
                   "none: this experiment is deterministic and uses no seed)"))
  parser.add_argument("--seeds", type=int, default=None, help=seeds_help)
  parser.add_argument("--first-seed", type=int, default=0,
                      help="seeds are first-seed, first-seed + 1, ...")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
  return parser


def output_dir(args: argparse.Namespace) -> pathlib.Path:
  """``--out`` if given; else ``benchmarks/results`` (full run) or ``runs/classification_quick``
  (``--quick``, which never writes into ``benchmarks/results``); checked before any training
  (an unusable folder exits with a message, status 2)."""
  if args.out is not None:
    path = pathlib.Path(args.out)
  elif args.quick:
    path = QUICK_DIR
  else:
    path = RESULTS_DIR
  try:
    outputs.check_output_dir(str(path), "--out")
    if args.quick:
      outputs.check_quick_destination(str(path), "--out")
  except outputs.UsageError as error:
    print(f"{pathlib.Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
    raise SystemExit(2) from None
  path.mkdir(parents=True, exist_ok=True)
  return path


def machine_info() -> dict[str, Any]:
  """Where and with what a result was produced (:func:`benchmarks.machine.machine_description`)."""
  return machine_description()


def _to_jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return _to_jsonable(np.asarray(value).tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if np.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  if isinstance(value, pathlib.Path):
    return str(value)
  return value


def save_results(
    out: pathlib.Path, name: str, results: dict[str, Any], figure, markdown: str | None = None
) -> dict[str, pathlib.Path]:
  """Writes ``cls_<name>.json``, ``cls_<name>.png`` and (if given) ``cls_<name>.md`` into
  ``out``, each atomically (:mod:`benchmarks.outputs`); prints and returns their paths."""
  import matplotlib.pyplot as plt

  files = {"json": out / f"cls_{name}.json", "png": out / f"cls_{name}.png"}
  if markdown is not None:
    files["md"] = out / f"cls_{name}.md"
  outputs.save_figure(figure, str(files["png"]), dpi=110, bbox_inches="tight")
  plt.close(figure)
  outputs.write_json(str(files["json"]), _to_jsonable(results))
  if markdown is not None:
    outputs.write_text(str(files["md"]), markdown)
  if out.resolve() == RESULTS_DIR.resolve():
    note = "the committed results in benchmarks/results/, the default of a full run"
  elif out.resolve() == QUICK_DIR.resolve():
    note = "a --quick run writes into runs/classification_quick/, never benchmarks/results/"
  else:
    note = ""
  outputs.report_outputs([str(p) for p in files.values()], print, note)
  return files


def results_record(
    name: str,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    extra_config: Mapping[str, Any],
    methods: Mapping[str, Any],
    table: str,
    *,
    seconds: Any = None,
    curves: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The JSON record of one experiment run (before :func:`save_results` adds ``"files"``).

  Keys, in order: ``experiment``, ``command``, ``config`` (the parsed arguments without ``out``,
  updated with ``extra_config``), ``machine``, ``methods``, ``seconds`` and ``curves`` (each only
  when given), ``table``.
  """
  config = {key: value for key, value in vars(args).items() if key != "out"}
  record = {
      "experiment": name,
      "command": command_line(f"benchmarks.classification.{name}", argv),
      "config": {**config, **extra_config},
      "machine": machine_info(),
      "methods": methods,
  }
  if seconds is not None:
    record["seconds"] = seconds
  if curves is not None:
    record["curves"] = curves
  record["table"] = table
  return record


def new_figure(ncols: int, width: float = 4.6, height: float = 3.6):
  """A row of ``ncols`` axes with the non-interactive Agg backend."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  figure, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
  return figure, list(axes[0])


def plot_mean_curves(
    axes: Sequence[Any],
    runs: Mapping[str, TrainResult],
    metrics: Sequence[str],
    titles: Sequence[str],
    *,
    symlog_linthresh: float | None = None,
    axis_settings: Sequence[Mapping[str, Any]] | None = None,
) -> None:
  """On ``axes[i]``, one line per method: ``metrics[i]`` averaged over seeds, against the step.

  Each axis gets its title from ``titles``, the x label "step" and a light grid; the step axis is
  symlog (linear below ``symlog_linthresh``) when that is given. ``axis_settings[i]`` are further
  ``Axes.set`` keywords of axis ``i`` (``ylim``, ``yscale``), applied right after its lines (before
  the symlog step axis, which changes how the x margins come out). Lines are labelled with the
  method names; the caller places the legend (after any lines of its own).
  """
  for index, (ax, metric, title) in enumerate(zip(axes, metrics, titles, strict=True)):
    for name, run in runs.items():
      ax.plot(run.steps, run.history[metric].mean(0), label=name)
    if axis_settings is not None:
      ax.set(**axis_settings[index])
    ax.set_title(title)
    ax.set_xlabel("step")
    if symlog_linthresh is not None:
      ax.set_xscale("symlog", linthresh=symlog_linthresh)
    ax.grid(alpha=0.3)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table (floats with 3 decimals), printable and pasteable into a README."""

  def cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
      return f"{value:.3f}"
    return str(value)

  text_rows = [[cell(v) for v in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in text_rows)) for i, h in enumerate(headers)]
  line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
  separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(headers), separator] + [line(r) for r in text_rows])


def mean_std(values: Any) -> str:
  """``"mean ± std"`` over seeds (axis 0)."""
  values = np.asarray(values, np.float64)
  return f"{values.mean():.3f} ± {values.std():.3f}"


def progress_bar(total: int, description: str, disable: bool):
  """A tqdm bar on stderr (``disable`` hides it)."""
  from tqdm.auto import tqdm

  return tqdm(total=total, desc=description, disable=disable, file=sys.stderr, leave=False)


def command_line(module: str, argv: Sequence[str] | None) -> str:
  """The command that reproduces a run."""
  args = list(sys.argv[1:] if argv is None else argv)
  return " ".join(["python -m", module] + args)


# ----------------------------------------------------------------------------------------------
# Data (bundled with scikit-learn, never downloaded).


def load_digits_scaled() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled 8x8 digits: ``x [1797, 64]`` float32 in ``[0, 1]``, ``y [1797]``."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def stack_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, Array]:
  """Stacks per-seed batches (same shapes) on a new leading seed axis."""
  return {key: jnp.stack([jnp.asarray(b[key]) for b in batches]) for key in batches[0]}


def stacked_splits(make_split: Callable[[int], tuple[Mapping, Mapping]],
                   seeds: Sequence[int]) -> tuple[dict[str, Array], dict[str, Array]]:
  """``(train, test)`` batches of every seed's split ``make_split(seed)``, stacked on a leading
  seed axis."""
  splits = [make_split(seed) for seed in seeds]
  return (stack_batches([train for train, _ in splits]),
          stack_batches([test for _, test in splits]))


# ----------------------------------------------------------------------------------------------
# Model.


class MLP(nnx.Module):
  """A multilayer perceptron with ReLU between ``nnx.Linear`` layers of the given widths."""

  def __init__(self, widths: Sequence[int], *, rngs: nnx.Rngs):
    self.layers = nnx.List(
        [nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])

  def __call__(self, x: Array) -> Array:
    for layer in self.layers[:-1]:
      x = jax.nn.relu(layer(x))
    return self.layers[-1](x)


@dataclasses.dataclass(frozen=True)
class StackedModel:
  """An NNX graph definition and the parameters of several seeds stacked on axis 0."""

  graphdef: Any
  params: Any

  def apply(self, params: Any, x: Array) -> Array:
    """Logits of one seed's ``params`` (inside ``vmap``) on ``x``."""
    return nnx.merge(self.graphdef, params)(x)


def init_mlp(widths: Sequence[int], seeds: Sequence[int]) -> StackedModel:
  """One :class:`MLP` per seed, parameters stacked on a leading seed axis.

  The module is built abstractly (``nnx.eval_shape``) and its parameters drawn with NumPy:
  LeCun-normal kernels (``N(0, 1/fan_in)``, as Flax's default but not truncated) and zero biases.
  JAX's random initialisers would compile once per layer shape, seconds on a loaded CPU, which is
  most of a ``--quick`` run.
  """
  abstract = nnx.eval_shape(lambda: MLP(widths, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)

  def draw(rng: np.random.Generator):
    def leaf(path, shaped):
      if "kernel" in (getattr(entry, "key", None) for entry in path):
        fan_in = shaped.shape[0]
        return rng.standard_normal(shaped.shape).astype(np.float32) / np.sqrt(fan_in)
      return np.zeros(shaped.shape, np.float32)

    return jax.tree_util.tree_map_with_path(leaf, abstract_state)

  states = [draw(np.random.default_rng(int(seed))) for seed in seeds]
  return StackedModel(graphdef, jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *states))


# ----------------------------------------------------------------------------------------------
# Training.


@dataclasses.dataclass
class TrainResult:
  """One method's runs (seed axis first everywhere).

  Attributes:
    params: final parameters ``[S, ...]``.
    steps: ``[E]`` step numbers of the evaluations (0, ``eval_every``, ..., ``num_steps``).
    history: metric name -> ``[S, E]`` values at ``steps``.
    objective: ``[S, num_steps]`` the training objective at every step (before its update).
    seconds: wall-clock seconds of the whole :func:`train` call (all methods, compilation
      included).
  """

  params: Any
  steps: np.ndarray
  history: dict[str, np.ndarray]
  objective: np.ndarray
  seconds: float


def reads_params(objective: Callable[[Array, Batch, Any], Array]) -> Callable[..., Array]:
  """Marks a training objective ``(logits, batch, params) -> scalar`` that also reads one seed's
  parameters (e.g. the class-weight norms of :func:`output_kernel`) for :func:`train`."""
  objective.reads_params = True
  return objective


def _with_params_argument(objective: Callable[..., Array]) -> Callable[..., Array]:
  if getattr(objective, "reads_params", False):
    return objective
  return lambda logits, batch, params: objective(logits, batch)


def output_kernel(params: Any) -> Array:
  """The last layer's kernel ``[hidden, V]`` of one seed's :class:`MLP` parameters (column ``i``
  is class ``i``'s weight vector ``u_i``)."""
  layers = params["layers"]
  return jnp.asarray(layers[max(layers.keys())]["kernel"][...])


def _tile(tree: Any, times: int) -> Any:
  return jax.tree.map(lambda x: jnp.concatenate([x] * times, axis=0), tree)


def train(
    model: StackedModel,
    objectives: Mapping[str, Callable[[Array, Batch], Array]],
    optimizer: optax.GradientTransformation,
    train_batch: Batch,
    eval_batch: Batch,
    evaluate: Callable[[Array, Batch, Array, Batch], dict[str, Array]],
    *,
    num_steps: int,
    eval_every: int,
    hyperparams: Mapping[str, Sequence[float]] | None = None,
    progress=None,
) -> dict[str, TrainResult]:
  """Full-batch training of every (method, seed) pair at once, in one compiled program.

  Every method starts from the same initial parameters of each seed (paired comparison). The
  methods' objectives are selected per run with ``lax.switch`` on a run index (under ``vmap`` all
  branches are computed on the shared logits, which is cheap next to the model), so the training
  loop is compiled once however many methods are compared.

  Args:
    model: graph definition and stacked initial parameters ``[S, ...]``.
    objectives: method name -> ``(logits [N, V], batch) -> scalar`` training objective of one
      seed's batch, or ``(logits, batch, params) -> scalar`` for one marked with
      :func:`reads_params`. The batch also holds ``"step"``, the int32 index of the current
      step (0, 1, ...), for objectives with a schedule.
    optimizer: an Optax transformation shared by all methods; it gets ``value=`` the objective as
      an extra argument (for flooding), which plain transformations ignore.
    train_batch: dict of ``[S, N, ...]`` arrays with at least ``"x"``.
    eval_batch: dict of ``[S, M, ...]`` arrays with at least ``"x"``.
    evaluate: ``(train_logits, train_batch, eval_logits, eval_batch) -> {name: scalar}`` for one
      seed.
    num_steps: number of optimisation steps, a multiple of ``eval_every``.
    eval_every: steps between evaluations (one ``lax.scan`` chunk).
    hyperparams: optional name -> one value per method, written into the optimiser state of that
      method's runs with ``optax.tree_utils.tree_set`` (the optimizer must be built with
      ``optax.inject_hyperparams`` for these names).
    progress: optional tqdm bar, advanced by ``eval_every`` per chunk.

  Returns:
    method name -> :class:`TrainResult`.
  """
  if num_steps % eval_every:
    raise ValueError(f"num_steps={num_steps} must be a multiple of eval_every={eval_every}.")
  names = list(objectives)
  loss_fns = [_with_params_argument(objectives[n]) for n in names]
  num_methods = len(names)
  num_seeds = jax.tree.leaves(model.params)[0].shape[0]
  optimizer = optax.with_extra_args_support(optimizer)
  start = time.perf_counter()

  def objective(params, batch, method):
    logits = model.apply(params, batch["x"])
    if num_methods == 1:
      return loss_fns[0](logits, batch, params)
    return jax.lax.switch(method, loss_fns, logits, batch, params)

  def step(carry, index, batch, method):
    params, opt_state = carry
    value, grads = jax.value_and_grad(objective)(params, {**batch, "step": index}, method)
    updates, opt_state = optimizer.update(grads, opt_state, params, value=value)
    return (optax.apply_updates(params, updates), opt_state), value

  def chunk(params, opt_state, train_b, eval_b, method, first_step):
    """Evaluates ``params``, then takes ``eval_every`` steps from ``first_step``."""
    metrics = evaluate(model.apply(params, train_b["x"]), train_b,
                       model.apply(params, eval_b["x"]), eval_b)
    (new_params, opt_state), values = jax.lax.scan(
        lambda c, i: step(c, i, train_b, method), (params, opt_state),
        first_step + jnp.arange(eval_every, dtype=jnp.int32))
    return new_params, opt_state, values, metrics

  run_chunk = jax.jit(jax.vmap(chunk, in_axes=(0, 0, 0, 0, 0, None)))
  params = _tile(model.params, num_methods)
  train_b, eval_b = _tile(train_batch, num_methods), _tile(eval_batch, num_methods)
  method_index = jnp.repeat(jnp.arange(num_methods), num_seeds)
  opt_state = jax.vmap(optimizer.init)(params)
  for name, values in (hyperparams or {}).items():
    if len(values) != num_methods:
      raise ValueError(f"hyperparams[{name!r}] needs one value per method ({num_methods}).")
    per_run = jnp.repeat(jnp.asarray(values, jnp.float32), num_seeds)
    opt_state = optax.tree_utils.tree_set(opt_state, **{name: per_run})
  history, values = [], []
  num_chunks = num_steps // eval_every
  for index in range(num_chunks + 1):
    new_params, opt_state, chunk_values, metrics = run_chunk(
        params, opt_state, train_b, eval_b, method_index, jnp.int32(index * eval_every))
    history.append(metrics)
    if index == num_chunks:  # the last call only evaluates the final parameters
      break
    params = new_params
    values.append(chunk_values)
    if progress is not None:
      jax.block_until_ready(chunk_values)
      progress.update(eval_every)
  seconds = time.perf_counter() - start

  def per_method(tree, m):
    return jax.tree.map(lambda x: x[m * num_seeds:(m + 1) * num_seeds], tree)

  history = {k: np.stack([np.asarray(h[k]) for h in history], axis=1) for k in history[0]}
  objective_trace = np.concatenate([np.asarray(v) for v in values], axis=1)
  steps = np.arange(0, num_steps + 1, eval_every)
  return {
      name: TrainResult(per_method(params, m), steps, per_method(history, m),
                        per_method(objective_trace, m), seconds)
      for m, name in enumerate(names)
  }


def mean_curves(runs: Mapping[str, TrainResult]) -> dict[str, dict[str, np.ndarray]]:
  """Method name -> ``{"steps": [E], metric: [E] mean over seeds, ...}`` of every history metric."""
  return {name: {"steps": run.steps, **{k: v.mean(0) for k, v in run.history.items()}}
          for name, run in runs.items()}


def predict(model: StackedModel, params: Any, x: Array) -> Array:
  """Logits ``[S, M, V]`` of stacked ``params`` on stacked inputs ``x [S, M, D]``."""
  return jax.jit(jax.vmap(model.apply))(params, x)


# ----------------------------------------------------------------------------------------------
# Losses and metrics (one seed; the training loop vmaps them).


def mean_loss(per_example: Callable[..., Array], **kwargs) -> Callable[[Array, Batch], Array]:
  """``(logits, batch) -> mean_i per_example(logits, batch["y"], **kwargs)_i``."""

  def loss_fn(logits: Array, batch: Batch) -> Array:
    return jnp.mean(per_example(logits, batch["y"], **kwargs))

  return loss_fn


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy with integer labels (optax)."""
  return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: Array, labels: Array) -> Array:
  """Fraction of ``argmax(logits) == labels``."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def per_class_recall(logits: Array, labels: Array, num_classes: int) -> Array:
  """``[V]`` recall (accuracy within the class) of every class; NaN for an absent class."""
  predicted = jnp.argmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels, num_classes)
  hits = jnp.sum(onehot * (predicted == labels)[:, None], axis=0)
  counts = jnp.sum(onehot, axis=0)
  return jnp.where(counts > 0, hits / jnp.maximum(counts, 1.0), jnp.nan)


def binary_f1(predicted: Array, labels: Array) -> Array:
  """F1 of the positive class from boolean predictions and ``{0, 1}`` labels (0 if undefined)."""
  predicted = predicted.astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  true_positives = jnp.sum(predicted * labels)
  denominator = jnp.sum(predicted) + jnp.sum(labels)
  return jnp.where(denominator > 0, 2.0 * true_positives / jnp.maximum(denominator, 1.0), 0.0)


def first_step_reaching(steps: np.ndarray, curve: np.ndarray, target: float) -> float:
  """The first evaluation step at which ``curve >= target`` (NaN if never)."""
  hits = np.nonzero(np.asarray(curve) >= target)[0]
  return float(steps[hits[0]]) if hits.size else float("nan")
