"""The documentation: the API reference lists every public name, results pages and the
experiment pages' tables come from the results JSON, every guide's Python snippet runs, and the
built HTML reads well offline (bundled MathJax, readable types, complete "API on this page")."""

import html
import importlib
import importlib.util
import json
import re
import subprocess
import sys
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
                             nodes.reference("", "", literal("fused_token_stats")))
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


EXPERIMENT_PAGES = sorted((ROOT / "docs" / "experiments").glob("*.md"))
INCLUDE = re.compile(r"^```\{include\} \.\./_generated/tables/(.+?)\.md$", re.MULTILINE)


def _fragments() -> dict[str, str]:
  gen = _load_gen()
  return {f"{path.stem}--{key}": table for path in sorted(gen.RESULTS.glob("*.json"))
          for key, table in gen.table_fragments(path).items()}


@pytest.mark.parametrize("page", EXPERIMENT_PAGES, ids=[p.stem for p in EXPERIMENT_PAGES])
def test_experiment_pages_include_only_tables_generated_from_the_json(page):
  """Every table an experiment page includes exists among those generated from the results
  JSON (a rerun that renames a section fails here, not silently), and the page copies none by
  hand but its summaries (the classification overview and the LM objectives' recipes)."""
  fragments = _fragments()
  included = INCLUDE.findall(page.read_text())
  assert page.stem == "index" or included, f"{page.name} includes no generated table"
  missing = [key for key in included if key not in fragments]
  assert not missing, f"{page.name}: no generated table {missing}"
  hand_tables = re.findall(r"^\|.*\|\n\|[-|: ]+\|$", page.read_text(), re.MULTILINE)
  assert len(hand_tables) <= 1, f"{page.name}: tables copied by hand: {hand_tables}"


def test_table_fragments_are_the_reports_tables():
  """The LM and oracle fragments are cut from the report their own code renders from the JSON
  (the same text as the committed ``.md`` next to it when that was written by the same code)."""
  gen = _load_gen()
  for stem in gen.REPORTS:
    path = gen.RESULTS / f"{stem}.json"
    report = gen.report_markdown(path)
    tables = gen.table_fragments(path)
    assert tables and all(table in report + "\n" for table in tables.values())
    claims = next(t for key, t in tables.items() if "claims" in key)
    assert "**holds**" in claims or "**does not hold**" in claims or "inconclusive" in claims


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
  """The HTML documentation, built as CI builds it (warnings are errors)."""
  out = tmp_path_factory.mktemp("html")
  subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                  "-d", str(out / ".doctrees"), str(ROOT / "docs"), str(out)],
                 check=True, cwd=ROOT)
  return out


def _scripts(page: Path) -> list[str]:
  return re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", page.read_text())


def test_formulas_render_with_no_network(built_docs):
  """MathJax is bundled with the HTML: no page loads it (or anything else) from a CDN, and the
  script the pages load is in the build."""
  derivations = built_docs / "derivations.html"
  assert 'class="math' in derivations.read_text()
  mathjax = [src for src in _scripts(derivations) if "mathjax" in src.lower() or "tex-" in src]
  assert mathjax, "the Derivations page loads no MathJax"
  for page in built_docs.rglob("*.html"):
    remote = [src for src in _scripts(page) if re.match(r"(https?:)?//", src)]
    assert not remote, f"{page.relative_to(built_docs)} loads {remote}"
  for src in mathjax:
    assert (derivations.parent / src.split("?")[0]).is_file(), src


def test_api_types_are_readable(built_docs):
  """Parameter and attribute types read `ArrayLike`, `jax.Array`, `optax.ScalarOrSchedule`: never
  the private module of jax.Array's class nor the union that ArrayLike expands to."""
  for page in (built_docs / "_generated" / "api").glob("*.html"):
    text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
    assert "jaxlib" not in text, page.name
    assert "complex" not in text and "TypeAliasForwardRef" not in text, page.name
    assert "ArrayLike" in text, page.name


def test_header_shows_the_version(built_docs):
  import emoloss

  assert f"emoloss {emoloss.__version__}" in (built_docs / "index.html").read_text()


@pytest.mark.parametrize("page", ["derivations", "overview", *(f"guides/{g.stem}" for g in GUIDES)])
def test_api_on_this_page_lists_every_function_the_page_links(built_docs, page):
  text = (built_docs / f"{page}.html").read_text()
  article = text[text.index("<article"):text.index("</article>")]
  linked = set(re.findall(r'href="[^"]*_generated/api/\w+\.html#(emoloss\.[\w.]+)"', article))
  sidebar = text[text.index('class="api-links"'):] if 'class="api-links"' in text else ""
  listed = set(re.findall(r'href="[^"]*_generated/api/\w+\.html#(emoloss\.[\w.]+)"', sidebar))
  assert linked, f"{page} links no API entry"
  assert linked == listed, f"{page}: linked but not listed {sorted(linked - listed)}"
