"""What a dataset folder holds besides the dataset, what may go, and whether all of it checks out.

``inventory`` lists the plans (with their packs) and the runs under a dataset with their sizes
and who uses them; ``clean`` removes what no live run needs; ``verify_all`` checks the dataset,
every plan epoch, every pack and every checkpoint of the runs under it.

What ``clean`` removes: leftovers of killed commands (``.NAME.partial-*`` staging folders whose
lock is free, interrupted deletes), plans and packs a run made for itself when that run is not
running (``owner.json`` names the run; its lock tells whether it lives; a resumed run plans
them again, byte for byte); with ``all_plans``, also plans made by ``gnn-ooc sample`` and packs
made by ``gnn-ooc pack``. It never removes a run folder, nor anything that is not gnn-ooc's.

Example:
    >>> inv = inventory(Path("demo/dataset"))            # doctest: +SKIP
    >>> [p["name"] for p in inv["plans"]]                 # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import os
import re
from functools import partial
from pathlib import Path
from typing import Any, Callable

from gnn_ooc.errors import GnnOocError
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.format.integrity import check_dataset
from gnn_ooc.graphstore.io.atomic import remove_dir
from gnn_ooc.graphstore.io.owned import PLAN, RUN
from gnn_ooc.graphstore.pack.format import packs_dir, packs_root
from gnn_ooc.trainer.runfolder import is_live, owner_of

_LEFTOVER = re.compile(r"^\..+\.(partial|removed|old)-[0-9a-zA-Z-]+$")
_EPOCH = re.compile(r"^epoch-\d{6}$")


def folder_bytes(path: Path) -> int:
    """Bytes of every file below ``path`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _owner(folder: Path) -> dict[str, Any]:
    run = owner_of(folder)
    if run is None:
        made_by = "a run (older gnn-ooc)" if folder.name.startswith("run-") else "gnn-ooc sample/pack"
        return {"made_by": made_by, "run": None, "live": False}
    return {"made_by": "a run", "run": str(run), "live": is_live(run)}


def _packs(plan: Path) -> list[dict[str, Any]]:
    root = packs_root(plan)
    if not root.is_dir():
        return []
    return [{"name": p.name, "bytes": folder_bytes(p), "epochs": sorted(int(e.name[6:]) for e in p.iterdir()
                                                                        if _EPOCH.match(e.name)), **_owner(p)}
            for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _plans(ds: Path) -> list[dict[str, Any]]:
    root = ds / "plans"
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and PLAN.owns(p):
            epochs = sorted(int(e.name[6:]) for e in p.iterdir() if _EPOCH.match(e.name))
            out.append({"name": p.name, "path": str(p), "bytes": folder_bytes(p), "epochs": epochs,
                        "packs": _packs(p), **_owner(p)})
    return out


def _runs(ds: Path) -> list[dict[str, Any]]:
    root = ds / "runs"
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and (RUN.owns(p) or (p / "config.yaml").is_file() or (p / "config.json").is_file()):
            out.append({"name": p.name, "path": str(p), "bytes": folder_bytes(p), "live": is_live(p),
                        "checkpoints": len(list((p / "checkpoints").glob("step-*.pt")))})
    return out


def _leftovers(ds: Path) -> list[Path]:
    found = []
    for folder in [ds, ds / "plans", *[p for p in (ds / "plans").glob("*") if p.is_dir()],
                   *[p for p in (ds / "plans").glob("*/packs/*") if p.is_dir()]]:
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if _LEFTOVER.match(p.name) and p.is_dir() and _unlocked(p)]
    return found


def _unlocked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live command writes there
    finally:
        os.close(fd)
    return True


def inventory(dataset: Path) -> dict[str, Any]:
    """Plans (with packs), runs and leftovers under ``dataset``, with sizes and owners."""
    ds = Path(dataset)
    return {"plans": _plans(ds), "runs": _runs(ds),
            "leftovers": [{"path": str(p), "bytes": folder_bytes(p)} for p in _leftovers(ds)]}


def clean(dataset: Path, *, all_plans: bool = False, dry_run: bool = False,
          say: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Remove what no live run needs (see the module docstring); returns what was (or would be) removed."""
    ds = Dataset.open(dataset).path  # only ever inside a gnn-ooc dataset
    gone: list[dict[str, Any]] = []

    def drop(path: Path, why: str) -> None:
        gone.append({"path": str(path), "bytes": folder_bytes(path), "why": why})
        if not dry_run:
            remove_dir(path, path.parent)
        say(f"{'would remove' if dry_run else 'removed'} {path} ({why})")

    for p in _leftovers(ds):
        drop(p, "left by a killed command")
    for plan in _plans(ds):
        path = Path(plan["path"])
        if plan["live"]:
            continue
        if plan["run"] is not None or plan["made_by"].startswith("a run") or all_plans:
            drop(path, f"made for {plan['run'] or 'a run'}, which is not running" if plan["made_by"].startswith("a run")
                 else "made by gnn-ooc sample (--all-plans)")
            continue
        for pack in plan["packs"]:
            if not pack["live"] and (pack["run"] is not None or all_plans):
                drop(packs_dir(path, pack["name"]), "packs of a run that is not running" if pack["run"]
                     else "made by gnn-ooc pack (--all-plans)")
    return gone


def verify_all(dataset: Path, say: Callable[[str], None] = lambda _m: None) -> list[str]:
    """Check the dataset (checksums and structure), every planned epoch, every pack and every
    checkpoint of the runs under it; returns one line per damaged item (empty: all checks out)."""
    from gnn_ooc.graphstore.pack.reader import PackedEpoch
    from gnn_ooc.sampler.plan import Plan
    from gnn_ooc.trainer.checkpoint import load_checkpoint

    ds = Dataset.open(dataset)
    problems: list[str] = []

    def attempt(what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except GnnOocError as err:
            problems.append(str(err))
            say(f"damaged: {err}")
        else:
            say(f"ok: {what}")

    attempt(f"dataset {ds.path}", lambda: check_dataset(ds, features=True))
    for info in _plans(ds.path):
        try:
            plan = Plan.open(ds, info["name"])
        except GnnOocError as err:
            problems.append(str(err))
            continue
        for epoch in info["epochs"]:
            attempt(f"plan {info['name']} epoch {epoch}", partial(_verify_plan_epoch, plan, epoch))
        if plan.first_hop_path().is_dir():
            attempt(f"plan {info['name']} first-hop index", plan.verify_first_hop)
        for pack in info["packs"]:
            for epoch in pack["epochs"]:
                attempt(f"pack {info['name']}/{pack['name']} epoch {epoch}",
                        partial(_verify_pack, PackedEpoch, plan, epoch, pack["name"]))
    for run in _runs(ds.path):
        for ckpt in sorted((Path(run["path"]) / "checkpoints").glob("*.pt")):
            attempt(f"checkpoint {ckpt}", partial(load_checkpoint, ckpt))
    return problems


def _verify_plan_epoch(plan: Any, epoch: int) -> None:
    plan.epoch(epoch).verify()


def _verify_pack(cls: Any, plan: Any, epoch: int, name: str) -> None:
    packed = cls(plan, epoch, name)
    try:
        packed.verify()
    finally:
        packed.close()
