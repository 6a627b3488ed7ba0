"""Benchmark: naive vs fused (chunked) cross-entropy and CE + EMO from hidden states.

For each size ``(N, V, d, k)`` it compiles ``jax.value_and_grad`` (with respect to the hidden
states and the LM head) of the token-mean loss for:

* ``naive CE``: ``optax.losses.softmax_cross_entropy_with_integer_labels(h @ W.T, y)``,
* ``naive CE+EMO``: ``emoloss.emo_ce_loss(h @ W.T, y, E)`` (published mode-1 mix),
* ``fused CE``: ``emoloss.fused_ce_emo(h, W, y).nll``,
* ``fused CE+EMO``: ``emoloss.fused_emo_ce_loss(h, W, y, E)``,
* ``jax-cce CE``: ``jax_cce.linear_cross_entropy(h, W, y)`` (PyPI peer, when installed),

and reports XLA's compiled memory analysis (temporary buffers, and argument + output + temp) and,
for the timed sizes, the median wall time of a call as a ratio to naive CE measured in the same
process, in interleaved rounds (so that a loaded, shared CPU slows all methods alike). Sizes given
with ``--memory-only`` are compiled but never run (the naive path would need > 16 GiB there).

Writes ``benchmarks/results/fused_<platform>.json`` and ``.md``.

  python benchmarks/fused_bench.py            # default grid (a few minutes on 2 CPU cores)
  python benchmarks/fused_bench.py --quick    # tiny grid, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import emoloss

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("naive CE", "naive CE+EMO", "fused CE", "fused CE+EMO", "jax-cce CE")
MiB = 2.0 ** 20


def _jax_cce():
  """The ``linear_cross_entropy`` of the optional peer ``jax-cce``, or an error string."""
  try:
    from jax_cce import linear_cross_entropy
  except ImportError as error:  # pragma: no cover (depends on the environment)
    return None, f"not installed ({type(error).__name__})"
  return linear_cross_entropy, None


def loss_functions(chunk_size: int) -> dict:
  """Scalar token-mean losses ``f(hidden, head, labels, cost_embeddings)`` per method."""
  def naive_ce(h, w, y, e):
    logits = jnp.dot(h, w.T, preferred_element_type=jnp.float32)
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits, y))

  def naive_ce_emo(h, w, y, e):
    logits = jnp.dot(h, w.T, preferred_element_type=jnp.float32)
    return jnp.mean(emoloss.emo_ce_loss(logits, y, e))

  def fused_ce(h, w, y, e):
    return jnp.mean(emoloss.fused_ce_emo(h, w, y, chunk_size=chunk_size).nll)

  def fused_ce_emo(h, w, y, e):
    return jnp.mean(emoloss.fused_emo_ce_loss(h, w, y, e, chunk_size=chunk_size))

  functions = {"naive CE": naive_ce, "naive CE+EMO": naive_ce_emo, "fused CE": fused_ce,
               "fused CE+EMO": fused_ce_emo}
  cce, _ = _jax_cce()
  if cce is not None:
    functions["jax-cce CE"] = lambda h, w, y, e: cce(h, w, y, chunk_size=chunk_size)
  return functions


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


def compile_method(fn, args):
  """Compiled ``value_and_grad`` w.r.t. hidden and head, and its memory analysis (bytes)."""
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
  stats = compiled.memory_analysis()
  memory = {
      "temp_bytes": int(stats.temp_size_in_bytes),
      "argument_bytes": int(stats.argument_size_in_bytes),
      "output_bytes": int(stats.output_size_in_bytes),
      "peak_bytes": int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                        + stats.temp_size_in_bytes - stats.alias_size_in_bytes),
  }
  return compiled, memory


def time_methods(compiled: dict, args, repeats: int) -> dict:
  """Median seconds per call, methods interleaved round by round (after one warm-up call)."""
  for fn in compiled.values():
    jax.block_until_ready(fn(*args))
  times = {name: [] for name in compiled}
  for _ in range(repeats):
    for name, fn in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def machine_description() -> str:
  device = jax.devices()[0]
  if device.platform != "cpu":
    return f"{device.device_kind} ({device.platform})"
  model = platform.processor() or "CPU"
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                 if line.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):  # pragma: no cover
    pass  # no lscpu, or no model line: keep platform.processor()
  return f"{model}, {os.cpu_count()} cores (CPU)"


def run(args) -> dict:
  dtype = jnp.dtype(args.dtype)
  functions = loss_functions(args.chunk_size)
  _, cce_error = _jax_cce()
  rows = []
  grid = [(size, True) for size in args.sizes] + [(size, False) for size in args.memory_sizes]
  for (n, v, d, k), timed in tqdm(grid, desc="sizes"):
    row = {"N": n, "V": v, "d": d, "k": k, "timed": timed, "methods": {}}
    inputs = abstract_inputs(n, v, d, k, dtype)
    compiled = {}
    for name in tqdm(functions, desc=f"compile N={n} V={v}", leave=False):
      try:
        compiled[name], memory = compile_method(functions[name], inputs)
        row["methods"][name] = dict(memory)
      except Exception as error:  # noqa: BLE001 (a peer failing is a result, not a crash)
        row["methods"][name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    if timed:
      concrete = concrete_inputs(n, v, d, k, dtype)
      seconds = time_methods(compiled, concrete, args.repeats)
      for name, value in seconds.items():
        row["methods"][name]["seconds"] = value
        row["methods"][name]["time_vs_naive_ce"] = value / seconds["naive CE"]
    rows.append(row)
  return {
      "machine": machine_description(),
      "platform": jax.devices()[0].platform,
      "jax": jax.__version__,
      "dtype": str(dtype),
      "chunk_size": args.chunk_size,
      "repeats": args.repeats,
      "jax_cce": cce_error or "installed",
      "rows": rows,
  }


def markdown(result: dict) -> str:
  lines = [
      (f"Machine: {result['machine']}; jax {result['jax']}; {result['dtype']}; vocabulary chunk "
      f"{result['chunk_size']}; value-and-grad w.r.t. hidden states and head of the token-mean "
      f"loss. Time: median of {result['repeats']} interleaved calls as a ratio to naive CE "
      "(optax) in the same process (— : compiled only). Memory: XLA compiled memory analysis, "
      "temporary buffers (and arguments + outputs + temporaries)."),
      "",
      ("| N | V | d | k | method | time / naive CE | time / naive same loss | temp MiB "
       "| temp / naive same loss | peak MiB |"),
      "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
  ]
  for row in result["rows"]:
    methods = row["methods"]
    for name in METHODS:
      if name not in methods:
        if name == "jax-cce CE":
          lines.append(f"| {row['N']} | {row['V']} | {row['d']} | {row['k']} | {name} | "
                       f"{result['jax_cce']} | | | | |")
        continue
      m = methods[name]
      if "error" in m:
        lines.append(f"| {row['N']} | {row['V']} | {row['d']} | {row['k']} | {name} | "
                     f"fails: {m['error'][:80]} | | | | |")
        continue
      reference = "naive CE+EMO" if "EMO" in name else "naive CE"
      ratio = m["temp_bytes"] / max(methods[reference].get("temp_bytes", 0), 1)
      time_ratio = time_same = "—"
      if "time_vs_naive_ce" in m:
        time_ratio = f"{m['time_vs_naive_ce']:.2f}"
        time_same = f"{m['time_vs_naive_ce'] / methods[reference]['time_vs_naive_ce']:.2f}"
      lines.append(
          f"| {row['N']} | {row['V']} | {row['d']} | {row['k']} | {name} | {time_ratio} | "
          f"{time_same} | {m['temp_bytes'] / MiB:.1f} | {100 * ratio:.1f}% | "
          f"{m['peak_bytes'] / MiB:.1f} |")
  return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int, int, int]:
  parts = tuple(int(x) for x in text.lower().split("x"))
  if len(parts) != 4:
    raise argparse.ArgumentTypeError(f"size must be NxVxDxK, e.g. 2048x32768x512x512 (got {text})")
  return parts


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", type=parse_size, nargs="*",
                      default=[(1024, 8192, 256, 256), (2048, 32768, 512, 512)],
                      help="timed sizes NxVxDxK")
  parser.add_argument("--memory-sizes", type=parse_size, nargs="*",
                      default=[(8192, 131072, 1024, 1024)],
                      help="sizes compiled for the memory columns only, never run")
  parser.add_argument("--chunk-size", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--quick", action="store_true",
                      help="tiny grid (CI smoke run): 256x2000x64x64, memory 1024x16384x256x256")
  parser.add_argument("--output", type=Path, default=None,
                      help="output stem (default benchmarks/results/fused_<platform>)")
  args = parser.parse_args(argv)
  if args.quick:
    args.sizes, args.memory_sizes, args.repeats = [(256, 2000, 64, 64)], [(1024, 16384, 256, 256)], 2
    args.chunk_size = min(args.chunk_size, 512)
  result = run(args)
  stem = args.output or RESULTS / f"fused_{result['platform']}"
  stem.parent.mkdir(parents=True, exist_ok=True)
  stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
  stem.with_suffix(".md").write_text(markdown(result))
  print(markdown(result))
  print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


if __name__ == "__main__":
  main()
