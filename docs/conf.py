"""Sphinx configuration. Build: ``python -m sphinx -W -b html docs docs/_build/html``."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _gen
import jax
import sphinx.util.inspect
import sphinx.util.typing

import emoloss

project = "emoloss"
author = "emoloss developers"
copyright = "emoloss developers"
release = version = emoloss.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # MathJax bundled into _static/mathjax: the formulas render with no network.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "myst_parser",
    "_links",  # docs/_links.py: inline `name` of a public function links to its API entry
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated/tables"]  # tables: included by the experiment pages
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autosummary_generate = False
autodoc_typehints = "description"
# Signatures and parameter types in the names users write: `ArrayLike`, `jax.Array`, not the union
# that `jax.typing.ArrayLike` expands to nor the private module of jax.Array's class.
autodoc_type_aliases = {
    "ArrayLike": "jax.typing.ArrayLike",
    "jax.Array": "jax.Array",
    "AxisName": "AxisName",
    "PerToken": "PerToken",
    "Mesh": "jax.sharding.Mesh",
    "jax.typing.DTypeLike": "jax.typing.DTypeLike",
    "optax.ScalarOrSchedule": "optax.ScalarOrSchedule",
    "optax.GradientTransformation": "optax.GradientTransformation",
    "optax.GradientTransformationExtraArgs": "optax.GradientTransformationExtraArgs",
}
# In a union (`ArrayLike | None`) Sphinx prints an alias by its repr; print its name instead.
sphinx.util.inspect.TypeAliasForwardRef.__repr__ = lambda self: self.name  # type: ignore[method-assign]
# A NamedTuple field annotated `jax.Array` is shown by its class, whose module is private
# (`jaxlib._jax`); Sphinx's table of classes with such a module gets jax.Array's public name.
sphinx.util.typing._INVALID_BUILTIN_CLASSES[  # type: ignore[index]
    (jax.Array.__module__, jax.Array.__qualname__)] = "jax.Array"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

# The theme of optax's and flax's docs: a navigation sidebar, a per-page table of contents on the
# right ("On this page", with "API on this page" below it), and (docs/_static/custom.css) an
# article column wide enough for 100-character code lines at a 1280-pixel-wide window.
html_theme = "sphinx_book_theme"
html_title = f"emoloss {release}"
html_static_path = ["_static"]
templates_path = ["_templates"]
html_css_files = ["custom.css"]
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "toc_title": "On this page",
    # The page's sections, then the API entries of the functions it mentions (docs/_links.py).
    "secondary_sidebar_items": ["page-toc", "api-links"],
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navbar_persistent": [],  # the sidebar has the search field; no second one in a header bar
}

# Generated pages (gitignored): the API reference from `__all__`, the results pages and the
# experiment pages' tables from the JSON.
_gen.write_api_pages(HERE / "_generated" / "api")
_gen.write_results_pages(HERE / "_generated" / "results")
_gen.write_table_fragments(HERE / "_generated" / "tables")
