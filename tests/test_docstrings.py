"""The short examples in public docstrings run (those marked ``+SKIP`` need data that is not here)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gnn_ooc

MODULES = sorted(
    m.name for pkg in ("graphstore", "sampler", "trainer", "tools") for m in pkgutil.iter_modules(importlib.import_module(f"gnn_ooc.{pkg}").__path__, f"gnn_ooc.{pkg}.")
)


@pytest.mark.parametrize("name", ["gnn_ooc", *MODULES])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name) if name != "gnn_ooc" else gnn_ooc
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_tests_import_the_package_namespace_only() -> None:
    """``from graphstore...`` (the folder, not ``gnn_ooc.graphstore``) loads a second copy of a
    module; its numba ``cache=True`` entries then name a module the installed package lacks, and
    a later run of the real package fails to load them."""
    import re
    from pathlib import Path

    bare = re.compile(r"^\s*(from|import)\s+(graphstore|sampler|trainer|tools|cuda)\b", re.M)
    offenders = [str(p) for p in Path(__file__).parent.rglob("*.py") if bare.search(p.read_text())]
    assert offenders == []
