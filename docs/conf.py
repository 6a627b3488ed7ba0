"""Sphinx configuration. Build: ``python -m sphinx -W -b html docs docs/_build/html``."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _gen

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
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autosummary_generate = False
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

html_theme = "alabaster"
html_title = f"emoloss {release}"

# Generated pages (gitignored): the API reference from `__all__`, the results from the JSON.
_gen.write_api_pages(HERE / "_generated" / "api")
_gen.write_results_pages(HERE / "_generated" / "results")
