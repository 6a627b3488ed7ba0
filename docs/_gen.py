"""Pages generated at build time (never by hand): the API reference from each subpackage's
``__all__`` and one results page per ``benchmarks/results/*.json``.

Called from ``conf.py``; ``tests/test_docs.py`` calls :func:`write_api_pages` too. The experiments
are never run here: results pages only read the committed JSON and link the committed PNG.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUBPACKAGES = {
    "emoloss.losses": "Losses",
    "emoloss.transforms": "Optax transforms",
    "emoloss.fused": "Fused cross-entropy + EMO",
}


def _directive(obj) -> str:
  if inspect.isclass(obj):
    return "autoclass"
  if callable(obj):
    return "autofunction"
  return "autodata"


def api_page(module_name: str, title: str) -> str:
  """reST for one subpackage: its docstring, a summary table and one entry per ``__all__`` name."""
  module = importlib.import_module(module_name)
  names = sorted(module.__all__)
  lines = [title, "=" * len(title), "", f".. automodule:: {module_name}", "",
           ".. currentmodule:: " + module_name, "", ".. autosummary::", ""]
  lines += [f"   {name}" for name in names]
  lines.append("")
  for name in names:
    lines += [f".. {_directive(getattr(module, name))}:: {name}", ""]
    if inspect.isclass(getattr(module, name)):
      lines += ["   :members:", ""]
  return "\n".join(lines)


def write_api_pages(out: Path) -> dict[str, Path]:
  """Writes ``api/<subpackage>.rst`` for every subpackage under ``out``; returns their paths."""
  out.mkdir(parents=True, exist_ok=True)
  paths = {}
  for module_name, title in SUBPACKAGES.items():
    path = out / f"{module_name.split('.')[-1]}.rst"
    _write_if_changed(path, api_page(module_name, title))
    paths[module_name] = path
  return paths


def _flatten(row: dict) -> list[dict]:
  """A row whose values include a dict of dicts (e.g. ``methods``) becomes one row per entry."""
  scalars = {k: v for k, v in row.items() if not isinstance(v, dict)}
  nested = [(k, v) for k, v in row.items() if isinstance(v, dict)]
  if not nested:
    return [scalars]
  key, entries = nested[0]
  return [{**scalars, key: name, **(values if isinstance(values, dict) else {"value": values})}
          for name, values in entries.items()]


def _format(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _markdown_rows(rows: list[dict]) -> str:
  rows = [flat for row in rows for flat in _flatten(row)]
  keys = list(dict.fromkeys(k for row in rows for k in row))
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(_format(row.get(k, "")) for k in keys) + " |" for row in rows]
  return "\n".join(lines)


def results_page(path: Path, out_dir: Path) -> str:
  """Markdown for one results JSON: command, table, plot (same stem ``.png``) and machine."""
  record = json.loads(path.read_text())
  name = record.get("experiment", path.stem)
  source = f"Generated from `benchmarks/results/{path.name}` (experiment `{name}`)."
  lines = [f"# {path.stem}", "", source, ""]
  if record.get("command"):
    lines += ["Command:", "", "```bash", record["command"], "```", ""]
  table = record.get("table") or record.get("table_markdown")
  if isinstance(table, str):
    lines += [table.strip(), ""]
  elif isinstance(record.get("rows"), list) and record["rows"]:
    lines += [_markdown_rows(record["rows"]), ""]
  plot = path.with_suffix(".png")
  if plot.exists():
    rel = Path("..", "..", "..", "benchmarks", "results", plot.name)
    lines += [f"![{path.stem}]({rel.as_posix()})", ""]
  machine = record.get("machine")
  if isinstance(machine, dict):
    lines += ["Machine:", ""]
    lines += [f"- {key}: `{value}`" for key, value in machine.items()]
    lines.append("")
  elif machine:
    lines += [f"Machine: `{machine}`", ""]
  return "\n".join(lines)


def write_results_pages(out: Path) -> list[Path]:
  """One ``<stem>.md`` per results JSON under ``out``, plus an index listing them."""
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for path in sorted(RESULTS.glob("*.json")):
    page = out / f"{path.stem}.md"
    _write_if_changed(page, results_page(path, out))
    paths.append(page)
  index = ["# All results files", "",
           "One page per results file in `benchmarks/results/`, generated when the docs are built.",
           "", "```{toctree}", ":maxdepth: 1", ""]
  index += [p.stem for p in paths] + ["```", ""]
  _write_if_changed(out / "index.md", "\n".join(index))
  for stale in out.glob("*.md"):
    if stale.stem != "index" and stale not in paths:
      stale.unlink()
  return paths


def _write_if_changed(path: Path, text: str) -> None:
  if not path.exists() or path.read_text() != text:
    path.write_text(text)
