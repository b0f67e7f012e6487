"""Every ```python block of the README and of the docs' Markdown pages runs (one namespace per file, in order).

Pages in subfolders (``docs/theory/``, ``docs/api/``) count; the build outputs under ``docs/_build``
and ``docs/auto_examples`` do not.
"""

import ast
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_OUTPUTS = {"_build", "auto_examples", "gen_modules"}
PAGES = [
    ROOT / "README.md",
    *sorted(p for p in (ROOT / "docs").rglob("*.md") if BUILD_OUTPUTS.isdisjoint(p.relative_to(ROOT / "docs").parts)),
]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoints, plots)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in python_blocks(page):
            exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs


def quoted_objects(path: Path) -> list[tuple[Path, str]]:
    """The ``literalinclude`` directives of a page with a ``:pyobject:``: (source file, object name)."""
    pattern = r"```\{literalinclude\} (\S+)\n:pyobject: (\S+)\n"
    return [(path.parent / file, name) for file, name in re.findall(pattern, path.read_text(encoding="utf-8"))]


def defined_names(source: Path) -> set[str]:
    """Top-level functions and classes of a module, and ``Class.method`` for their methods."""
    names = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef))
    return names


@pytest.mark.parametrize("page", [p for p in PAGES if quoted_objects(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_code_exists(page):
    """The theory pages quote code by name, so a rename must update them (Sphinx -W fails too)."""
    for source, name in quoted_objects(page):
        assert source.is_file(), f"{page.name} quotes {source}, which does not exist"
        assert name in defined_names(source), f"{page.name} quotes {name} from {source.name}, which has no such object"
