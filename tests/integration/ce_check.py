"""Code of docs/trainer.md loaded from the page itself, so that the tests run the snippets users
copy: the CE check and the recipes."""

import re
from pathlib import Path

TRAINER_DOC = Path(__file__).resolve().parents[2] / "docs" / "trainer.md"


def load_from_trainer_doc(heading: str, name: str):
  """Returns ``name`` as defined by the first Python snippet after the line ``heading``."""
  text = TRAINER_DOC.read_text()
  _, found, section = text.partition(f"\n{heading}")
  assert found, f"docs/trainer.md has no heading {heading!r}"
  snippet = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
  assert snippet, f"no Python snippet under {heading!r} in docs/trainer.md"
  namespace: dict = {}
  exec(compile(snippet.group(1), str(TRAINER_DOC), "exec"), namespace)  # noqa: S102 (our docs)
  return namespace[name]


def load_check_ce_matches():
  """The check every recipe must pass (the first section of docs/trainer.md)."""
  return load_from_trainer_doc("## The check every recipe must pass", "check_ce_matches")
