"""Sphinx configuration: the nnderiv site (Markdown pages, API from docstrings, executed tutorials).

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (``pip install -e ".[docs]"``).
Everything is local: no intersphinx, no remote assets needed at build time.
"""

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the gallery runs headless

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))  # tutorials import helpers from their sibling examples
# small matrix products: BLAS threads cost more than they save on the gallery's tiny networks
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import nnderiv  # noqa: E402

project = "nnderiv"
author = "nnderiv developers"
copyright = "nnderiv developers"  # noqa: A001 - Sphinx's name
release = version = nnderiv.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb", "auto_examples/*.py"]

# --- MyST: $...$ and $$...$$ math, \begin{align} environments, ::: fences ---------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# --- API reference from the docstrings --------------------------------------------------------
autodoc_default_options = {"members": False}
autodoc_typehints = "none"  # shapes and types are in the prose of each docstring
autodoc_preserve_defaults = True  # show defaults as written (np.linspace(...)), not their repr
autosummary_generate = False
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# --- tutorials: examples/plot_*.py, executed at every build ----------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # execute these ...
    "ignore_pattern": r"(?:^|/)(?!plot_)[^/]+\.py$",  # ... and skip the long command-line examples
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "plot_gallery": "True",
}

html_theme = "furo"
html_title = f"nnderiv {release}"
html_static_path = []
