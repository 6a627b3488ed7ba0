"""Rare positive class: cross-entropy vs F1-weighted cross-entropy vs the smooth-F1 loss.

Binary task from scikit-learn's digits: "is this digit a 9?", with the nines subsampled so that
5% of the examples are positive (85 nines among the 1617 other digits). Each seed draws its own
nines and a stratified half/half train/test split. The same small model is trained full-batch
with

* binary cross-entropy (``optax.losses.sigmoid_binary_cross_entropy``),
* F1-weighted binary cross-entropy (positives weighted ``1 - F1s/2``, negatives ``F1s/2``, with
  the batch's smooth F1 held constant; Su Jianlin, kexue.fm/archives/7708),
* the smooth-F1 loss ``1 - F1s`` (a batch statistic),

and we report precision, recall and F1 of the positive class on the test half at threshold 0.5
(logit > 0).

  python -m benchmarks.classification.rare_f1 [--quick] [--out DIR] [--seeds N]
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

NAME = "rare_f1"
POSITIVE_DIGIT = 9


def make_split(x, y, seed: int, positive_fraction: float) -> tuple[dict, dict]:
  """Train and test batches (stratified halves) of one seed with ``positive_fraction`` nines."""
  rng = np.random.default_rng(seed)
  negatives = np.nonzero(y != POSITIVE_DIGIT)[0]
  num_positive = round(positive_fraction * len(negatives) / (1.0 - positive_fraction))
  positives = rng.choice(np.nonzero(y == POSITIVE_DIGIT)[0], num_positive, replace=False)
  train_idx, test_idx = [], []
  for idx in (rng.permutation(negatives), rng.permutation(positives)):
    half = len(idx) // 2
    train_idx.append(idx[:half])
    test_idx.append(idx[half:])
  train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
  label = lambda idx: (y[idx] == POSITIVE_DIGIT).astype(np.float32)
  return ({"x": x[train_idx], "y": label(train_idx)}, {"x": x[test_idx], "y": label(test_idx)})


def evaluate(train_logits, train_batch, test_logits, test_batch) -> dict[str, jax.Array]:
  """Positive-class F1, precision and recall at threshold 0.5 (test), and train F1."""
  predicted = test_logits[:, 0] > 0.0
  labels = test_batch["y"]
  true_positives = jnp.sum(predicted * labels)
  return {
      "f1": common.binary_f1(predicted, labels),
      "precision": true_positives / jnp.maximum(jnp.sum(predicted), 1.0),
      "recall": true_positives / jnp.maximum(jnp.sum(labels), 1.0),
      "train_f1": common.binary_f1(train_logits[:, 0] > 0.0, train_batch["y"]),
      "test_bce": jnp.mean(optax.losses.sigmoid_binary_cross_entropy(test_logits[:, 0], labels)),
  }


def losses() -> dict[str, Any]:
  """The training objectives compared, ``(logits [N, 1], batch) -> scalar``."""
  return {
      "CE": lambda logits, batch: jnp.mean(
          optax.losses.sigmoid_binary_cross_entropy(logits[:, 0], batch["y"])),
      "F1-weighted CE": lambda logits, batch: jnp.mean(
          emoloss.f1_weighted_binary_cross_entropy(logits[:, 0], batch["y"])),
      "smooth-F1 loss": lambda logits, batch: emoloss.smooth_f1_loss(logits[:, 0], batch["y"]),
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.base_parser(__doc__.split("\n\n")[0], seeds=(30, 8))
  parser.add_argument("--positive-fraction", type=float, default=0.05,
                      help="fraction of positive ('9') examples in each split")
  parser.add_argument("--hidden", type=int, default=0, help="hidden width (0: a linear model)")
  parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
  parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
  parser.add_argument("--steps", type=int, default=None,
                      help="full-batch training steps (default: 4000; --quick: 200)")
  args = parser.parse_args(argv)
  num_seeds = args.seeds or (8 if args.quick else 30)
  num_steps = args.steps or (200 if args.quick else 4000)
  eval_every = 50
  budgets = [b for b in (50, 200, 1000, 4000) if b <= num_steps]
  out_dir = common.output_dir(args)

  x, y = common.load_digits_scaled()
  seeds = [args.first_seed + s for s in range(num_seeds)]
  train_batch, test_batch = common.stacked_splits(
      lambda seed: make_split(x, y, seed, args.positive_fraction), seeds)
  widths = [x.shape[1]] + ([args.hidden] if args.hidden else []) + [1]
  model = common.init_mlp(widths, [1000 + s for s in seeds])
  optimizer = optax.adamw(args.lr, weight_decay=args.weight_decay)

  bar = common.progress_bar(num_steps, NAME, args.no_progress)
  runs = common.train(model, losses(), optimizer, train_batch, test_batch, evaluate,
                      num_steps=num_steps, eval_every=eval_every, progress=bar)
  bar.close()

  methods = {}
  for name, run in runs.items():
    at = lambda key, step, run=run: run.history[key][:, list(run.steps).index(step)]
    methods[name] = {
        "f1_at_step": {b: at("f1", b) for b in budgets},
        "precision": at("precision", num_steps), "recall": at("recall", num_steps),
        "train_f1": at("train_f1", num_steps)}
  headers = (["loss"] + [f"test F1 @ step {b}" for b in budgets]
             + [f"precision @ {num_steps}", f"recall @ {num_steps}", f"train F1 @ {num_steps}"])
  rows = [[name] + [common.mean_std(m["f1_at_step"][b]) for b in budgets]
          + [common.mean_std(m[k]) for k in ("precision", "recall", "train_f1")]
          for name, m in methods.items()]
  table = common.format_table(headers, rows)
  num_train = int(train_batch["y"].shape[1])
  num_pos = int(train_batch["y"][0].sum())
  print(f"\nDigits '9 vs rest' with {args.positive_fraction:.0%} positives ({num_pos} of "
        f"{num_train} training examples), {'MLP' if args.hidden else 'linear'} model, "
        f"{num_seeds} seeds, full-batch Adam; positive-class F1 at threshold 0.5 on the test "
        f"half (mean ± std over seeds):")
  print(table)

  figure, axes = common.new_figure(2)
  common.plot_mean_curves(
      axes, runs, ("f1", "recall"), ("test F1 of the positive class (t = 0.5)", "test recall"),
      symlog_linthresh=50)
  axes[0].legend(fontsize=8)
  figure.suptitle(f"Rare positive class ({args.positive_fraction:.0%}), mean of {num_seeds} seeds")

  config = {"seeds": num_seeds, "steps": num_steps, "train_size": num_train,
            "train_positives": num_pos, "model": "-".join(map(str, widths)),
            "optimizer": f"adamw(lr={args.lr}, weight_decay={args.weight_decay}), full batch"}
  results = common.results_record(
      NAME, argv, args, config, methods, table,
      seconds=next(iter(runs.values())).seconds, curves=common.mean_curves(runs))
  results["files"] = common.save_results(out_dir, NAME, results, figure)
  return results


if __name__ == "__main__":
  main()
