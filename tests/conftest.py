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
