"""Tiger with gradient accumulation vs AdamW and Lion with ``optax.MultiSteps``: state memory and
a small training comparison on digits.

Tiger keeps one momentum buffer and, with ``accumulation_steps=k``, uses that momentum as the
gradient accumulator (``m ← b_t m + (1-β)/k g``, parameters moved every ``k``-th micro-step), so
accumulation costs no extra buffer; AdamW and Lion need ``optax.MultiSteps``, which adds one
parameter-sized buffer to their one (Lion) or two (AdamW) moments.

1. **Optimiser-state bytes**, summed over the leaves of the actual states: of the digits MLP
   below (``tx.init`` on its parameters) and of two Flax NNX transformer LMs built with
   ``benchmarks.lm.model.TransformerLM``: the LM experiment's default size and a GPT-2-small
   shape (vocabulary 50257, width 768, 12 layers, context 1024), whose states are shaped with
   ``jax.eval_shape(tx.init, params)`` (the same pytree of shapes and dtypes, not allocated).
2. **Training**, micro-batches of 32 digits, ``k = 4`` micro-batches per update (128 examples
   per update), an MLP 64-128-128-10, with the same learning-rate grid for every optimiser and
   the rate chosen per optimiser by the mean final validation accuracy over seeds (each seed has
   its own train/validation/test split of scikit-learn's bundled digits, 60/20/20 %, its own
   initial parameters, shared by all optimisers, and its own micro-batch order); we report the
   test accuracy and loss at the chosen rate. Arms: ``emoloss.tiger(lr, accumulation_steps=4)``
   (weight decay 0.01, the reference's default), ``emoloss.grouped_tiger(lr,
   accumulation_steps=4)`` (the reference's groups and RMS-relative step), ``optax.MultiSteps(
   emoloss.tiger(lr), 4)`` (the same update as the first arm with MultiSteps' buffer: a check of
   the equivalence), ``optax.MultiSteps(optax.adamw(lr), 4)`` (weight decay 1e-4, optax's
   default) and ``optax.MultiSteps(optax.lion(lr), 4)`` (weight decay 1e-3, optax's default).

References: Su Jianlin, "Tiger: 一个'抠'到极致的优化器", https://kexue.fm/archives/9512,
2023-03-07, and https://github.com/bojone/tiger (``grad_accum_steps``); Chen et al., "Symbolic
Discovery of Optimization Algorithms" (Lion), NeurIPS 2023.

  python -m benchmarks.classification.tiger [--quick] [--out DIR] [--seeds N]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import emoloss
from benchmarks.classification import common
from benchmarks.machine import machine_summary

NAME = "tiger"
NUM_CLASSES = 10
WIDTHS = (64, 128, 128, NUM_CLASSES)
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
QUICK_LR_GRID = (1e-3, 3e-3, 1e-2)


def optimizers(k: int) -> dict[str, Callable[[float], optax.GradientTransformation]]:
  """Arm name -> ``lr -> transformation``; every arm accumulates ``k`` micro-batches."""
  return {
      f"Tiger (k={k})": lambda lr: emoloss.tiger(lr, accumulation_steps=k),
      f"grouped Tiger (k={k})": lambda lr: emoloss.grouped_tiger(lr, accumulation_steps=k),
      "Tiger + MultiSteps": lambda lr: optax.MultiSteps(emoloss.tiger(lr), k),
      "AdamW + MultiSteps": lambda lr: optax.MultiSteps(optax.adamw(lr, weight_decay=1e-4), k),
      "Lion + MultiSteps": lambda lr: optax.MultiSteps(optax.lion(lr, weight_decay=1e-3), k),
  }


def memory_optimizers(k: int) -> dict[str, Callable[[float], optax.GradientTransformation]]:
  """The arms of the state-size table: the training arms and the same without accumulation."""
  return {
      **optimizers(k),
      "Tiger (no accumulation)": lambda lr: emoloss.tiger(lr),
      "Lion (no accumulation)": lambda lr: optax.lion(lr),
      "AdamW (no accumulation)": lambda lr: optax.adamw(lr),
  }


# ----------------------------------------------------------------------------------------------
# 1. Optimiser-state bytes.


def tree_bytes(tree: Any) -> int:
  """Bytes of every array (or ``ShapeDtypeStruct``) leaf of ``tree``."""
  return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def lm_parameter_shapes(vocab_size: int, seq_len: int, d_model: int, num_layers: int,
                        num_heads: int) -> Any:
  """The parameter pytree (shapes and dtypes) of a ``TransformerLM``, built abstractly."""
  from flax import nnx

  from benchmarks.lm.model import ModelConfig, TransformerLM

  config = ModelConfig(vocab_size, seq_len, d_model, num_layers, num_heads)
  model = nnx.eval_shape(lambda: TransformerLM(config, nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


def state_memory(k: int, mlp_params: Any) -> dict[str, dict[str, Any]]:
  """Model name -> {parameter bytes, per arm: state bytes and state/parameter ratio}."""
  from benchmarks.lm.config import Config

  lm = Config()
  models = {
      "digits MLP": (mlp_params, "tx.init"),
      "LM experiment's model": (lm_parameter_shapes(lm.vocab_size, lm.seq_len, lm.d_model,
                                                    lm.num_layers, lm.num_heads), "eval_shape"),
      "GPT-2-small shape": (lm_parameter_shapes(50257, 1024, 768, 12, 12), "eval_shape"),
  }
  out: dict[str, dict[str, Any]] = {}
  for model_name, (params, how) in models.items():
    param_bytes = tree_bytes(params)
    arms = {}
    for arm, make in memory_optimizers(k).items():
      tx = make(1e-3)
      state = tx.init(params) if how == "tx.init" else jax.eval_shape(tx.init, params)
      state_bytes = tree_bytes(state)
      arms[arm] = {"state_bytes": state_bytes, "ratio": state_bytes / param_bytes}
    out[model_name] = {"param_bytes": param_bytes,
                       "param_count": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
                       "how": how, "arms": arms}
  return out


def memory_table(memory: dict[str, dict[str, Any]]) -> str:
  models = list(memory)
  headers = ["optimiser"] + [f"{m} ({memory[m]['param_count']:,} params)" for m in models]
  arms = list(next(iter(memory.values()))["arms"])

  def cell(m: str, arm: str) -> str:
    entry = memory[m]["arms"][arm]
    return f"{_human(entry['state_bytes'])} ({entry['ratio']:.3f}× params)"

  rows = [[arm] + [cell(m, arm) for m in models] for arm in arms]
  return common.format_table(headers, rows)


def _human(num_bytes: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if num_bytes < 1024 or unit == "GiB":
      return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1024
  raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# 2. Training.


def make_split(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
  """A 60/20/20 % train/validation/test split of one seed."""
  order = np.random.default_rng(seed).permutation(len(y))
  n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
  parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
           "test": order[n_train + n_val:n_train + 2 * n_val]}
  out = {}
  for name, idx in parts.items():
    out[f"{name}_x"], out[f"{name}_y"] = x[idx], y[idx]
  return out


def micro_batch_indices(seed: int, num_train: int, batch: int, steps: int) -> np.ndarray:
  """``[steps, batch]`` training indices: a fresh permutation per epoch, cut into micro-batches
  (the remainder of each epoch is dropped)."""
  rng = np.random.default_rng(10_000 + seed)
  per_epoch = num_train // batch
  epochs = -(-steps // per_epoch)
  rows = [rng.permutation(num_train)[:per_epoch * batch].reshape(per_epoch, batch)
          for _ in range(epochs)]
  return np.concatenate(rows)[:steps].astype(np.int32)


def train_arm(model: common.StackedModel, make_tx: Callable[[float], Any], lrs: Sequence[float],
              data: dict[str, jax.Array], indices: jax.Array, *, steps: int, eval_every: int,
              bar) -> dict[str, Any]:
  """Trains one optimiser for every (learning rate, seed) pair at once (``vmap`` over runs,
  ``lax.scan`` over micro-steps); the learning rate is injected per run.

  Returns ``{"steps": [E], metric: [L, S, E]}`` (evaluations every ``eval_every`` micro-steps).
  """
  num_lrs, num_seeds = len(lrs), jax.tree.leaves(model.params)[0].shape[0]
  tile = lambda tree: jax.tree.map(lambda a: jnp.concatenate([a] * num_lrs, axis=0), tree)
  tx = optax.inject_hyperparams(make_tx)(lr=lrs[0])

  def loss_fn(params, x, y):
    return common.cross_entropy(model.apply(params, x), y)

  def evaluate(params, d):
    out = {"train_loss": loss_fn(params, d["train_x"], d["train_y"])}
    for part in ("val", "test"):
      logits = model.apply(params, d[f"{part}_x"])
      out[f"{part}_loss"] = common.cross_entropy(logits, d[f"{part}_y"])
      out[f"{part}_acc"] = common.accuracy(logits, d[f"{part}_y"])
    return out

  def chunk(params, opt_state, d, idx):
    metrics = evaluate(params, d)

    def step(carry, i):
      p, s = carry
      grads = jax.grad(loss_fn)(p, d["train_x"][i], d["train_y"][i])
      updates, s = tx.update(grads, s, p)
      return (optax.apply_updates(p, updates), s), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), idx)
    return params, opt_state, metrics

  run_chunk = jax.jit(jax.vmap(chunk))
  params, d, idx = tile(model.params), tile(data), tile(indices)
  opt_state = jax.vmap(tx.init)(params)
  per_run = jnp.repeat(jnp.asarray(lrs, jnp.float32), num_seeds)
  opt_state = optax.tree_utils.tree_set(opt_state, lr=per_run)
  history = []
  for start in range(0, steps + 1, eval_every):
    new_params, new_state, metrics = run_chunk(params, opt_state, d,
                                               idx[:, start:start + eval_every])
    history.append(jax.device_get(metrics))
    if start == steps:
      break
    params, opt_state = new_params, new_state
    bar.update(eval_every)
  out: dict[str, Any] = {"steps": np.arange(0, steps + 1, eval_every)}
  for key in history[0]:
    values = np.stack([h[key] for h in history], axis=1)  # [L*S, E]
    out[key] = values.reshape(num_lrs, num_seeds, -1)
  return out


def tune(run: dict[str, Any], lrs: Sequence[float]) -> dict[str, Any]:
  """The rate with the best mean final validation accuracy (ties: lower validation loss) and
  the per-seed test numbers there."""
  val_acc = run["val_acc"][:, :, -1].mean(1)
  val_loss = run["val_loss"][:, :, -1].mean(1)
  best = int(np.lexsort((val_loss, -val_acc))[0])
  return {
      "lr": lrs[best], "lr_index": best,
      "val_acc_by_lr": val_acc, "val_loss_by_lr": val_loss,
      "val_acc_by_lr_std": run["val_acc"][:, :, -1].std(1),
      "final_val_acc": run["val_acc"][best, :, -1],
      "final_test_acc": run["test_acc"][best, :, -1],
      "final_test_loss": run["test_loss"][best, :, -1],
      "final_train_loss": run["train_loss"][best, :, -1],
      "best_test_acc_over_run": run["test_acc"][best].max(-1),
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.base_parser(__doc__.split("\n\n")[0], seeds=(5, 2))
  parser.add_argument("--accumulation-steps", type=int, default=4,
                      help="k micro-batches per parameter update")
  parser.add_argument("--micro-batch", type=int, default=32, help="examples per micro-batch")
  parser.add_argument("--updates", type=int, default=None,
                      help="parameter updates per run (default: 400; --quick: 100)")
  parser.add_argument("--lrs", type=float, nargs="+", default=None,
                      help="learning-rate grid (default: "
                      + " ".join(f"{v:g}" for v in LR_GRID) + "; --quick: "
                      + " ".join(f"{v:g}" for v in QUICK_LR_GRID) + ")")
  args = parser.parse_args(argv)
  k = args.accumulation_steps
  num_seeds = args.seeds or (2 if args.quick else 5)
  updates = args.updates or (100 if args.quick else 400)
  steps = updates * k
  eval_every = 10 * k if args.quick else 25 * k
  lrs = tuple(args.lrs or (QUICK_LR_GRID if args.quick else LR_GRID))
  out_dir = common.output_dir(args)

  x, y = common.load_digits_scaled()
  seeds = [args.first_seed + s for s in range(num_seeds)]
  splits = [make_split(x, y, s) for s in seeds]
  data = common.stack_batches(splits)
  num_train = int(data["train_y"].shape[1])
  indices = jnp.asarray(np.stack([micro_batch_indices(s, num_train, args.micro_batch, steps)
                                  for s in seeds]))
  model = common.init_mlp(WIDTHS, [1000 + s for s in seeds])
  memory = state_memory(k, jax.tree.map(lambda a: a[0], model.params))

  arms = optimizers(k)
  bar = common.progress_bar(steps * len(arms), NAME, args.no_progress)
  runs, seconds = {}, {}
  for name, make in arms.items():
    start = time.perf_counter()  # compilation included; the arms ran one after another
    runs[name] = train_arm(model, make, lrs, data, indices, steps=steps, eval_every=eval_every,
                           bar=bar)
    seconds[name] = time.perf_counter() - start
  bar.close()
  return report(args, argv, memory, runs, seconds, lrs, k, num_seeds, steps, num_train, out_dir)


def report(args, argv, memory, runs, seconds, lrs, k, num_seeds, steps, num_train, out_dir):
  methods = {name: tune(run, lrs) for name, run in runs.items()}
  headers = ["optimiser", "chosen lr", "val acc", "test acc", "test loss", "train loss"]
  rows = [[name, f"{m['lr']:g}", common.mean_std(m["final_val_acc"]),
           common.mean_std(m["final_test_acc"]), common.mean_std(m["final_test_loss"]),
           common.mean_std(m["final_train_loss"])] for name, m in methods.items()]
  table = common.format_table(headers, rows)
  sweep_headers = ["optimiser"] + [f"lr {lr:g}" for lr in lrs]
  sweep_rows = [[name] + [f"{a:.3f}" for a in m["val_acc_by_lr"]] for name, m in methods.items()]
  sweep = common.format_table(sweep_headers, sweep_rows)
  mem = memory_table(memory)
  # The equivalence check: accumulation in the momentum vs MultiSteps' buffer, every lr and seed.
  ours, multi = runs[f"Tiger (k={k})"], runs["Tiger + MultiSteps"]
  # Sign updates amplify rounding (a momentum entry within rounding of 0 can take either sign),
  # so the two trajectories drift apart over a run, and far apart at the rates that diverge; we
  # report the largest difference over seeds at Tiger's chosen rate, and per rate.
  chosen = methods[f"Tiger (k={k})"]["lr_index"]
  gap = lambda key, at: np.abs(ours[key][..., at] - multi[key][..., at]).max(axis=1)  # [L]
  equivalence = {
      "lr": lrs[chosen], "first_eval_update": int(ours["steps"][1] // k),
      "first_eval_train_loss_difference": float(gap("train_loss", 1)[chosen]),
      "first_eval_test_acc_difference": float(gap("test_acc", 1)[chosen]),
      "final_train_loss_difference": float(gap("train_loss", -1)[chosen]),
      "final_test_acc_difference": float(gap("test_acc", -1)[chosen]),
      "final_test_acc_difference_by_lr": gap("test_acc", -1),
  }
  header = (f"Digits, MLP {'-'.join(map(str, WIDTHS))}, micro-batches of {args.micro_batch}, "
            f"k = {k} per update, {steps // k} updates ({steps} micro-steps), {num_seeds} seeds; "
            f"learning rate chosen per optimiser from {list(lrs)} by mean final validation "
            f"accuracy (mean ± std over seeds at that rate):")
  print("\nOptimiser-state bytes (sum over the state's leaves):")
  print(mem)
  print("\n" + header)
  print(table)
  print("\nMean final validation accuracy by learning rate:")
  print(sweep)
  print(f"\nTiger (k={k}) vs Tiger + MultiSteps (largest difference over seeds): {equivalence}")

  figure, axes = common.new_figure(3, width=5.0)
  for i, (name, m) in enumerate(methods.items()):
    color = f"C{i}"
    style = ":" if "MultiSteps" in name and name.startswith("Tiger") else "-"
    axes[0].errorbar(lrs, m["val_acc_by_lr"], yerr=m["val_acc_by_lr_std"], fmt="o" + style,
                     color=color, label=name, ms=3, capsize=2)
    run = runs[name]
    axes[1].plot(run["steps"] // k, run["test_acc"][m["lr_index"]].mean(0), style, color=color,
                 label=f"{name}, lr {m['lr']:g}")
  axes[0].set(xscale="log", xlabel="learning rate", ylabel="final validation accuracy",
              title="learning-rate sweep (mean ± std over seeds)", ylim=(0.0, 1.0))
  axes[1].set(xlabel="parameter update", ylabel="test accuracy",
              title="test accuracy at the chosen rate", ylim=(0.8, 1.0))
  gpt = memory["GPT-2-small shape"]
  names = list(gpt["arms"])
  ratios = [gpt["arms"][n]["ratio"] for n in names]
  axes[2].barh(range(len(names)), ratios, color=["C0" if n.startswith(("Tiger", "grouped"))
                                                 else "C7" for n in names])
  axes[2].set_yticks(range(len(names)), names, fontsize=7)
  axes[2].invert_yaxis()
  axes[2].set(xlabel="optimiser state / parameter bytes",
              title=f"state of a GPT-2-small shape ({gpt['param_count'] / 1e6:.0f}M params)")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  axes[1].legend(fontsize=6, loc="lower right")
  figure.suptitle(f"Tiger with buffer-free accumulation (k = {k}) vs MultiSteps, "
                  f"{num_seeds} seeds")
  figure.tight_layout(rect=(0, 0, 1, 0.96))

  config = {"seeds": num_seeds, "accumulation_steps": k, "micro_steps": steps,
            "updates": steps // k, "lr_grid": list(lrs), "train_size": num_train,
            "model": "-".join(map(str, WIDTHS)),
            "weight_decay": {"Tiger": 0.01, "AdamW": 1e-4, "Lion": 1e-3}}
  curves = {name: {"steps": run["steps"],
                   **{key: run[key][methods[name]["lr_index"]].mean(0)
                      for key in run if key != "steps"}} for name, run in runs.items()}
  results = common.results_record(NAME, argv, args, config, methods, table, seconds=seconds,
                                  curves=curves)
  results["memory"] = memory
  results["memory_table"] = mem
  results["sweep_table"] = sweep
  results["equivalence"] = equivalence
  markdown = (
      f"# Tiger with buffer-free gradient accumulation\n\nCommand: `{results['command']}`; "
      f"machine: {machine_summary(results['machine'])}, shared with other jobs while it ran.\n\n"
      f"## Optimiser-state bytes\n\nSummed over the leaves of each optimiser's state (the MLP: "
      f"`tx.init` on its parameters; the LMs: `jax.eval_shape(tx.init, params)`); ratio to the "
      f"parameters' bytes.\n\n{mem}\n\n## Training\n\n{header}\n\n{table}\n\n"
      f"Mean final validation accuracy by learning rate:\n\n{sweep}\n\n"
      f"Tiger (k={k}) against Tiger + MultiSteps (the same update, float rounding apart), "
      f"largest difference over seeds at Tiger's chosen rate {equivalence['lr']:g}: after "
      f"{equivalence['first_eval_update']} updates, training loss "
      f"{equivalence['first_eval_train_loss_difference']:.1e} and test accuracy "
      f"{equivalence['first_eval_test_acc_difference']:.3f}; at the end "
      f"{equivalence['final_train_loss_difference']:.1e} and "
      f"{equivalence['final_test_acc_difference']:.3f}. Final test-accuracy difference by rate: "
      f"{', '.join(f'{d:.3f}' for d in equivalence['final_test_acc_difference_by_lr'])} (sign "
      f"updates amplify rounding: a momentum entry within rounding of 0 can take either sign, "
      f"so the runs drift apart, most at the rates that diverge).\n")
  results["files"] = common.save_results(out_dir, NAME, results, figure, markdown)
  return results


if __name__ == "__main__":
  main()
