"""pyproject.toml: the distribution name is not the PyPI name of another library, and the extras
that include other extras name this distribution (a merge that brings back `emoloss[...]` would
make `pip install -e ".[test]"` install the EMO authors' PyTorch package from PyPI)."""

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())


def test_distribution_name_is_emoloss_jax_and_extras_refer_to_it():
  name = PYPROJECT["project"]["name"]
  assert name == "emoloss-jax"  # `emoloss` on PyPI is EMOLoss (PyTorch, import `emo`)
  extras = PYPROJECT["project"]["optional-dependencies"]
  for extra, requirements in extras.items():
    for requirement in requirements:
      match = re.match(r"([A-Za-z0-9_.-]+)\[([^\]]*)\]", requirement)
      if match and match.group(1).lower().replace("_", "-").startswith("emoloss"):
        assert match.group(1) == name, (extra, requirement)
        assert set(match.group(2).split(",")) <= set(extras), (extra, requirement)
