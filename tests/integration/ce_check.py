"""The CE check of docs/trainer.md, loaded from the docs page itself, so that the tests run the
snippet users copy."""

import re
from pathlib import Path

TRAINER_DOC = Path(__file__).resolve().parents[2] / "docs" / "trainer.md"
HEADING = "## The check every recipe must pass"


def load_check_ce_matches():
  """Returns ``check_ce_matches`` as defined by the first Python snippet under HEADING."""
  text = TRAINER_DOC.read_text()
  section = text.partition(HEADING)[2]
  assert section, f"docs/trainer.md has no section {HEADING!r}"
  snippet = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
  assert snippet, f"no Python snippet under {HEADING!r} in docs/trainer.md"
  namespace: dict = {}
  exec(compile(snippet.group(1), str(TRAINER_DOC), "exec"), namespace)  # noqa: S102 (our docs)
  return namespace["check_ce_matches"]
