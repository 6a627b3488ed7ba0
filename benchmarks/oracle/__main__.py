"""``python -m benchmarks.oracle [--quick]``: the known-oracle experiment."""

import os

if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from benchmarks.oracle.run import main

  main()
