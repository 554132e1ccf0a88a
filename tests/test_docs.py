"""Every ```python block in README.md and docs/*.md runs, so the documentation cannot rot.

Each block runs on its own (blocks share nothing), as a fresh module, in an empty temporary
working directory. A block that needs what is not here (a built dataset, a GPU, a cluster) is
skipped when it holds the marker comment ``# not run``; use ```text for signatures and sketches.
"""

from __future__ import annotations

import re
import sys
import textwrap
import types
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKER = "# not run"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`]*)$")


class Snippet(NamedTuple):
    path: Path
    line: int  # 1-based line of the block's first code line
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Snippet]:
    """The ```python fenced blocks of a Markdown file (indented ones, in lists, included)."""
    out: list[Snippet] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m["fence"], m["info"].strip().split(" ")[0].lower()
        start = i + 1
        i = start
        # The block ends at a fence at least as long as the opening one, with nothing after it.
        while i < len(lines) and not re.fullmatch(rf"[ \t]*`{{{len(fence)},}}[ \t]*", lines[i]):
            i += 1
        if lang == "python":
            out.append(Snippet(path, start + 1, textwrap.dedent("\n".join(lines[start:i])) + "\n"))
        i += 1
    return out


def markdown_files() -> list[Path]:
    return [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if p.is_file()]


SNIPPETS = [s for p in markdown_files() for s in python_blocks(p)]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
def test_python_block_runs(snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if SKIP_MARKER in snippet.code:
        pytest.skip(f"marked '{SKIP_MARKER}'")
    monkeypatch.chdir(tmp_path)
    name = "docs_snippet_" + re.sub(r"\W", "_", snippet.name)
    module = types.ModuleType(name)
    module.__file__ = str(snippet.path)
    # Registered while it runs, so dataclasses, pickling and settings() see a real module.
    monkeypatch.setitem(sys.modules, name, module)
    # Padded so that line numbers in a traceback are the Markdown file's.
    code = compile("\n" * (snippet.line - 1) + snippet.code, str(snippet.path), "exec")
    exec(code, module.__dict__)


def test_blocks_are_found() -> None:
    names = {s.path.name for s in SNIPPETS}
    assert "custom_samplers.md" in names
    # The custom-sampler guide's example really runs (it is not marked away).
    assert any(s.path.name == "custom_samplers.md" and SKIP_MARKER not in s.code for s in SNIPPETS)


def test_block_extraction(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "text\n```python\nx = 1\n```\n```sh\nls\n```\n"
        "- item\n\n  ```python\n  if True:\n      y = 2\n  ```\n"
        "````python\n```\nnot a fence end\n````\n",
        encoding="utf-8",
    )
    blocks = python_blocks(md)
    assert [b.code for b in blocks] == ["x = 1\n", "if True:\n    y = 2\n", "```\nnot a fence end\n"]
    assert [b.line for b in blocks] == [3, 11, 15]
