"""Metrics of a run: one JSONL and one CSV per kind (``steps``, ``epochs``), TensorBoard when installed.

Records are appended and flushed as they come, so a killed run keeps everything up to its last
step. On resume, ``truncate(step)`` drops records after the checkpoint's step (atomically), so
the resumed run appends exactly where the checkpoint stands and no step appears twice.

Example:
    >>> import tempfile
    >>> log = MetricsLog(Path(tempfile.mkdtemp()), "steps")
    >>> log.append({"step": 1, "loss": 0.5}); log.append({"step": 2, "loss": 0.4})
    >>> log.truncate(1); [r["step"] for r in log.read()]
    [1]
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from gnn_ooc.graphstore.io.atomic import atomic_write_bytes


class MetricsLog:
    """``RUN/metrics/NAME.jsonl`` and ``NAME.csv``; records are flat dicts with a ``step`` key."""

    def __init__(self, run: Path, name: str) -> None:
        self.folder = Path(run) / "metrics"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.folder / f"{name}.jsonl"
        self.csv = self.folder / f"{name}.csv"
        self._columns: list[str] | None = None

    def read(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is gone too
        return out

    def append(self, record: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._append_csv(record)

    def _append_csv(self, record: dict[str, Any]) -> None:
        if self._columns is None:
            self._columns = self._csv_columns() or list(record)
            if not self.csv.exists() or self.csv.stat().st_size == 0:
                self.csv.write_text(",".join(self._columns) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.DictWriter(f, self._columns, extrasaction="ignore").writerow(record)

    def _csv_columns(self) -> list[str] | None:
        if not self.csv.exists():
            return None
        with open(self.csv) as f:
            header = f.readline().strip()
        return header.split(",") if header else None

    def truncate(self, step: int, epoch: int | None = None) -> None:
        """Keep only records with ``step <= step`` (and, given ``epoch``, ``epoch < epoch``) in both
        files: a checkpoint taken at an epoch's last batch shares its step with the epoch's record."""
        keep = [r for r in self.read() if int(r.get("step", 0)) <= step
                and (epoch is None or int(r.get("epoch", -1)) < epoch)]
        atomic_write_bytes(self.jsonl, "".join(json.dumps(r) + "\n" for r in keep).encode())
        columns = self._csv_columns() or (list(keep[0]) if keep else [])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, extrasaction="ignore")
        if columns:
            writer.writeheader()
        writer.writerows(keep)
        atomic_write_bytes(self.csv, buf.getvalue().encode())
        self._columns = columns or None


class TensorBoard:
    """Scalars to ``RUN/tensorboard`` when ``torch.utils.tensorboard`` imports; otherwise nothing."""

    def __init__(self, run: Path, enabled: bool = True) -> None:
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._writer = SummaryWriter(str(Path(run) / "tensorboard"))

    def scalars(self, prefix: str, record: dict[str, Any], step: int) -> None:
        if self._writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
