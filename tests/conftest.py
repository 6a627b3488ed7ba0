import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis
import jax
import pytest

jax.config.update("jax_enable_x64", False)

# Property tests are derandomised by default (the same examples on every run and machine, so the
# suite cannot flake); a failing example found once is kept with `@hypothesis.example`. Set
# HYPOTHESIS_PROFILE=explore to search new random examples locally.
hypothesis.settings.register_profile("derandomized", derandomize=True, print_blob=True)
hypothesis.settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))


# Two test lanes (markers in pyproject.toml): `python -m pytest -q` runs the library's own tests
# (pyproject's addopts: `-m 'not slow and not experiments'`); `python -m pytest -q -m experiments`
# runs the end-to-end experiment runs and the 8-device subprocess checks (marked in their modules)
# and the unit tests of the experiments' code (benchmarks/), every test under EXPERIMENT_DIRS
# (marked here, so a new file there is in the lane without a marker of its own). A `-m` expression
# that does not name `slow` leaves the `slow` tests (full-size experiments) out, so the second lane
# does not start them; `-m slow` runs them. The `tunix` tests (tests/integration/test_tunix.py) are
# a third lane, `-m tunix`, run by .ci/run in a venv of its own with google-tunix pinned, and the
# `levanter` tests a manual one (docs/trainer.md gives the command); both lanes above leave them
# out (pyproject's addopts).
EXPERIMENT_DIRS = ("tests/lm/", "tests/oracle/")

# Each lane runs in two pytest-xdist workers, one test file at a time each (--dist loadfile),
# handed out in collection order (--no-loadscope-reorder: xdist would otherwise order the files by
# their number of tests, which puts the few long experiment tests last, where one worker is left
# running them while the other idles). The files below take the most time in their lane
# (--durations on the 2-core machine), longest first; the others follow in their usual order.
# A file's experiments-lane tests are ranked by the second list, its other tests by the first (the
# fused files have tests in both lanes). A new long file belongs in its lane's list. Ordering
# only: every selected test runs.
LIBRARY_LONGEST_FIRST = (
    "tests/test_reliability.py",
    "tests/fused/test_chunked.py",
    "tests/fused/test_onepass.py",
    "tests/losses/test_common.py",
    "tests/losses/test_exact.py",
    "tests/losses/test_long_tail.py",
)
EXPERIMENTS_LONGEST_FIRST = (
    "tests/multiproc/test_lm_training.py",
    "tests/multiproc/test_losses.py",
    "tests/test_lm_finetune.py",
    "tests/test_classification_experiments.py",
    "tests/test_lm_training_example.py",
    "tests/fused/test_chunked.py",
    "tests/oracle/test_run.py",
    "tests/fused/test_onepass.py",
    "tests/lm/test_model.py",
    "tests/transforms/test_tiger_benchmark.py",
    "tests/test_fused_bench.py",
    "tests/oracle/test_exact.py",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid.startswith(EXPERIMENT_DIRS):
      item.add_marker(pytest.mark.experiments)
  if "slow" not in (config.option.markexpr or ""):
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
      items[:] = [item for item in items if not item.get_closest_marker("slow")]
      config.hook.pytest_deselected(items=slow)
  library = {path: i for i, path in enumerate(LIBRARY_LONGEST_FIRST)}
  experiments = {path: i for i, path in enumerate(EXPERIMENTS_LONGEST_FIRST)}

  def key(item):
    rank = experiments if item.get_closest_marker("experiments") else library
    return rank.get(item.nodeid.split("::", 1)[0], len(rank))

  items.sort(key=key)  # stable: the order within a file and among the others is kept
