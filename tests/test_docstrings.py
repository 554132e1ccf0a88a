"""The short examples in public docstrings run (those marked ``+SKIP`` need data that is not here)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gnn_ooc

# every module of the core package and of every subpackage, at any depth (graphstore's are nested
# by concept; the subpackages are folders of their own, mapped into gnn_ooc by pyproject.toml)
_PACKAGES = [gnn_ooc] + [importlib.import_module(f"gnn_ooc.{p}") for p in ("graphstore", "sampler", "trainer", "cuda", "tools")]
MODULES = sorted({m.name for pkg in _PACKAGES for m in pkgutil.walk_packages(pkg.__path__, f"{pkg.__name__}.")}
                 | {pkg.__name__ for pkg in _PACKAGES[1:]})


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
