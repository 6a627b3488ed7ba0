"""Benchmark: naive vs fused (chunked, recompute) vs one-pass CE and CE + EMO from hidden states.

For each size ``(N, V, d, k)`` it compiles ``jax.value_and_grad`` (with respect to the hidden
states and the LM head) of the token-mean loss for:

* ``naive CE``: ``optax.losses.softmax_cross_entropy_with_integer_labels(h @ W.T, y)``,
* ``naive CE+EMO``: ``emoloss.emo_ce_loss(h @ W.T, y, E)`` (published mode-1 mix),
* ``fused CE``: ``emoloss.fused_token_stats(h, W, y).nll`` (vocabulary chunks, recompute),
* ``fused CE+EMO``: ``emoloss.fused_emo_ce_loss(h, W, y, E)``,
* ``one-pass CE``: ``emoloss.fused_loss(h, W, y)`` (token chunks, gradient in the forward pass),
* ``one-pass CE+EMO``: ``emoloss.fused_loss(h, W, y, E, per_token=emo_ce_per_token(1))``,
* ``jax-cce CE``: ``jax_cce.linear_cross_entropy(h, W, y)`` (PyPI peer, when installed),

and reports XLA's compiled memory analysis (temporary buffers, and argument + output + temp) and,
for the timed sizes, the median and minimum wall time of a call as a ratio to naive CE measured in
the same process, in interleaved rounds (so that a loaded, shared machine slows all methods
alike), with the achieved GFLOP/s of each method's matmuls against a plain ``jnp.dot`` of the
logits' shape timed in the same rounds (the machine's practical matmul limit). Sizes given with
``--memory-sizes`` are compiled but never run (the naive path would need > 16 GiB there).
``--scaling`` instead times the one-pass path (and the naive one where its compiled memory fits
``--max-naive-gib``) over a grid growing N, V and d one at a time.

Writes ``benchmarks/results/fused_<platform>[_<dtype>].json`` and ``.md`` (``fused_scaling_...``
with ``--scaling``, ``fused_options_...`` with ``--options``); ``--quick`` writes into
``runs/fused_bench_quick/`` instead, never into ``benchmarks/results/``.

  python benchmarks/fused_bench.py            # default grid (a few minutes on 2 CPU cores)
  python benchmarks/fused_bench.py --quick    # tiny grid, seconds
  python benchmarks/fused_bench.py --scaling  # N, V, d scaling of the one-pass path
  python benchmarks/fused_bench.py --options  # cost of each fused option, side by side
  # On a GPU (not run yet): the Llama-3 vocabulary shape and a smaller one, bf16, % of the
  # dense bf16 peak (H100 SXM: 989 TFLOP/s; H200: the same), naive XLA CE and jax-cce alongside:
  python benchmarks/fused_bench.py --backend gpu --dtype bfloat16 --repeats 10 \
      --sizes 8192x128256x4096x4096 2048x32768x2048x2048 --memory-sizes \
      --max-naive-gib 64 --peak-tflops 989 --chunk-size 8192
  python benchmarks/fused_bench.py --backend gpu --dtype bfloat16 --options \
      --sizes 8192x128256x4096x4096 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import emoloss
from emoloss.fused._onepass import default_token_chunk_size  # fused_loss: chunk_size=None

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  import sys
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import outputs
from benchmarks.machine import machine_description, machine_summary

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("naive CE", "naive CE+EMO", "fused CE", "fused CE+EMO", "one-pass CE",
           "one-pass CE+EMO", "jax-cce CE")
SCALING_METHODS = ("naive CE", "naive CE+EMO", "one-pass CE", "one-pass CE+EMO")
# Matmul multiply-adds of each method's schedule, as (coefficient of N V d, of N V k): the logits,
# ∂h and ∂W are N V d each; the recompute schedules redo the logits (and the cosine row); the
# naive EMO forms p Ê (N V k) and its transpose; the one-pass EMO forms the cosine row once.
MATMUL_WORK = {
    "naive CE": (3, 0), "naive CE+EMO": (3, 2), "fused CE": (4, 0), "fused CE+EMO": (4, 2),
    "one-pass CE": (3, 0), "one-pass CE+EMO": (3, 1), "jax-cce CE": (4, 0),
}
MiB = 2.0 ** 20
# --options: the cost of each fused option side by side, each against its own baseline (the same
# path without the option).
OPTION_METHODS = ("one-pass CE", "one-pass CE softcap 30", "one-pass CE temperature 0.7",
                  "one-pass CE label smoothing 0.1", "one-pass CE frozen head",
                  "fused CE+EMO no entropy statistic", "fused CE+EMO",
                  "fused CE+EMO + entropy bonus")
OPTION_BASE = {name: "one-pass CE" for name in OPTION_METHODS if name.startswith("one-pass")}
OPTION_BASE.update({name: "fused CE+EMO no entropy statistic" for name in OPTION_METHODS
                    if name.startswith("fused")})
MATMUL_WORK.update({name: (3, 0) for name in OPTION_METHODS if name.startswith("one-pass")})
MATMUL_WORK.update({name: (4, 2) for name in OPTION_METHODS if name.startswith("fused")})
MATMUL_WORK["one-pass CE frozen head"] = (2, 0)


def _jax_cce():
  """The ``linear_cross_entropy`` of the optional peer ``jax-cce``, or an error string."""
  try:
    from jax_cce import linear_cross_entropy
  except ImportError as error:  # pragma: no cover (depends on the environment)
    return None, f"not installed ({type(error).__name__})"
  return linear_cross_entropy, None


def loss_functions(chunk_size: int, onepass_chunk_size: int | None = None) -> dict:
  """Scalar token-mean losses ``f(hidden, head, labels, cost_embeddings)`` per method."""
  def naive_ce(h, w, y, e):
    logits = jnp.dot(h, w.T, preferred_element_type=jnp.float32)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, y))

  def naive_ce_emo(h, w, y, e):
    logits = jnp.dot(h, w.T, preferred_element_type=jnp.float32)
    return jnp.mean(emoloss.emo_ce_loss(logits, y, e))

  def fused_ce(h, w, y, e):
    return jnp.mean(emoloss.fused_token_stats(h, w, y, chunk_size=chunk_size).nll)

  def fused_ce_plus_emo(h, w, y, e):
    return jnp.mean(emoloss.fused_emo_ce_loss(h, w, y, e, chunk_size=chunk_size))

  def onepass_ce(h, w, y, e):
    return emoloss.fused_loss(h, w, y, chunk_size=onepass_chunk_size)

  mix = emoloss.emo_ce_per_token(1)

  def onepass_ce_emo(h, w, y, e):
    return emoloss.fused_loss(h, w, y, e, per_token=mix, chunk_size=onepass_chunk_size)

  functions = {"naive CE": naive_ce, "naive CE+EMO": naive_ce_emo, "fused CE": fused_ce,
               "fused CE+EMO": fused_ce_plus_emo, "one-pass CE": onepass_ce,
               "one-pass CE+EMO": onepass_ce_emo}
  cce, _ = _jax_cce()
  if cce is not None:
    functions["jax-cce CE"] = lambda h, w, y, e: cce(h, w, y, chunk_size=chunk_size)
  return functions


def option_functions(chunk_size: int, onepass_chunk_size: int | None = None) -> dict:
  """Scalar token-mean losses of :data:`OPTION_METHODS` (see :func:`loss_functions`)."""
  def onepass(frozen=False, **options):
    def loss(h, w, y, e):
      w = jax.lax.stop_gradient(w) if frozen else w  # a frozen head: no ∂W work
      return emoloss.fused_loss(h, w, y, chunk_size=onepass_chunk_size, **options)
    return loss

  def fused(h, w, y, e, entropy_weight=None):
    out = emoloss.fused_token_stats(h, w, y, e, chunk_size=chunk_size)
    loss = emoloss.emo_ce_combination(out.nll, out.emo)
    return jnp.mean(loss if entropy_weight is None else loss - entropy_weight * out.entropy)

  def fused_without_entropy(h, w, y, e):
    """The same kernel with the entropy statistic switched off (private configuration): what
    the fused path cost before it had an entropy output."""
    from emoloss.fused import _chunked, _core, _plumbing
    config = _plumbing.Config(options=_core.Options(entropy=False), chunk_size=chunk_size)
    nll, emo, _, _ = _chunked._fused(config, h, w, y, jax.lax.stop_gradient(e))
    return jnp.mean(emoloss.emo_ce_combination(jnp.maximum(nll, 0.0), jnp.maximum(emo, 0.0)))

  return {
      "one-pass CE": onepass(),
      "one-pass CE softcap 30": onepass(softcap=30.0),
      "one-pass CE temperature 0.7": onepass(temperature=0.7),
      "one-pass CE label smoothing 0.1": onepass(label_smoothing=0.1),
      "one-pass CE frozen head": onepass(frozen=True),
      "fused CE+EMO no entropy statistic": fused_without_entropy,
      "fused CE+EMO": fused,
      "fused CE+EMO + entropy bonus": lambda h, w, y, e: fused(h, w, y, e, entropy_weight=0.01),
  }


def abstract_inputs(n, v, d, k, dtype):
  s = jax.ShapeDtypeStruct
  return (s((n, d), dtype), s((v, d), dtype), s((n,), jnp.int32), s((v, k), jnp.float32))


def concrete_inputs(n, v, d, k, dtype, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  hidden = jax.random.normal(keys[0], (n, d), jnp.float32).astype(dtype)
  head = (jax.random.normal(keys[1], (v, d), jnp.float32) / np.sqrt(d)).astype(dtype)
  labels = jax.random.randint(keys[2], (n,), 0, v)
  cost = jax.random.normal(keys[3], (v, k), jnp.float32)
  return hidden, head, labels, cost


def _memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  return {
      "temp_bytes": int(stats.temp_size_in_bytes),
      "argument_bytes": int(stats.argument_size_in_bytes),
      "output_bytes": int(stats.output_size_in_bytes),
      "peak_bytes": int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                        + stats.temp_size_in_bytes - stats.alias_size_in_bytes),
  }


def compile_method(fn, args):
  """Compiled ``value_and_grad`` w.r.t. hidden and head, and its memory analysis (bytes)."""
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
  return compiled, _memory(compiled)


def compile_matmul(args):
  """The logits matmul ``h Wᵀ`` alone (float32 accumulation): the machine's matmul speed on the
  shape that dominates every method."""
  matmul = lambda h, w, y, e: jnp.dot(h, w.T, preferred_element_type=jnp.float32)
  return jax.jit(matmul).lower(*args).compile()


def time_methods(compiled: dict, args, repeats: int) -> dict:
  """Seconds per call of each method over ``repeats`` rounds, the methods interleaved round by
  round (after one warm-up call each)."""
  for fn in compiled.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in compiled}
  for _ in range(repeats):
    for name, fn in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return times


def matmul_flops(name: str, n: int, v: int, d: int, k: int) -> float:
  per_d, per_k = MATMUL_WORK[name]
  return 2.0 * n * v * (per_d * d + per_k * k)


def useful_flops(name: str, n: int, v: int, d: int, k: int) -> float:
  """FLOPs of the loss's value and gradient however it is scheduled: ``6 N V d`` (logits, ∂h,
  ∂W), ``+ 2 N V k`` with EMO (``p Ê``): the numerator of the percent of the peak."""
  return 6.0 * n * v * d + (2.0 * n * v * k if "EMO" in name else 0.0)


def _summarise(row: dict, times: dict, sizes, peak_tflops: float | None = None) -> None:
  """Adds median/min seconds, ratios to naive CE (and, for the option methods, to their own
  baseline), GFLOP/s and percent of ``peak_tflops`` to ``row['methods']``."""
  n, v, d, k = sizes
  matmul = min(times.pop("matmul h Wᵀ"))
  row["matmul_gflops"] = 2.0 * n * v * d / matmul / 1e9
  base = times.get("naive CE")
  for name, values in times.items():
    m = row["methods"][name]
    m["seconds_median"] = statistics.median(values)
    m["seconds_min"] = min(values)
    m["gflops"] = matmul_flops(name, n, v, d, k) / m["seconds_min"] / 1e9
    m["fraction_of_matmul"] = m["gflops"] / row["matmul_gflops"]
    if peak_tflops:
      m["percent_of_peak"] = 100.0 * useful_flops(name, n, v, d, k) / m["seconds_min"] / (
          peak_tflops * 1e12)
    if base is not None:
      m["time_vs_naive_ce"] = m["seconds_median"] / statistics.median(base)
      m["min_time_vs_naive_ce"] = m["seconds_min"] / min(base)
    if name in OPTION_BASE and OPTION_BASE[name] in times:
      reference = times[OPTION_BASE[name]]
      m["time_vs_base"] = m["seconds_median"] / statistics.median(reference)
      m["min_time_vs_base"] = m["seconds_min"] / min(reference)


def run(args) -> dict:
  dtype = jnp.dtype(args.dtype)
  if args.options:
    functions, methods = option_functions(args.chunk_size, args.onepass_chunk_size), OPTION_METHODS
  else:
    functions = loss_functions(args.chunk_size, args.onepass_chunk_size)
    methods = SCALING_METHODS if args.scaling else METHODS
  names = [name for name in methods if name in functions]
  _, cce_error = _jax_cce()
  load_before = os.getloadavg()
  rows = []
  grid = [(size, True) for size in args.sizes] + [(size, False) for size in args.memory_sizes]
  for (n, v, d, k), timed in tqdm(grid, desc="sizes"):
    row = {"N": n, "V": v, "d": d, "k": k, "timed": timed, "methods": {},
           "onepass_chunk_size": args.onepass_chunk_size or default_token_chunk_size(v)}
    inputs = abstract_inputs(n, v, d, k, dtype)
    compiled = {}
    for name in tqdm(names, desc=f"compile N={n} V={v} d={d}", leave=False):
      try:
        compiled[name], memory = compile_method(functions[name], inputs)
        row["methods"][name] = dict(memory)
      except Exception as error:  # noqa: BLE001 (a peer failing is a result, not a crash)
        row["methods"][name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
      too_big = row["methods"][name].get("temp_bytes", 0) > args.max_naive_gib * 2 ** 30
      if name in compiled and name.startswith("naive") and too_big:
        del compiled[name]  # compiled only: it would not fit this machine's memory
    if timed:
      compiled["matmul h Wᵀ"] = compile_matmul(inputs)
      times = time_methods(compiled, concrete_inputs(n, v, d, k, dtype), args.repeats)
      _summarise(row, times, (n, v, d, k), args.peak_tflops)
    rows.append(row)
  device = jax.devices()[0]
  return {
      "machine": machine_summary(machine_description()),
      "platform": device.platform,
      "device": device.device_kind,
      "jax": jax.__version__,
      "dtype": str(dtype),
      "chunk_size": args.chunk_size,
      "onepass_chunk_size": args.onepass_chunk_size or "default (fused_loss's chunk_size=None)",
      "repeats": args.repeats,
      "jax_cce": cce_error or "installed",
      "load_average": {"before": [round(x, 2) for x in load_before],
                       "after": [round(x, 2) for x in os.getloadavg()]},
      "scaling": bool(args.scaling),
      "options": bool(args.options),
      "peak_tflops": args.peak_tflops,
      "rows": rows,
  }


def _cell(m: dict, key: str, fmt: str) -> str:
  return format(m[key], fmt) if key in m else "—"


def options_markdown(result: dict) -> str:
  """The --options table: each option's time against the same path without it."""
  load = result["load_average"]
  lines = [
      (f"Machine: {result['machine']}; jax {result['jax']}; {result['dtype']}; fused vocabulary "
       f"chunk {result['chunk_size']}; one-pass token chunk {result['onepass_chunk_size']}; "
       "value-and-grad w.r.t. hidden states and head of the token-mean loss. Time: median (and "
       f"minimum) of {result['repeats']} interleaved calls in one process, as a ratio to the same "
       "path without the option (one-pass CE, or fused CE+EMO without the entropy statistic). "
       f"Load average (1, 5, 15 min) before {load['before']}, after {load['after']} (a shared "
       "machine: other jobs ran beside it)."),
      "",
      "| N | V | d | k | method | s (median) | s (min) | time / baseline | (min) | temp MiB |",
      "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
  ]
  for row in result["rows"]:
    size = f"| {row['N']} | {row['V']} | {row['d']} | {row['k']} |"
    for name in OPTION_METHODS:
      m = row["methods"].get(name)
      if m is None or "error" in m:
        lines.append(f"{size} {name} | fails: {(m or {}).get('error', 'missing')[:80]} "
                     "| | | | |")
        continue
      lines.append(
          f"{size} {name} | {_cell(m, 'seconds_median', '.3f')} | "
          f"{_cell(m, 'seconds_min', '.3f')} | {_cell(m, 'time_vs_base', '.3f')} | "
          f"{_cell(m, 'min_time_vs_base', '.3f')} | {m['temp_bytes'] / MiB:.1f} |")
  return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
  if result.get("options"):
    return options_markdown(result)
  load = result["load_average"]
  lines = [
      (f"Machine: {result['machine']}; jax {result['jax']}; {result['dtype']}; fused vocabulary "
       f"chunk {result['chunk_size']}; one-pass token chunk {result['onepass_chunk_size']}; "
       "value-and-grad w.r.t. hidden states and head of the token-mean loss. Time: median (and "
       f"minimum) of {result['repeats']} interleaved calls as a ratio to naive CE (optax) in the "
       "same process (— : compiled only). GFLOP/s: the method's matmul FLOPs (its schedule, "
       "e.g. 6 N V d for naive CE, 8 N V d for the recompute paths) over its minimum time; "
       "'% matmul': against a plain h Wᵀ dot timed in the same rounds. Memory: XLA compiled "
       "memory analysis, temporary buffers (and arguments + outputs + temporaries). Load average "
       f"(1, 5, 15 min) before {load['before']}, after {load['after']}."),
      "",
      ("| N | V | d | k | method | s (min) | time / naive CE | (min) | time / naive same loss "
       "| GFLOP/s | % matmul | temp MiB | temp / naive same loss | peak MiB |"),
      "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  names = SCALING_METHODS if result.get("scaling") else METHODS
  for row in result["rows"]:
    methods = row["methods"]
    size = f"| {row['N']} | {row['V']} | {row['d']} | {row['k']} |"
    if "matmul_gflops" in row:
      lines.append(f"{size} matmul h Wᵀ | | | | | {row['matmul_gflops']:.1f} | 100% | | | |")
    for name in names:
      if name not in methods:
        if name == "jax-cce CE":
          lines.append(f"{size} {name} | | {result['jax_cce']} | | | | | | | |")
        continue
      m = methods[name]
      if "error" in m:
        lines.append(f"{size} {name} | | fails: {m['error'][:80]} | | | | | | | |")
        continue
      reference = methods["naive CE+EMO" if "EMO" in name else "naive CE"]
      ratio = m["temp_bytes"] / max(reference.get("temp_bytes", 0), 1)
      same = "—"
      if "time_vs_naive_ce" in m and "time_vs_naive_ce" in reference:
        same = f"{m['time_vs_naive_ce'] / reference['time_vs_naive_ce']:.2f}"
      fraction = f"{100 * m['fraction_of_matmul']:.0f}%" if "fraction_of_matmul" in m else "—"
      lines.append(
          f"{size} {name} | {_cell(m, 'seconds_min', '.2f')} | {_cell(m, 'time_vs_naive_ce', '.2f')} | "
          f"{_cell(m, 'min_time_vs_naive_ce', '.2f')} | {same} | {_cell(m, 'gflops', '.1f')} | "
          f"{fraction} | {m['temp_bytes'] / MiB:.1f} | {100 * ratio:.1f}% | "
          f"{m['peak_bytes'] / MiB:.1f} |"
          + (f" {_cell(m, 'percent_of_peak', '.1f')} |" if result.get("peak_tflops") else ""))
  if result.get("peak_tflops"):  # one more column: percent of the device's dense peak
    lines[2] += " % of peak |"
    lines[3] += "---:|"
    lines[0] += (f" % of peak: 6 N V d (+ 2 N V k with EMO) FLOPs over the minimum time, "
                 f"against {result['peak_tflops']} TFLOP/s.")
  return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int, int, int]:
  parts = tuple(int(x) for x in text.lower().split("x"))
  if len(parts) != 4:
    raise argparse.ArgumentTypeError(f"size must be NxVxDxK, e.g. 2048x32768x512x512 (got {text})")
  return parts


