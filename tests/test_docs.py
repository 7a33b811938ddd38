"""Every ```python block of README.md and docs/*.md runs as written, each in a fresh namespace in a temporary folder.

A block that needs what a test cannot make cheaply (a trained run, downloaded data) is preceded by the marker
``<!-- docs-test: needs-run (why; where it is tested instead) -->``: it is only compiled, and the marked blocks are
listed here, so a new one is a deliberate choice.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(
    r"(?P<marker><!-- docs-test: needs-run \((?P<why>.*?)\) -->\n)?```python\n(?P<code>.*?)^```", re.M | re.S
)
# the blocks that are only compiled: explain() needs a trained run (tests/test_explain.py trains one and calls it)
NEEDS_RUN = {"docs/explain.md#1", "README.md#2"}


def python_blocks() -> list[tuple[str, str, str | None]]:
    """``(name, code, why it needs a run or None)`` per block; ``name`` is ``<file>#<index from 1>``."""
    blocks = []
    for document in DOCUMENTS:
        for index, match in enumerate(_BLOCK.finditer(document.read_text(encoding="utf-8")), start=1):
            blocks.append((f"{document.relative_to(ROOT)}#{index}", match["code"], match["why"]))
    return blocks


BLOCKS = python_blocks()


def test_the_marked_blocks_are_the_listed_ones():
    assert len(BLOCKS) >= 2
    assert {name for name, _, why in BLOCKS if why is not None} == NEEDS_RUN


@pytest.mark.parametrize(("name", "code", "why"), BLOCKS, ids=[name for name, _, _ in BLOCKS])
def test_python_block_runs(name, code, why, tmp_path, monkeypatch):
    compiled = compile(code, name, "exec")
    if why is not None:
        pytest.skip(f"{name} needs a run: {why}")
    monkeypatch.chdir(tmp_path)
    exec(compiled, {"__name__": "__docs__"})
