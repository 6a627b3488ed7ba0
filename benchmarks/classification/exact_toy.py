"""The toy example of the EXACT paper: where do cross-entropy, hinge loss and EXACT put ``b``?

Three points ``(x, y)``: ``(-0.25, -1), (0, -1), (0.25, +1)``; classifier ``sign(f(x))`` with

* ``f(x) = x - b`` (no temperature), or
* ``f(x) = k (x - b)`` with a learned scale ``k > 0`` (a temperature, ``k = 1/σ``).

All three points are classified correctly exactly when ``0 < b < 0.25``. Losses of the margin
``y f(x)``:

* sigmoid cross-entropy ``log(1 + e^{-y f})`` (``optax.losses.sigmoid_binary_cross_entropy``),
* hinge loss ``max(0, 1 - y f)`` (``optax.losses.hinge_loss``),
* EXACT ``1 - P(correct)`` with Gaussian noise on the scores, computed by ``emoloss.exact_loss``
  on two-class logits ``[0, f(x)]`` with ``σ = 1`` (so ``P = Φ(y f / √2)``); the learned ``k``
  plays the part of the paper's learned ``1/σ``.

We minimise each loss in ``b`` by grid search and by gradient descent (Adam, from several
starting points ``b0``, ``k0 = 1``) and report whether the minimiser lies in ``(0, 0.25)``.
The paper reports ``b* ≈ 0.7`` for cross-entropy and ``b* ∈ [0.75, 1]`` for the hinge loss
without the scale.

Reference: Karpukhin et al., "EXACT: How to Train Your Accuracy", 2022 (arXiv 2205.09615),
Figure 1.

  python -m benchmarks.classification.exact_toy [--quick] [--out DIR]
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

NAME = "exact_toy"
POINTS = np.array([-0.25, 0.0, 0.25], np.float32)
LABELS = np.array([-1.0, -1.0, 1.0], np.float32)
ZERO_ERROR = (0.0, 0.25)


def _cross_entropy(scores: jax.Array) -> jax.Array:
  return optax.losses.sigmoid_binary_cross_entropy(scores, (LABELS + 1.0) / 2.0)


def _hinge(scores: jax.Array) -> jax.Array:
  return optax.losses.hinge_loss(scores, LABELS)


def _exact(scores: jax.Array) -> jax.Array:
  logits = jnp.stack([jnp.zeros_like(scores), scores], axis=-1)
  return emoloss.exact_loss(logits, ((LABELS + 1.0) / 2.0).astype(jnp.int32), sigma=1.0)


LOSSES = {"sigmoid CE": _cross_entropy, "hinge": _hinge, "EXACT (σ=1)": _exact}


def total_loss(loss_fn, b: jax.Array, k: jax.Array) -> jax.Array:
  """Mean loss over the three points of ``f(x) = k (x - b)``."""
  return jnp.mean(loss_fn(k * (POINTS - b)))


def accuracy(b: float, k: float = 1.0) -> float:
  """Fraction of the three points with ``sign(k (x - b)) == y`` (0 counts as wrong)."""
  return float(np.mean(np.sign(k * (POINTS - b)) == LABELS))


def in_zero_error(b: float) -> bool:
  return ZERO_ERROR[0] < b < ZERO_ERROR[1]


def loss_grid(loss_fn, b_grid: np.ndarray, k_grid: np.ndarray) -> np.ndarray:
  """``[K, B]`` mean loss of ``f(x) = k (x - b)`` for every ``k`` in ``k_grid``, ``b`` in
  ``b_grid`` (one compiled program)."""
  over_b = jax.vmap(lambda b, k: total_loss(loss_fn, b, k), (0, None))
  return np.asarray(jax.jit(jax.vmap(over_b, (None, 0)))(b_grid, k_grid))


def minimisers(values: np.ndarray, b_grid: np.ndarray, tol: float = 1e-6) -> tuple[float, float]:
  """``(b_lo, b_hi)``: the range of grid points whose loss is within ``tol`` of the minimum."""
  argmins = np.nonzero(values <= values.min() + tol)[0]
  return float(b_grid[argmins[0]]), float(b_grid[argmins[-1]])


def gradient_descent(loss_fn, starts: Sequence[float], num_steps: int, lr: float):
  """Adam on ``(b, log k)`` from every ``b0`` and ``k0 = 1``, with ``log k`` frozen at 0 or
  learned: one compiled program for both.

  Returns final ``b [2, S]``, ``k [2, S]`` and the trajectories of ``b`` ``[2, S, num_steps]``
  (first axis: ``k`` frozen, ``k`` learned).
  """
  optimizer = optax.adam(lr)

  def run(b0, learn_k):
    params = jnp.stack([b0, 0.0])
    mask = jnp.stack([1.0, learn_k])

    def step(carry, _):
      params, state = carry
      grads = jax.grad(lambda p: total_loss(loss_fn, p[0], jnp.exp(p[1])))(params) * mask
      updates, state = optimizer.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), params[0]

    (params, _), trajectory = jax.lax.scan(
        step, (params, optimizer.init(params)), None, length=num_steps)
    return params[0], jnp.exp(params[1]), trajectory

  over_starts = jax.vmap(run, (0, None))
  b, k, trajectory = jax.jit(jax.vmap(over_starts, (None, 0)))(
      jnp.asarray(starts, jnp.float32), jnp.array([0.0, 1.0]))
  return np.asarray(b), np.asarray(k), np.asarray(trajectory)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = common.base_parser(__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=None,
                      help="gradient-descent steps (default: 20000; --quick: 2000)")
  parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
  args = parser.parse_args(argv)
  num_steps = args.steps or (2000 if args.quick else 20000)
  grid_step = 0.005 if args.quick else 0.001
  b_grid = np.arange(-1.0, 6.0 + grid_step / 2, grid_step, dtype=np.float32)
  k_grid = np.logspace(-1, 2, 13 if args.quick else 61).astype(np.float32)
  starts = [-0.5, 0.125, 1.0]
  out_dir = common.output_dir(args)

  bar = common.progress_bar(len(LOSSES) * 2, NAME, args.no_progress)
  methods, curves = {}, {}
  for name, loss_fn in LOSSES.items():
    bar.set_postfix_str(name)
    values = loss_grid(loss_fn, b_grid, np.concatenate([[1.0], k_grid]).astype(np.float32))
    b_lo, b_hi = minimisers(values[0], b_grid)
    # With the scale the infimum is approached as k grows: report b*(k) for every k.
    b_star_by_k = [minimisers(v, b_grid) for v in values[1:]]
    best_k = int(np.argmin(values[1:].min(axis=1)))
    inside = [in_zero_error(lo) and in_zero_error(hi) for lo, hi in b_star_by_k]
    # Smallest grid k from which the b-minimiser stays in the zero-error interval.
    k_enter = next((float(k_grid[i]) for i in range(len(k_grid)) if all(inside[i:])), None)
    bar.update(1)
    b, k, trajectory = gradient_descent(loss_fn, starts, num_steps, args.lr)
    gd = [{"b0": starts, "b": b[i], "k": k[i],
           "accuracy": [accuracy(bi, ki) for bi, ki in zip(b[i], k[i])],
           "zero_error": [in_zero_error(bi) for bi in b[i]],
           "trajectory_b": trajectory[i][:, ::max(1, num_steps // 400)]} for i in range(2)]
    bar.update(1)
    methods[name] = {
        "without_k": {"grid_b_min": (b_lo, b_hi),
                      "grid_zero_error": in_zero_error(b_lo) and in_zero_error(b_hi),
                      "grid_accuracy": accuracy((b_lo + b_hi) / 2), "gd": gd[0]},
        "with_k": {"k_grid": k_grid, "b_min_by_k": b_star_by_k,
                   "grid_best_k": float(k_grid[best_k]), "grid_b_min": b_star_by_k[best_k],
                   "grid_zero_error": inside[best_k], "k_from_which_zero_error": k_enter,
                   "gd": gd[1]},
    }
    curves[name] = values[0]
  bar.close()

  fmt_interval = lambda lo, hi: f"{lo:.3f}" if abs(hi - lo) < 1e-6 else f"[{lo:.3f}, {hi:.3f}]"
  fmt_gd = lambda g: ", ".join(f"{b0:+.3f}→{b:.3f}" for b0, b in zip(g["b0"], g["b"]))
  headers = ["loss", "k", "grid argmin b", "in (0, 0.25)", "GD b0→b (Adam)", "GD in (0, 0.25)",
             "k from which b*(k) in (0, 0.25)"]
  rows = []
  for name, m in methods.items():
    wo, wk = m["without_k"], m["with_k"]
    rows.append([name, "1 (fixed)", fmt_interval(*wo["grid_b_min"]), wo["grid_zero_error"],
                 fmt_gd(wo["gd"]), f"{sum(wo['gd']['zero_error'])}/{len(starts)}", "-"])
    k_final = ", ".join(f"{k:.3g}" for k in wk["gd"]["k"])
    rows.append([name, f"learned (grid ≤ {k_grid[-1]:g}; GD k: {k_final})",
                 fmt_interval(*wk["grid_b_min"]), wk["grid_zero_error"], fmt_gd(wk["gd"]),
                 f"{sum(wk['gd']['zero_error'])}/{len(starts)}",
                 "never on the grid" if wk["k_from_which_zero_error"] is None
                 else f"{wk['k_from_which_zero_error']:.3g}"])
  table = common.format_table(headers, rows)
  print(f"\nEXACT toy example: points {list(zip(POINTS.tolist(), LABELS.tolist()))}, zero error "
        f"iff 0 < b < 0.25; grid step {grid_step}, k grid {k_grid[0]:g}..{k_grid[-1]:g} "
        f"({len(k_grid)} log-spaced), GD = Adam(lr={args.lr}) for {num_steps} steps:")
  print(table)

  figure, axes = common.new_figure(3)
  for name, values in curves.items():
    axes[0].plot(b_grid, values / values.max(), label=name)
  axes[0].set_xlim(-1.0, 5.0)
  axes[0].set_title("loss(b) / max, k = 1")
  axes[0].set_xlabel("b")
  for index, (name, m) in enumerate(methods.items()):
    b_mid = [(lo + hi) / 2 for lo, hi in m["with_k"]["b_min_by_k"]]
    axes[1].plot(k_grid, b_mid, marker=".", label=name)
    for key, style in (("without_k", "-"), ("with_k", "--")):
      trajectory = m[key]["gd"]["trajectory_b"]
      axes[2].plot(np.linspace(0, num_steps, trajectory.shape[1]), trajectory.T, style,
                   color=f"C{index}", lw=1)
  axes[1].set_xscale("log")
  axes[1].set_ylim(-0.5, 4.5)
  axes[1].set_xlabel("k")
  axes[1].set_title("argmin_b loss(k (x - b))")
  axes[2].set_title("Adam trajectories of b (solid: k = 1, dashed: k learned)")
  axes[2].set_xscale("symlog", linthresh=100)
  axes[2].set_xlabel("step")
  axes[0].axvspan(*ZERO_ERROR, color="green", alpha=0.15)
  for ax in axes:
    if ax is not axes[0]:
      ax.axhspan(*ZERO_ERROR, color="green", alpha=0.15)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  axes[1].legend(fontsize=8)
  figure.suptitle("EXACT toy example (green: zero-error interval 0 < b < 0.25)")

  config = {"steps": num_steps, "grid_step": grid_step,
            "b_grid": [float(b_grid[0]), float(b_grid[-1])], "starts": starts}
  results = common.results_record(NAME, argv, args, config, methods, table)
  results["files"] = common.save_results(out_dir, NAME, results, figure)
  return results


if __name__ == "__main__":
  main()
