"""Noisy labels: cross-entropy vs flooding at several flood levels vs ascent/descent alternation.

scikit-learn's digits are split in half per seed; 20% of the training labels are replaced by a
uniformly drawn *other* class (symmetric noise), the held-out half keeps its clean labels. An
over-parameterised MLP (64-128-128-10, 26k parameters for 898 examples) is trained full-batch with
Adam for long enough to memorise the noise under plain cross-entropy, and compared with

* flooding, ``optax.chain(emoloss.flood(b), optax.adam(lr))`` for several flood levels ``b``
  (``b = 0`` is plain CE; the flood level is injected per run with ``optax.inject_hyperparams``),
* ascent/descent alternation without a flood level,
  ``emoloss.alternate_ascent_descent(optax.adam(lr), r)``: every second update is the previous
  kind of Adam step reversed and scaled by ``r``; ``r = 0.1`` is the ratio ``ε2/ε1`` that
  wmathor's post on flooding ran (wmathor.com/index.php/archives/1551; the one ratio it tried),
  ``0.5`` and ``0.9`` larger ones.

We plot training loss (on the noisy labels) and held-out loss over the steps, and report the best
held-out loss and accuracy over the run (early stopping on the test set, an optimistic number for
every method alike) and their final values.

References: Ishida et al., "Do We Need Zero Training Loss After Achieving Zero Training Error?",
ICML 2020 (arXiv 2002.08709): with flooding the held-out loss can fall a second time after the
training loss reaches ``b``. Su Jianlin, "我们真的需要把训练集的损失降低到零吗?" (Do we really need
to reduce the training loss to zero?), kexue.fm/archives/7643, 2020: the alternation of descent
and smaller ascent steps as a gradient-norm penalty. wmathor, "loss损失讨论",
wmathor.com/index.php/archives/1551: the alternation run with descent rate 1e-5 and ascent rate
1e-6 (``ε2/ε1 = 0.1``).

  python -m benchmarks.classification.flooding [--quick] [--out DIR] [--seeds N]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import emoloss
from benchmarks.classification import common

NAME = "flooding"
NUM_CLASSES = 10


def make_split(x, y, seed: int, noise: float) -> tuple[dict, dict]:
  """Half/half split of one seed; a ``noise`` fraction of the training labels flipped."""
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(y))
  half = len(y) // 2
  train_idx, test_idx = order[:half], order[half:]
  clean = y[train_idx]
  flipped = rng.random(half) < noise
  # A uniformly drawn *other* class: add 1..V-1 modulo V.
  shift = rng.integers(1, NUM_CLASSES, half)
  noisy = np.where(flipped, (clean + shift) % NUM_CLASSES, clean).astype(np.int32)
  train = {"x": x[train_idx], "y": noisy, "y_clean": clean, "flipped": flipped}
  return train, {"x": x[test_idx], "y": y[test_idx]}


def evaluate(train_logits, train_batch, test_logits, test_batch) -> dict[str, jax.Array]:
  """Training loss/accuracy on the noisy labels, memorised noise, held-out loss and accuracy."""
  predicted = jnp.argmax(train_logits, axis=-1)
  flipped = train_batch["flipped"]
  memorised = jnp.sum(flipped * (predicted == train_batch["y"])) / jnp.maximum(jnp.sum(flipped), 1)
  return {
      "train_loss": common.cross_entropy(train_logits, train_batch["y"]),
      "train_acc": common.accuracy(train_logits, train_batch["y"]),
      "memorised": memorised,
      "test_loss": common.cross_entropy(test_logits, test_batch["y"]),
      "test_acc": common.accuracy(test_logits, test_batch["y"]),
  }


def method_summary(run: common.TrainResult, tail: int) -> dict[str, Any]:
  """Per-seed best/final held-out numbers and the final training loss of one method."""
  test_loss, test_acc = run.history["test_loss"], run.history["test_acc"]
  best = np.argmin(test_loss, axis=1)
  return {
      "best_test_loss": test_loss.min(axis=1),
      "best_test_loss_step": run.steps[best],
      "best_test_acc": test_acc.max(axis=1),
      "final_test_loss": test_loss[:, -1],
      "final_test_acc": test_acc[:, -1],
      # Mean of the per-step objective over the last `tail` steps: flooding oscillates around b.
      "final_train_loss": run.objective[:, -tail:].mean(axis=1),
      "final_train_acc": run.history["train_acc"][:, -1],
      "final_memorised": run.history["memorised"][:, -1],
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.base_parser(__doc__.split("\n\n")[0], seeds=(3, 2))
  parser.add_argument("--noise", type=float, default=0.2, help="fraction of flipped labels")
  parser.add_argument("--hidden", type=int, default=128, help="width of both hidden layers")
  parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
  parser.add_argument("--steps", type=int, default=None,
                      help="full-batch training steps (default: 2000; --quick: 600)")
  parser.add_argument("--flood-levels", type=float, nargs="+", default=None,
                      help="flood levels b (default: 0.1 0.2 0.4 0.7; --quick: 0.1 0.4)")
  parser.add_argument("--ascent-ratios", type=float, nargs="+", default=None,
                      help="alternation: ascent rate over descent rate (default: 0.1 0.5 0.9; "
                      "--quick: 0.1 0.5)")
  args = parser.parse_args(argv)
  num_seeds = args.seeds or (2 if args.quick else 3)
  num_steps = args.steps or (600 if args.quick else 2000)
  eval_every = 20 if args.quick else 50
  flood_levels = args.flood_levels or ([0.1, 0.4] if args.quick else [0.1, 0.2, 0.4, 0.7])
  ascent_ratios = args.ascent_ratios or ([0.1, 0.5] if args.quick else [0.1, 0.5, 0.9])
  out_dir = common.output_dir(args)

  x, y = common.load_digits_scaled()
  seeds = [args.first_seed + s for s in range(num_seeds)]
  train_batch, test_batch = common.stacked_splits(
      lambda seed: make_split(x, y, seed, args.noise), seeds)
  widths = [x.shape[1], args.hidden, args.hidden, NUM_CLASSES]
  model = common.init_mlp(widths, [1000 + s for s in seeds])
  objective = {"CE": lambda logits, batch: common.cross_entropy(logits, batch["y"])}

  bar = common.progress_bar(num_steps * (1 + len(flood_levels) + len(ascent_ratios)), NAME,
                            args.no_progress)
  # Flooding: one compiled program for all flood levels (b = 0 is plain CE).
  levels = [0.0] + flood_levels
  flooding = optax.chain(optax.inject_hyperparams(emoloss.flood)(flood_level=0.0),
                         optax.adam(args.lr))
  names = ["CE"] + [f"flood b={b:g}" for b in flood_levels]
  flood_runs = common.train(
      model, {name: objective["CE"] for name in names}, flooding, train_batch, test_batch,
      evaluate, num_steps=num_steps, eval_every=eval_every,
      hyperparams={"flood_level": levels}, progress=_Scaled(bar, len(levels)))
  runs = dict(flood_runs)
  # Alternation: every second Adam step reversed and scaled by r. This is the chain that
  # `emoloss.alternate_ascent_descent(optax.adam(lr), r)` builds (flip="update"), with `r`
  # injected so that all ratios share one compiled program.
  alternating = optax.chain(optax.adam(args.lr),
                            optax.inject_hyperparams(emoloss.scale_by_ascent_descent)(
                                ascent_ratio=ascent_ratios[0]))
  names = [f"alternate r={r:g}" for r in ascent_ratios]
  alt_runs = common.train(
      model, {name: objective["CE"] for name in names}, alternating, train_batch, test_batch,
      evaluate, num_steps=num_steps, eval_every=eval_every,
      hyperparams={"ascent_ratio": ascent_ratios}, progress=_Scaled(bar, len(ascent_ratios)))
  runs.update(alt_runs)
  bar.close()
  return report(args, runs, levels, ascent_ratios, num_seeds, num_steps, eval_every, widths,
                out_dir, train_batch, argv)


class _Scaled:
  """Advances a progress bar by ``factor`` per ``update`` (one chunk trains several methods)."""

  def __init__(self, bar, factor: int):
    self.bar, self.factor = bar, factor

  def update(self, n: int) -> None:
    self.bar.update(n * self.factor)


def report(args, runs, levels, ascent_ratios, num_seeds, num_steps, eval_every, widths, out_dir,
           train_batch, argv) -> dict[str, Any]:
  """Table, plot and JSON of the runs."""
  tail = min(200, num_steps // 4)
  methods = {name: method_summary(run, tail) for name, run in runs.items()}
  headers = ["method", f"train loss (last {tail} steps)", "best held-out loss", "at step",
             "final held-out loss", "best held-out acc", "final held-out acc",
             "flipped labels memorised"]
  rows = [[name, common.mean_std(m["final_train_loss"]), common.mean_std(m["best_test_loss"]),
           f"{np.mean(m['best_test_loss_step']):.0f}", common.mean_std(m["final_test_loss"]),
           common.mean_std(m["best_test_acc"]), common.mean_std(m["final_test_acc"]),
           common.mean_std(m["final_memorised"])] for name, m in methods.items()]
  table = common.format_table(headers, rows)
  num_train = int(train_batch["y"].shape[1])
  print(f"\nDigits with {args.noise:.0%} of the {num_train} training labels flipped, MLP "
        f"{'-'.join(map(str, widths))}, full-batch Adam(lr={args.lr}), {num_steps} steps, "
        f"{num_seeds} seeds (mean ± std over seeds); held-out labels clean:")
  print(table)

  figure, axes = common.new_figure(3)
  colors = dict(zip(runs, [f"C{i}" for i in range(len(runs))]))
  for name, run in runs.items():
    style = "--" if name.startswith("alternate") else "-"
    steps = np.arange(1, num_steps + 1)
    axes[0].plot(steps, run.objective.mean(0), style, color=colors[name], label=name, lw=1)
    axes[1].plot(run.steps, run.history["test_loss"].mean(0), style, color=colors[name])
    axes[2].plot(run.steps, run.history["test_acc"].mean(0), style, color=colors[name])
  for b in levels[1:]:
    axes[0].axhline(b, color="gray", lw=0.5, ls=":")
  axes[0].set_yscale("log")
  axes[0].set_title("training loss (noisy labels)")
  axes[1].set_title("held-out loss (clean labels)")
  axes[2].set_title("held-out accuracy")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  figure.suptitle(f"Flooding and alternation on digits with {args.noise:.0%} flipped labels, "
                  f"mean of {num_seeds} seeds")

  config = {"seeds": num_seeds, "steps": num_steps, "eval_every": eval_every,
            "flood_levels": levels, "ascent_ratios": ascent_ratios, "train_size": num_train,
            "model": "-".join(map(str, widths)), "optimizer": f"adam(lr={args.lr}), full batch"}
  curves = common.mean_curves(runs)
  for name, run in runs.items():
    curves[name]["train_objective_every_step"] = run.objective.mean(0)
  results = common.results_record(
      NAME, argv, args, config, methods, table,
      seconds={name: run.seconds for name, run in runs.items()}, curves=curves)
  results["files"] = common.save_results(out_dir, NAME, results, figure)
  return results


if __name__ == "__main__":
  main()
