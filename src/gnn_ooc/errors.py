"""The errors gnn-ooc raises on purpose, shared by every package: each says what went wrong with
which file, row or id, and what to do; ``exit_code`` is what the command line exits with.

Example:
    >>> str(InputError("edges.csv", "src id -3 is negative", expected="ids >= 0", row=17))
    'edges.csv: row 17: src id -3 is negative (expected ids >= 0)'
"""

from __future__ import annotations

import os


class GnnOocError(Exception):
    """Base class of every error gnn-ooc raises on purpose; ``exit_code`` is the command line's:
    1 for bad or damaged data, 2 for bad flags or settings (the subclasses that are say so)."""

    exit_code = 1


class InputError(GnnOocError, ValueError):
    """A raw input is unusable; the message names the file, the row or id, and what was expected.

    Example:
        >>> str(InputError("edges.csv", "src id -3 is negative", expected="ids >= 0", row=17))
        'edges.csv: row 17: src id -3 is negative (expected ids >= 0)'
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        problem: str,
        *,
        expected: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.expected = expected
        self.row = row
        parts = [p for p in (self.path, None if row is None else f"row {row}", problem) if p]
        text = ": ".join(parts)
        super().__init__(text if expected is None else f"{text} (expected {expected})")


class DatasetError(GnnOocError):
    """A dataset folder is missing, of an unsupported version, or corrupt."""


class ChecksumError(DatasetError):
    """A dataset file's size or checksum differs from its manifest entry."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: {problem}")


class MemoryBudgetError(GnnOocError):
    """The work cannot be done within the memory budget it was given."""

    exit_code = 2


class OutputError(GnnOocError):
    """An output path gnn-ooc refuses to write: a folder it did not create, or one inside or
    above an input (the message names the path and what to do)."""

    exit_code = 2


class DiskSpaceError(GnnOocError):
    """The output's filesystem has less free space than the work needs (checked before writing,
    or hit while writing)."""

