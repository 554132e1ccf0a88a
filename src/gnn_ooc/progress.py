"""Progress bars for long steps (preprocess phases, planning, packing, evaluation, embedding).

A bar is shown only when asked for (``enabled``) and stderr is a terminal (tqdm's own test):
logs and pipes get the one-line summaries the commands print anyway. Every long loop takes a
bar through ``bar`` so the look is the same everywhere.

Example:
    >>> with bar(3, "demo", enabled=False) as b:
    ...     for _ in range(3):
    ...         b.update(1)
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


class NoBar:
    """A bar that shows nothing (progress off, or no tqdm)."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...
    def set_description_str(self, s: str = "", refresh: bool = True) -> None: ...
    def close(self) -> None: ...

    def __enter__(self) -> NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(total: int | float | None, desc: str, *, enabled: bool = True, unit: str = "it",
        initial: int = 0, scale: bool = False, position: int | None = None) -> Any:
    """A tqdm bar on stderr (``unit_scale`` with ``scale``, for bytes; ``position`` for a second
    bar shown at once, from another thread), or a ``NoBar``."""
    if not enabled:
        return NoBar()
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, dynamic_ncols=True,
                disable=None, unit_scale=scale, unit_divisor=1024 if scale else 1000, position=position)


def over(items: Iterable[T], desc: str, *, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """``items`` with a bar advancing per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc, enabled=enabled) as b:
        for item in items:
            yield item
            b.update(1)
