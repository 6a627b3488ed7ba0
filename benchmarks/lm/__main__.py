"""``python -m benchmarks.lm``: the LM fine-tuning experiment (see :mod:`benchmarks.lm.run`)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from benchmarks.lm.run import main

main()
