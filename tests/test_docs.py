"""The documentation: the API reference lists every public name, results pages come from the
results JSON, and every guide's Python snippet runs."""

import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))


def _load_gen():
  spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "_gen.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("module_name", ["emoloss.losses", "emoloss.transforms", "emoloss.fused"])
def test_api_reference_lists_every_public_name(tmp_path, module_name):
  pages = _load_gen().write_api_pages(tmp_path)
  text = pages[module_name].read_text()
  documented = set(re.findall(r"^\.\. auto(?:function|class|data):: (\w+)$", text, re.MULTILINE))
  public = set(importlib.import_module(module_name).__all__)
  assert public <= documented, f"missing from the API reference: {sorted(public - documented)}"


def test_every_subpackage_with_public_names_has_an_api_page():
  import emoloss

  subpackages = {f"emoloss.{name}" for name in ("losses", "transforms", "fused")}
  assert subpackages == set(_load_gen().SUBPACKAGES)
  assert set(emoloss.__all__) - {"check_label_range"} <= set().union(
      *(importlib.import_module(m).__all__ for m in subpackages)) | {
          m.split(".")[1] for m in subpackages}


def test_results_pages_are_generated_from_the_json(tmp_path):
  pages = _load_gen().write_results_pages(tmp_path)
  results = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
  assert [p.stem for p in pages] == [p.stem for p in results]
  for page, path in zip(pages, results):
    record = json.loads(path.read_text())
    table = record.get("table") or record.get("table_markdown")
    if isinstance(table, str):
      assert table.strip() in page.read_text()
    if path.with_suffix(".png").exists():
      assert f"]({'../' * 3}benchmarks/results/{path.stem}.png)" in page.read_text()


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_snippets_run(guide):
  snippets = re.findall(r"^```python\n(.*?)^```", guide.read_text(), re.MULTILINE | re.DOTALL)
  assert snippets, f"{guide.name} has no Python snippet"
  for snippet in snippets:
    exec(compile(snippet, str(guide), "exec"), {})  # noqa: S102 (the docs page's own code)


@pytest.mark.parametrize("guide", GUIDES, ids=[g.stem for g in GUIDES])
def test_guide_images_exist(guide):
  for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", guide.read_text()):
    assert (guide.parent / target).resolve().exists(), target


def test_every_public_function_has_a_doctested_example():
  import inspect

  import emoloss

  functions = [name for name in emoloss.__all__ if inspect.isfunction(getattr(emoloss, name))]
  missing = [name for name in functions
             if ">>> " not in (inspect.getdoc(getattr(emoloss, name)) or "").partition(
                 "Examples:")[2]]
  assert not missing, f"no `Examples:` section with >>> lines: {missing}"


def test_inline_names_of_public_functions_link_to_their_api_entries(monkeypatch):
  """docs/_links.py: `emo_loss`, `emoloss.tiger()`, `margin_cross_entropy(...)` become
  cross-references to the entries the API pages document; other code, code inside a title and
  code inside a link stay as they are."""
  from docutils import nodes
  from sphinx import addnodes

  monkeypatch.syspath_prepend(str(ROOT / "docs"))
  links = importlib.import_module("_links")
  literal = lambda text: nodes.literal(text, text)
  section = nodes.section("", nodes.title("", "", literal("emo_loss")))
  section += nodes.paragraph("", "", literal("emo_loss"), literal("emoloss.tiger()"),
                             literal("logits.shape"), literal("emo_loss"),
                             literal("margin_cross_entropy(logits, labels, margins)"),
                             literal("argmax(z - tau)"),
                             nodes.reference("", "", literal("fused_ce_emo")))
  doc = nodes.document(None, None)
  doc += section
  linked = links.link_api_names(doc, links.api_targets())
  assert linked == ["emoloss.losses.emo_loss", "emoloss.transforms.tiger",
                    "emoloss.losses.margin_cross_entropy"]
  xrefs = list(doc.findall(addnodes.pending_xref))
  assert [x["reftarget"] for x in xrefs] == [
      "emoloss.losses.emo_loss", "emoloss.transforms.tiger", "emoloss.losses.emo_loss",
      "emoloss.losses.margin_cross_entropy"]
  assert [x.astext() for x in xrefs] == [
      "emo_loss", "emoloss.tiger()", "emo_loss", "margin_cross_entropy(logits, labels, margins)"]
  assert all(x["refdomain"] == "py" for x in xrefs)
  assert not list(section[0].findall(addnodes.pending_xref))  # the title stays plain
  # Every target is a name the API pages document (write_api_pages lists each `__all__`).
  for target in links.api_targets().values():
    module_name, name = target.rsplit(".", 1)
    assert name in importlib.import_module(module_name).__all__
