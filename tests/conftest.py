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


# Two test lanes (markers in pyproject.toml): `python -m pytest -q` runs the library's own tests
# (pyproject's addopts: `-m 'not slow and not experiments'`); `python -m pytest -q -m experiments`
# runs the end-to-end experiment runs and the 8-device subprocess checks. A `-m` expression that
# does not name `slow` leaves the `slow` tests (full-size experiments) out, so the second lane does
# not start them; `-m slow` runs them.
#
# Each lane runs in two pytest-xdist workers, one test file at a time each (--dist loadfile),
# handed out in collection order (--no-loadscope-reorder: xdist would otherwise order the files by
# their number of tests, which puts the few long experiment tests last, where one worker is left
# running them while the other idles). The files below take the most CPU time (per-test process
# CPU time on the shared 2-core machine), longest first, per lane; the others follow in their usual
# order. A new long file belongs in its lane's list. Ordering only: every selected test runs.
LONGEST_FIRST = (
    # library lane
    "tests/test_reliability.py",
    "tests/fused/test_chunked.py",
    "tests/fused/test_onepass.py",
    "tests/losses/test_common.py",
    "tests/losses/test_exact.py",
    "tests/lm/test_model.py",
    # experiments lane
    "tests/test_lm_finetune.py",
    "tests/test_classification_experiments.py",
    "tests/oracle/test_run.py",
    "tests/test_fused_bench.py",
)


def pytest_collection_modifyitems(config, items):
  if "slow" not in (config.option.markexpr or ""):
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
      items[:] = [item for item in items if not item.get_closest_marker("slow")]
      config.hook.pytest_deselected(items=slow)
  rank = {path: i for i, path in enumerate(LONGEST_FIRST)}

  def key(item):
    return rank.get(item.nodeid.split("::", 1)[0], len(rank))

  items.sort(key=key)  # stable: the order within a file and among the others is kept
