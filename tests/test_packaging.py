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


def test_the_licence_the_metadata_states_is_in_the_repository_and_the_distributions():
  """The LICENSE file is the Apache License 2.0 that `license` names, and `license-files` puts it
  in the sdist and the wheel (.ci/run's packaging step checks both archives)."""
  licence = (Path(__file__).resolve().parents[1] / "LICENSE").read_text()
  assert PYPROJECT["project"]["license"] == "Apache-2.0"
  assert "LICENSE" in PYPROJECT["project"]["license-files"]
  assert "Apache License" in licence and "Version 2.0, January 2004" in licence
  assert "END OF TERMS AND CONDITIONS" in licence  # the full text, not a stub
