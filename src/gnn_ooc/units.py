"""Human units for sizes: ``512M``, ``8G``, ``1.5GiB``, ``4096``; and the reverse for reports.

Example:
    >>> parse_size("512M"), parse_size("1.5GiB"), format_size(3 << 30)
    (536870912, 1610612736, '3.0 GiB')
    >>> parse_size_or_multiple("2x", of=1000), parse_size_or_multiple("4K", of=1000)
    (2000, 4096)
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from a size with an optional binary unit (K, M, G, T, P; ``B``/``iB`` suffix allowed)."""
    if isinstance(text, int):
        return text
    m = _PATTERN.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size; expected e.g. 4096, 512M, 8G or 1.5GiB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise ValueError(f"{text!r}: a size must be at least 1 byte")
    return int(value)


def format_size(n: float) -> str:
    """A byte count with a binary unit, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_size_or_multiple(text: str, of: int) -> int:
    """A size (``20G``) or a multiple of ``of`` bytes (``2x``, ``0.5x``): how pack budgets are given."""
    stripped = text.strip().lower()
    if stripped.endswith("x"):
        try:
            return int(float(stripped[:-1]) * of)
        except ValueError:
            raise ValueError(f"{text!r} is not a multiple; expected e.g. 2x or 0.5x") from None
    return parse_size(text)
