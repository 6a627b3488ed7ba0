"""Offline LM fine-tuning experiment: CE vs EMO+CE vs TaiLr vs MixCE over paired seeds, in three
regimes (C, the headline: adaptation to another package's code, gated by a CE pilot; A:
held-out standard-library files; B: a domain shift to prose).

One command, no download::

  python benchmarks/lm_finetune.py            # default run (timing: docs/experiments/lm.md)
  python benchmarks/lm_finetune.py --quick    # CI-sized run (the tests' second lane)

The experiment lives in the package :mod:`benchmarks.lm` (data, model + KV-cached sampler,
objectives, train, metrics, stats, report, evaluation, run); this file is its entry point (as is
``python -m benchmarks.lm``). See docs/experiments/lm.md.
"""

import os
import sys

if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from benchmarks.lm.run import main

  main()
