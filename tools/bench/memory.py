"""Does a run stay inside ``--memory-budget``? Every mode at a few budgets, one epoch each.

Generates (or reuses, from ``--work``) a graph (default 400 k nodes, average degree 8
symmetrised, 64-dim float32 features: 98 MiB), then trains one epoch (``--eval-every 1``) in a
child process per (budget, mode) and reads the peak the run's own meter recorded
(``summary.json`` ``memory``: anonymous + shared memory of the trainer and the planner, each
above its baseline). A run the budget cannot hold must be refused up front (exit 2, naming the
least budget that would do); the report shows that line instead of a peak. Exits 1 if any run
went over its budget or failed otherwise.

Example:
    $ python -m gnn_ooc.tools.bench.memory
    $ python -m gnn_ooc.tools.bench.memory --modes offline,online --json > memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gnn_ooc.graphstore.io.owned import RUN
from gnn_ooc.tools.bench.preprocess import emit, ensure_dataset, remove_own
from gnn_ooc.units import format_size, parse_size

DEFAULT_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-memory"
MODES = ("offline", "online", "memory", "mmap")
# (budget, fanouts, batch size, hidden): the last one is a small run at a small budget
CASES = (("256M", "10,5", 1024, 128), ("128M", "10,5", 1024, 128), ("64M", "5,5", 256, 32))


def say(msg: str) -> None:
    print(f"[bench-memory {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_one(args: argparse.Namespace, case: tuple[str, str, int, int], mode: str) -> dict[str, Any]:
    budget, fanouts, batch, hidden = case
    run = args.work / "runs" / f"{mode}-{budget}"
    remove_own(run, RUN)
    cmd = [sys.executable, "-m", "gnn_ooc.tools.cli", "train", str(args.work / "dataset"), "--mode", mode,
           "--epochs", "1", "--eval-every", "1", "--out", str(run), "--fanouts", fanouts, "--batch-size",
           str(batch), "--hidden", str(hidden), "--memory-budget", budget, "--seed", "0", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out: dict[str, Any] = {"budget": parse_size(budget), "fanouts": fanouts, "batch_size": batch,
                           "hidden": hidden, "mode": mode, "exit": proc.returncode}
    if proc.returncode:
        out["error"] = (proc.stderr.strip().splitlines() or [""])[-1]
    else:
        memory = json.loads((run / "summary.json").read_text())["memory"]
        out.update(peak=memory["peak_above_baseline"], within=memory["within_budget"],
                   trainer_baseline=memory["trainer_baseline"], planner_baseline=memory["planner_baseline"])
    remove_own(run, RUN)
    return out


def ok(r: dict[str, Any]) -> bool:
    """Within the budget, or refused up front with the usage exit code."""
    return bool(r.get("within")) if r["exit"] == 0 else r["exit"] == 2


def table(rows: list[dict[str, Any]], modes: list[str]) -> str:
    lines = ["| budget | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for case in CASES:
        cells = []
        for mode in modes:
            r = next((r for r in rows if r["mode"] == mode and r["budget"] == parse_size(case[0])), None)
            if r is None:
                cells.append("")
            elif r["exit"] == 0:
                cells.append(format_size(r["peak"]) + ("" if r["within"] else " OVER"))
            else:
                cells.append(f"exit {r['exit']}: {r['error'][:90]}")
        lines.append(f"| {case[0]} (fan-outs {case[1]}, batch {case[2]}, hidden {case[3]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"graph folder, reused (default {DEFAULT_WORK})")
    p.add_argument("--nodes", type=int, default=400_000)
    p.add_argument("--avg-degree", type=float, default=8.0)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in MODES]:
        p.error(f"--modes: unknown {', '.join(bad)}; expected some of {', '.join(MODES)}")
    ensure_dataset(args.work, args, marker="bench-memory.json",
                   flags=["--undirected", "--dedup", "--split", "0.05,0.01,0.01"], say=say)
    rows = []
    for case in CASES:
        for mode in modes:
            say(f"{mode} at {case[0]}")
            rows.append(run_one(args, case, mode))
    emit(table(rows, modes), {"runs": rows, "all_kept": all(ok(r) for r in rows)}, args.json)
    return 0 if all(ok(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