def scaling_grid(base=(1024, 32768, 64, 64)) -> list[tuple[int, int, int, int]]:
  """N, V and d (= k) grown one at a time from ``base``."""
  n, v, d, _ = base
  grid = [(x, v, d, d) for x in (1024, 4096, 16384)]
  grid += [(n, x, d, d) for x in (131072, 262144)]
  grid += [(n, v, x, x) for x in (128, 256)]
  return grid


def select_backend(backend: str | None) -> None:
  """Makes ``backend`` (cpu, gpu, tpu) JAX's default, or fails clearly if JAX already started
  on another one."""
  if backend is None:
    return
  try:
    jax.config.update("jax_platforms", backend)
  except Exception:  # noqa: BLE001, S110 (already initialised: checked just below)
    pass
  if jax.default_backend() != backend:
    raise SystemExit(f"--backend {backend}: JAX runs on {jax.default_backend()} "
                     f"(devices {jax.devices()}); set JAX_PLATFORMS={backend}.")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=outputs.HelpFormatter)
  parser.add_argument("--sizes", type=parse_size, nargs="*",
                      default=[(1024, 8192, 256, 256), (2048, 32768, 512, 512)],
                      help="timed sizes NxVxDxK (default: 1024x8192x256x256 "
                      "2048x32768x512x512)")
  parser.add_argument("--memory-sizes", type=parse_size, nargs="*",
                      default=[(8192, 131072, 1024, 1024)],
                      help="sizes compiled for the memory columns only, never run (default: "
                      "8192x131072x1024x1024)")
  parser.add_argument("--chunk-size", type=int, default=1024,
                      help="vocabulary chunk of the fused (recompute) paths and jax-cce")
  parser.add_argument("--onepass-chunk-size", type=int, default=None,
                      help="token chunk (fused_loss's chunk_size) of the one-pass path "
                      "(default: the library's, from V)")
  parser.add_argument("--repeats", type=int, default=5,
                      help="interleaved timing rounds per size (default: 5; --quick: 2)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="dtype of the hidden states and the head")
  parser.add_argument("--backend", default=None, choices=["cpu", "gpu", "tpu"],
                      help="JAX backend to run on (default: JAX's default)")
  parser.add_argument("--scaling", action="store_true",
                      help="time naive and one-pass CE, CE+EMO as N, V and d grow")
  parser.add_argument("--options", action="store_true",
                      help="time the fused options (soft-cap, temperature, label smoothing, "
                           "frozen head, entropy) against the same path without them")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's dense peak in TFLOP/s for --dtype (e.g. 989 for an "
                           "H100 SXM in bf16): adds the percent of peak, counting 6 N V d "
                           "(+ 2 N V k with EMO) FLOPs (default: none, no percent column)")
  parser.add_argument("--max-naive-gib", type=float, default=3.0,
                      help="naive methods needing more temporary memory are compiled only")
  parser.add_argument("--quick", action="store_true",
                      help="tiny grid (CI smoke run): 256x2000x64x64, memory 1024x16384x256x256; "
                      "writes into runs/fused_bench_quick/, never benchmarks/results/")
  parser.add_argument("--output", type=Path, default=None,
                      help="output stem, .json and .md are added (default: benchmarks/results/"
                           "fused[_scaling|_options]_<platform>[_bfloat16], the committed "
                           "results; with --quick, the same name in runs/fused_bench_quick/)")
  args = parser.parse_args(argv)
  select_backend(args.backend)
  try:
    stem = output_stem(args)
  except outputs.UsageError as error:
    parser.error(str(error))
  if args.scaling:
    args.sizes, args.memory_sizes = scaling_grid(), []
  if args.quick:
    args.sizes, args.memory_sizes, args.repeats = [(256, 2000, 64, 64)], [(1024, 16384, 256, 256)], 2
    args.chunk_size = min(args.chunk_size, 512)
    args.onepass_chunk_size = args.onepass_chunk_size or 128
    if args.scaling:
      args.sizes, args.memory_sizes = [(128, 1000, 32, 32), (256, 2000, 32, 32)], []
  if args.options:
    args.memory_sizes = []  # timed sizes only
  result = run(args)
  text = markdown(result)
  outputs.write_json(str(stem.with_suffix(".json")), result, indent=2)
  outputs.write_text(str(stem.with_suffix(".md")), text)
  print(text)
  note = ("the committed results in benchmarks/results/, the default of a full run"
          if stem.parent.resolve() == RESULTS.resolve() else
          "a --quick run writes into runs/fused_bench_quick/, never benchmarks/results/"
          if args.quick and args.output is None else "")
  outputs.report_outputs([str(stem.with_suffix(".json")), str(stem.with_suffix(".md"))],
                         print, note)


def output_stem(args) -> Path:
  """The output stem of a command line, checked before any timing: writable, and a ``--quick``
  run never inside ``benchmarks/results/`` (raises ``outputs.UsageError``)."""
  kind = "fused_scaling" if args.scaling else "fused_options" if args.options else "fused"
  suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
  platform = jax.devices()[0].platform  # as run() records it
  folder = Path(outputs.quick_output_dir("fused_bench_quick")) if args.quick else RESULTS
  stem = args.output or folder / f"{kind}_{platform}{suffix}"
  outputs.check_output_file(str(stem.with_suffix(".json")), "--output", (".md",))
  if args.quick:
    outputs.check_quick_destination(str(stem), "--output")
  return stem


if __name__ == "__main__":
  main()
