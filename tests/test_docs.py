"""Every ```python block of the README and of docs/*.md runs (one namespace per file, in order)."""

import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (checkpoints, plots)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in python_blocks(page):
            exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs
