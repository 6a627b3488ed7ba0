"""Pages generated at build time (never by hand): the API reference from each subpackage's
``__all__``, one results page per ``benchmarks/results/*.json``, and the tables that the
experiment pages (``docs/experiments/*.md``) include, so that a rerun of an experiment updates its
page.

Called from ``conf.py``; ``tests/test_docs.py`` calls these functions too. The experiments are
never run here: the pages only read the committed JSON (through the experiment's own report code
where it has one) and link the committed PNG.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import sys
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


# Experiments whose report (all tables, from the JSON) is written by their own code.
REPORTS = {"lm_finetune": "benchmarks.lm.report", "lm_finetune_previous": "benchmarks.lm.report",
           "oracle": "benchmarks.oracle.report"}
PLOT_FROM_PAGE = "../../../benchmarks/results/"  # a generated page's path to the committed plots


def report_markdown(path: Path) -> str | None:
  """The experiment's full report, rendered from its JSON by its ``markdown`` function."""
  if path.stem not in REPORTS:
    return None
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  report = importlib.import_module(REPORTS[path.stem])
  return report.markdown(json.loads(path.read_text()), PLOT_FROM_PAGE + path.stem + ".png")


def _slug(heading: str) -> str:
  """``Regime A: in-domain ... (the papers' regime)`` -> ``regime-a``."""
  text = re.split(r"[:(]", heading.lstrip("#").strip())[0]
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def markdown_tables(text: str) -> dict[str, str]:
  """Every Markdown table of ``text``, keyed ``<section>--<subsection>--<n>`` by the headings
  above it (``##`` and ``###``) and its rank in that (sub)section, from 1."""
  tables: dict[str, str] = {}
  section, subsection, counts = "", "", {}
  lines = text.splitlines()
  i = 0
  while i < len(lines):
    line = lines[i]
    if line.startswith("## "):
      section, subsection = _slug(line), ""
    elif line.startswith("### "):
      subsection = _slug(line)
    if line.startswith("|"):
      j = i
      while j < len(lines) and lines[j].startswith("|"):
        j += 1
      key = "--".join(k for k in (section, subsection) if k) or "top"
      counts[key] = counts.get(key, 0) + 1
      tables[f"{key}--{counts[key]}"] = "\n".join(lines[i:j]) + "\n"
      i = j
      continue
    i += 1
  return tables


def table_fragments(path: Path) -> dict[str, str]:
  """The tables an experiment page can include, from one results JSON: those of its report
  (:func:`report_markdown`), or each top-level string field that holds a Markdown table."""
  report = report_markdown(path)
  if report is not None:
    return markdown_tables(report)
  record = json.loads(path.read_text())
  return {key: value.strip() + "\n" for key, value in record.items()
          if isinstance(value, str) and value.lstrip().startswith("|")}


def write_table_fragments(out: Path) -> list[Path]:
  """``<json stem>--<key>.md`` under ``out`` for every table of every results JSON; the
  experiment pages include them (``{include}``), so their tables are never copied by hand."""
  out.mkdir(parents=True, exist_ok=True)
  paths = []
  for path in sorted(RESULTS.glob("*.json")):
    for key, table in table_fragments(path).items():
      fragment = out / f"{path.stem}--{key}.md"
      _write_if_changed(fragment, table)
      paths.append(fragment)
  for stale in out.glob("*.md"):
    if stale not in paths:
      stale.unlink()
  return paths


def results_page(path: Path, out_dir: Path) -> str:
  """Markdown for one results JSON: the experiment's full report where it has one; otherwise
  command, table, plot (same stem ``.png``) and machine."""
  report = report_markdown(path)
  if report is not None:
    return report
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
