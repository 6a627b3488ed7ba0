"""One process of a multi-process run of tests/multiproc/cases.py (started by
tests/multiproc/test_losses.py through examples/launch_local.py): joins jax.distributed, runs
every case on a (data 2, model 2) mesh over all devices of all processes, and writes
``OUT/results.npz`` (process 0, gathered values), ``OUT/<loss>.hlo.txt`` (process 0, the
compiled programs) and ``OUT/process<I>.json`` (the rows and
unmasked counts of the tokens this process held)."""

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from tests.multiproc import cases  # the checkout is on PYTHONPATH (tests/multiproc/helpers.py)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", type=Path, required=True)
  parser.add_argument("--coordinator-address")
  parser.add_argument("--num-processes", type=int)
  parser.add_argument("--process-id", type=int)
  args = parser.parse_args()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                             initialization_timeout=120, heartbeat_timeout_seconds=30)
  assert jax.device_count() == 4, jax.devices()
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
  results = cases.run_all(mesh)
  # The token rows this process's devices held, and their unmasked counts.
  hidden = cases.place(cases.problem(), mesh)["hidden"]
  rows = sorted({tuple(s.index[0].indices(cases.N)[:2]) for s in hidden.addressable_shards})
  where = cases.problem()["where"][0]
  held = {"process": jax.process_index(), "rows": rows,
          "unmasked": int(sum(where[a:b].sum() for a, b in rows))}
  (args.out / f"process{jax.process_index()}.json").write_text(json.dumps(held))
  if jax.process_index() == 0:
    np.savez(args.out / "results.npz", **results)
    for name, text in cases.compiled_programs(mesh).items():
      (args.out / f"{name}.hlo.txt").write_text(text)
  print("process", jax.process_index(), "done", flush=True)


if __name__ == "__main__":
  main()
