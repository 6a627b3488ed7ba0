import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis
import jax

jax.config.update("jax_enable_x64", False)

# Property tests are derandomised by default (the same examples on every run and machine, so the
# suite cannot flake); a failing example found once is kept with `@hypothesis.example`. Set
# HYPOTHESIS_PROFILE=explore to search new random examples locally.
hypothesis.settings.register_profile("derandomized", derandomize=True, print_blob=True)
hypothesis.settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


# The suite runs in two pytest-xdist workers, one test file at a time each (--dist loadfile),
# handed out in collection order (--no-loadscope-reorder: xdist would otherwise order the files by
# their number of tests, which puts the few long experiment tests last, where one worker is left
# running them while the other idles). The files below take the most CPU time (pytest
# --durations on 2 cores), longest first; the others follow in their usual order. Ordering only:
# every test still runs.
LONGEST_FIRST = (
    "tests/test_reliability.py",
    "tests/fused/test_chunked.py",
    "tests/test_lm_finetune.py",
    "tests/fused/test_onepass.py",
    "tests/test_classification_experiments.py",
    "tests/losses/test_common.py",
    "tests/losses/test_exact.py",
    "tests/oracle/test_run.py",
    "tests/lm/test_model.py",
    "tests/test_fused_bench.py",
)


def pytest_collection_modifyitems(config, items):
  del config
  rank = {path: i for i, path in enumerate(LONGEST_FIRST)}

  def key(item):
    return rank.get(item.nodeid.split("::", 1)[0], len(rank))

  items.sort(key=key)  # stable: the order within a file and among the others is kept
