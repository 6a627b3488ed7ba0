"""Sphinx extension: inline code naming a public function or class (`emo_loss`,
`emoloss.emo_loss`, `emo_loss()`, a call `emo_loss(logits, labels, embeddings)`) becomes a link
to its entry in the API reference, so every guide links the API pages of the functions it
mentions without markup in its text. The right-hand sidebar of such a page lists them ("API on
this page", ``_templates/api-links.html``).

Only names in the ``__all__`` of the subpackages that have API pages are linked
(``_gen.SUBPACKAGES``), only outside the API pages themselves, and never inside a link or a title
(headings stay plain: they are the pages' tables of contents).
"""

from __future__ import annotations

import functools
import importlib
import re

import _gen
from docutils import nodes
from sphinx import addnodes


@functools.cache
def api_targets() -> dict[str, str]:
  """Public name -> the full name its API page documents it under (``emoloss.losses.emo_loss``)."""
  targets = {}
  for module_name in _gen.SUBPACKAGES:
    for name in importlib.import_module(module_name).__all__:
      targets[name] = f"{module_name}.{name}"
  return targets


CALL = re.compile(r"(?:emoloss\.)?(\w+)(?:\(.*\))?", re.DOTALL)


def _name(text: str) -> str:
  """``emo_loss``, ``emoloss.emo_loss``, ``emo_loss()`` or a call ``emo_loss(z, y, e)`` -> its
  name; anything else -> ``""``."""
  match = CALL.fullmatch(text.strip())
  return match.group(1) if match else ""


def _xref_target(xref: addnodes.pending_xref, public: set[str]) -> str | None:
  """The public object an explicit Python cross-reference (``{func}`~emoloss.losses.emo_loss```)
  points to, if any."""
  if xref.get("refdomain") != "py":
    return None
  target = xref.get("reftarget", "").lstrip("~.")
  return target if target in public else None


def link_api_names(doctree: nodes.document, targets: dict[str, str]) -> list[str]:
  """Wraps each inline literal that names a public object in a Python cross-reference to it;
  returns the full names the page links, each once, in order of first mention: those linked
  here and those the page cross-references itself (``{func}`` roles)."""
  linked: dict[str, None] = {}
  public = set(targets.values())
  is_candidate = lambda node: isinstance(node, (nodes.literal, addnodes.pending_xref))
  for node in list(doctree.findall(is_candidate)):
    if isinstance(node, addnodes.pending_xref):
      target = _xref_target(node, public)
      if target is not None:
        linked[target] = None
      continue
    literal = node
    if isinstance(literal.parent, (nodes.reference, addnodes.pending_xref, nodes.title)):
      continue
    target = targets.get(_name(literal.astext()))
    if target is None:
      continue
    xref = addnodes.pending_xref("", refdomain="py", reftype="obj", reftarget=target,
                                 refexplicit=True, refwarn=False)
    literal.replace_self(xref)
    xref += literal
    literal["classes"] += ["xref", "py", "py-obj"]
    linked[target] = None
  return list(linked)


def _links(env) -> dict[str, list[str]]:
  if not hasattr(env, "emoloss_api_links"):
    env.emoloss_api_links = {}
  return env.emoloss_api_links


def _on_doctree_read(app, doctree) -> None:
  if app.env.docname.startswith(API_DOCS):
    return
  _links(app.env)[app.env.docname] = link_api_names(doctree, api_targets())


def _on_purge(app, env, docname) -> None:
  _links(env).pop(docname, None)


def _on_merge(app, env, docnames, other) -> None:
  _links(env).update({d: _links(other)[d] for d in docnames if d in _links(other)})


def _on_page_context(app, pagename, templatename, context, doctree) -> None:
  """``api_links``: (name, URL) of each public object the page links, for the sidebar."""
  context["api_links"] = [
      (target.rsplit(".", 1)[1],
       app.builder.get_relative_uri(pagename, API_DOCS + target.split(".")[1]) + "#" + target)
      for target in _links(app.env).get(pagename, [])]


API_DOCS = "_generated/api/"  # _gen.write_api_pages: one page per subpackage, named after it


def setup(app):
  app.connect("doctree-read", _on_doctree_read)
  app.connect("env-purge-doc", _on_purge)
  app.connect("env-merge-info", _on_merge)
  app.connect("html-page-context", _on_page_context)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
