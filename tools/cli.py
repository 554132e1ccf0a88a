"""The ``gnn-ooc`` command line: flags are parsed once into typed specs, then plain calls.

Example:
    $ gnn-ooc synth raw --nodes 100000 --avg-degree 10
    $ gnn-ooc preprocess raw -o data --undirected --memory-budget 2G
    $ gnn-ooc info data
    $ gnn-ooc verify data
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gnn_ooc
from gnn_ooc.errors import GnnOocError
from gnn_ooc.graphstore.ingest.base import PreprocessSpec
from gnn_ooc.logs import LOG_LEVELS, setup_logging
from gnn_ooc.units import format_size, parse_size, parse_size_or_multiple


def main(argv: Sequence[str] | None = None) -> int:
    from gnn_ooc.memory import tune_allocator

    tune_allocator()  # freed batches and buffers go back to the system (the memory budget's meter sees it)
    parser = build_parser()
    args = parser.parse_args(join_negative_lists(list(sys.argv[1:] if argv is None else argv)))
    setup_logging(args.log_level)
    handler: Callable[[argparse.Namespace], int] = args.handler
    with _terminate_as_exception():
        try:
            return handler(args)
        except BaseException as e:  # noqa: BLE001 - every way out becomes one line and an exit code
            message, code = describe_failure(e)
            if message:
                print(f"gnn-ooc {args.command}: {message}", file=sys.stderr)
            return code


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` and ``with`` runs: staged
    folders are removed, child processes stopped (a BaseException: no ``except Exception`` eats it)."""


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (main() called from a thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe_failure(e: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an error that ends a command: 1 for bad or damaged data
    and the machine's limits (disk, permissions), 2 for bad flags, 130/143 when interrupted."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, OSError) and not isinstance(cause, BrokenPipeError):
        e = cause  # a pipeline stage's I/O error: the file and the reason, not the stage's traceback
    if isinstance(e, GnnOocError):
        return f"error: {e}", e.exit_code
    if isinstance(e, (ValueError, FileExistsError)):
        return f"error: {e}", 2
    if isinstance(e, BrokenPipeError):
        _silence_stdout()  # `gnn-ooc info | head`: the reader left; nothing to say
        return "", 141
    if isinstance(e, OSError):
        return f"error: {os_error_text(e)}", 1
    if isinstance(e, MemoryError):
        return ("error: out of memory; lower --memory-budget's consumers (batch size, caches) or raise the "
                "machine's memory", 1)
    if isinstance(e, KeyboardInterrupt):
        return "interrupted; partial outputs were removed", 130
    if isinstance(e, Terminated):
        return "terminated (SIGTERM); partial outputs were removed", 143
    raise e  # a bug, not a user's mistake: the traceback is what a report needs


def os_error_text(e: OSError) -> str:
    """An OSError as the file, what went wrong and what to do."""
    where = f"{e.filename}: " if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}no space left on the device (writing); free space or write the output elsewhere"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}{e.strerror} (check the permissions, or choose a folder you can write)"
    return f"{where}{e.strerror or e}"


def _silence_stdout() -> None:
    # the interpreter flushes stdout at exit: point it at /dev/null so that flush cannot fail again
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_NEGATIVE_LIST = re.compile(r"^-\d+(\s*,\s*-?\d+)+$")


def join_negative_lists(argv: list[str]) -> list[str]:
    """``--fanouts -1,-1`` as ``--fanouts=-1,-1``: argparse takes a value starting with '-' for an
    option unless it is a single negative number, and lists of them are what fan-outs are.

    Example:
        >>> join_negative_lists(["train", "d", "--fanouts", "-1,-1", "--epochs", "2"])
        ['train', 'd', '--fanouts=-1,-1', '--epochs', '2']
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_LIST.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gnn-ooc", description="Out-of-core GNN training.")
    parser.add_argument("--version", action="version", version=f"gnn-ooc {gnn_ooc.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_preprocess(sub)
    _add_info(sub)
    _add_verify(sub)
    _add_clean(sub)
    _add_synth(sub)
    _add_sample(sub)
    _add_pack(sub)
    _add_train(sub)
    _add_embed(sub)
    for command in sub.choices.values():
        command.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                             help="the least important messages shown on stderr (default: info)")
    return parser


_log = logging.getLogger("gnn_ooc.cli")


def _say(msg: str) -> None:
    _log.info(msg)


# --- preprocess ------------------------------------------------------------------------------------
def _add_preprocess(sub: Any) -> None:
    p = sub.add_parser("preprocess", help="raw graph -> on-disk dataset (out of core)",
                       description="Turn a raw graph into the on-disk dataset. Flags override what RAW_DIR provides.")
    p.add_argument("raw_dir", nargs="?", type=Path, help="folder in the raw layout (edges.parquet, node_features.npy, ...)")
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--ogb", type=Path, help="an OGB node-property folder (raw/edge.csv.gz, ...)")
    p.add_argument("--ogb-split", help="which split/<name> of an OGB folder (default: the only/first one)")
    p.add_argument("--edges", nargs="+", type=Path, help="Parquet files or folders, CSV/TSV[.gz], or a (2, E) .npy")
    p.add_argument("--src-col", help="source id column (default src; a number for headerless CSV)")
    p.add_argument("--dst-col", help="destination id column (default dst)")
    p.add_argument("--features", type=Path, help=".npy of any float dtype, Parquet or CSV")
    p.add_argument("--feature-col", help="Parquet list column holding the features")
    p.add_argument("--labels", type=Path, help=".npy, Parquet or CSV of one integer label per node (-1/NaN unknown)")
    p.add_argument("--split-dir", type=Path, help="folder with train/valid/test id files")
    p.add_argument("--split", help="random split fractions, e.g. 0.8,0.1,0.1 (of labelled nodes)")
    p.add_argument("--split-seed", type=int, help="seed of --split (default 0)")
    p.add_argument("--undirected", action="store_true", default=None, help="add every edge's reverse")
    p.add_argument("--drop-self-loops", action="store_true", default=None)
    p.add_argument("--dedup", action="store_true", default=None, help="remove duplicate edges")
    p.add_argument("--remap", action="store_true", default=None, help="map sparse or string ids to 0..N-1 (writes the map)")
    p.add_argument("--feature-dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--nan-policy", choices=["error", "zero"], help="what to do with NaN/inf features (default error)")
    p.add_argument("--memory-budget", type=parse_size, help="peak memory for the build, e.g. 512M, 8G (default 1G)")
    p.add_argument("--tmp-dir", type=Path, help="scratch folder for bucket files (default: inside the output's temp folder)")
    p.add_argument("--threads", type=int, help="numba threads (default: all cores)")
    p.add_argument("--force", action="store_true", default=None, help="rebuild even if the inputs are unchanged")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_preprocess)


def spec_from_args(args: argparse.Namespace) -> PreprocessSpec:
    """Layout-found inputs first, explicit flags over them; unset flags keep the spec's defaults."""
    from gnn_ooc.graphstore.ingest.layouts import ogb_layout, raw_layout

    found: dict[str, Any] = {}
    if args.raw_dir is not None and args.ogb is not None:
        raise ValueError("give RAW_DIR or --ogb, not both")
    if args.raw_dir is not None:
        found = {**raw_layout(args.raw_dir), "source_dir": args.raw_dir}
    elif args.ogb is not None:
        found = {**ogb_layout(args.ogb, args.ogb_split), "source_dir": args.ogb}
    values: dict[str, Any] = {k: v for k, v in found.items() if v is not None}
    if getattr(args, "split", None) is not None:
        values.pop("split_dir", None)  # an explicit --split replaces the layout's split folder
    names = {f.name for f in dataclasses.fields(PreprocessSpec)}
    for key in names:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if "edges" not in values:
        raise ValueError("no edges: give RAW_DIR, --ogb or --edges")
    values["edges"] = tuple(values["edges"])
    if isinstance(values.get("split"), str):
        values["split"] = _fractions(values["split"])
    return PreprocessSpec(**values)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--split {text!r}: expected three fractions like 0.8,0.1,0.1") from None
    if len(parts) != 3:
        raise ValueError(f"--split {text!r}: expected three fractions like 0.8,0.1,0.1")
    return (parts[0], parts[1], parts[2])


def _run_preprocess(args: argparse.Namespace) -> int:
    from gnn_ooc.graphstore.ingest.preprocess import preprocess

    spec = spec_from_args(args)
    result = preprocess(spec, progress=_say, bars=not args.no_progress)
    m = result.manifest
    summary = {
        "dataset": str(result.path), "skipped": result.skipped, "seconds": round(result.seconds, 3),
        "nodes": m.num_nodes, "edges": m.num_edges, "feature_dim": m.feature_dim, "classes": m.num_classes,
        "phases": result.phases,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not result.skipped:
        print(f"{result.path}: {m.num_nodes} nodes, {m.num_edges} edges in {result.seconds:.2f} s")
    return 0


# --- info / verify / clean ---------------------------------------------------------------------
def _add_info(sub: Any) -> None:
    p = sub.add_parser("info", help="counts, dtypes, sizes and degree statistics of a dataset; its plans, packs and runs")
    p.add_argument("dataset", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_info)


def dataset_info(path: Path) -> dict[str, Any]:
    from gnn_ooc.graphstore.format.dataset import Dataset
    from gnn_ooc.tools.housekeeping import inventory

    ds = Dataset.open(path)
    m = ds.manifest
    return {
        "path": str(path), "format_version": m.version, "nodes": m.num_nodes, "edges": m.num_edges,
        "index_dtype": m.index_dtype, "feature_dim": m.feature_dim, "feature_dtype": m.feature_dtype,
        "classes": m.num_classes, "splits": {k: int(v.shape[0]) for k, v in ds.splits.items()},
        "remapped": m.id_map is not None, "degree": dataclasses.asdict(ds.degree_stats()),
        "files": {k: {"size": e.size, "dtype": e.dtype, "shape": e.shape} for k, e in m.files.items()},
        "total_bytes": sum(e.size for e in m.files.values()), "created_by": m.created_by,
        **inventory(ds.path),
    }


def _run_info(args: argparse.Namespace) -> int:
    info = dataset_info(args.dataset)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    d = info["degree"]
    print(f"dataset     {info['path']}  (format v{info['format_version']}, {info['created_by']})")
    print(f"nodes       {info['nodes']:,}")
    print(f"edges       {info['edges']:,}  (indices {info['index_dtype']})")
    print(f"in-degree   min {d['min']}  median {d['median']:g}  mean {d['mean']:.2f}  p99 {d['p99']:g}  max {d['max']}  isolated {d['isolated']:,}")
    if info["feature_dim"] is not None:
        print(f"features    {info['feature_dim']} x {info['feature_dtype']}")
    if info["classes"] is not None:
        print(f"classes     {info['classes']}")
    if info["splits"]:
        print("splits      " + ", ".join(f"{k} {v:,}" for k, v in info["splits"].items()))
    print(f"ids         {'remapped (original ids kept)' if info['remapped'] else 'as given'}")
    print(f"size        {format_size(info['total_bytes'])}")
    for name, f in info["files"].items():
        print(f"  {name:<14} {format_size(f['size']):>10}  {f['dtype']} {tuple(f['shape']) if f['shape'] else ''}")
    _print_inventory(info)
    return 0


def _print_inventory(info: dict[str, Any]) -> None:
    def owner(item: dict[str, Any]) -> str:
        if item["run"] is None:
            return item["made_by"]
        return f"run {item['run']} ({'running' if item['live'] else 'not running'})"

    for plan in info["plans"]:
        print(f"plan        {plan['name']}  {format_size(plan['bytes'])}, epochs {plan['epochs']}, {owner(plan)}")
        for pack in plan["packs"]:
            print(f"  pack      {pack['name']}  {format_size(pack['bytes'])}, epochs {pack['epochs']}, {owner(pack)}")
    for run in info["runs"]:
        print(f"run         {run['name']}  {format_size(run['bytes'])}, {run['checkpoints']} checkpoints"
              f"{', running' if run['live'] else ''}")
    for left in info["leftovers"]:
        print(f"leftover    {left['path']}  {format_size(left['bytes'])} (gnn-ooc clean removes it)")


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every checksum (dataset, plans, packs, checkpoints); exit 1 names the damage")
    p.add_argument("dataset", type=Path)
    p.set_defaults(handler=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from gnn_ooc.tools.housekeeping import verify_all

    problems = verify_all(args.dataset)
    if problems:
        for line in problems:
            print(f"gnn-ooc verify: damaged: {line}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: OK (dataset, plans, packs and checkpoints check out)")
    return 0


def _add_clean(sub: Any) -> None:
    p = sub.add_parser("clean", help="remove plans, packs and leftovers no running job needs (never runs or your files)",
                       description="Remove what killed commands left behind and the plans and packs of runs "
                                   "that are not running (a resumed run plans them again). Run folders and "
                                   "anything gnn-ooc did not write are never removed.")
    p.add_argument("dataset", type=Path)
    p.add_argument("--all-plans", action="store_true",
                   help="also plans made by gnn-ooc sample and packs made by gnn-ooc pack")
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_run_clean)


def _run_clean(args: argparse.Namespace) -> int:
    from gnn_ooc.tools.housekeeping import clean

    gone = clean(args.dataset, all_plans=args.all_plans, dry_run=args.dry_run, say=_say)
    total = sum(g["bytes"] for g in gone)
    if args.json:
        print(json.dumps({"removed": gone, "bytes": total, "dry_run": args.dry_run}, indent=2))
    else:
        verb = "would free" if args.dry_run else "freed"
        print(f"{args.dataset}: {len(gone)} folders, {verb} {format_size(total)}")
    return 0


# --- synth -----------------------------------------------------------------------------------------
def _add_synth(sub: Any) -> None:
    p = sub.add_parser("synth", help="write a synthetic raw graph (power law, planted communities)")
    p.add_argument("out", type=Path)
    p.add_argument("--nodes", type=int)
    p.add_argument("--avg-degree", type=float)
    p.add_argument("--feature-dim", type=int)
    p.add_argument("--classes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--homophily", type=float)
    p.add_argument("--split", type=_split_flag, help="train,valid,test fractions of the nodes (default 0.6,0.2,0.2)")
    p.add_argument("--feature-dtype", choices=("float32", "float16"), help="of node_features.npy (default float32)")
    p.add_argument("--noise-kind", choices=("gaussian", "uniform4"),
                   help="feature noise: gaussian (default) or uniform4 (sum of four uniforms, same variance, 14x faster)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_run_synth)


def _split_flag(text: str) -> tuple[float, float, float]:
    try:
        return _fractions(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_synth(args: argparse.Namespace) -> int:
    from gnn_ooc.tools.synth import SynthConfig, synth

    names = {f.name for f in dataclasses.fields(SynthConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    summary = synth(args.out, SynthConfig(**values), progress=_say, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2, default=str))
    return 0


# --- sample ----------------------------------------------------------------------------------------
def _add_sample(sub: Any) -> None:
    from gnn_ooc.sampler.factory import SAMPLERS

    p = sub.add_parser("sample", help="plan epochs offline: sampled batches and access counts in DATASET/plans/NAME",
                       description="Sample every epoch's shuffled batches ahead of training and store them compactly.")
    p.add_argument("dataset", type=Path)
    p.add_argument("--fanouts", required=True, help="per hop from the seeds, e.g. 15,10,5 (-1 = all neighbours)")
    p.add_argument("--sampler", choices=SAMPLERS, default="neighbor", help="for layerwise, --fanouts are new nodes per hop")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=1, help="how many epochs to plan")
    p.add_argument("--start-epoch", type=int, default=0, help="first epoch to plan (grow a plan incrementally)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="default", help="plan name (folder under DATASET/plans)")
    p.add_argument("--split", default="train", help="which split's nodes are the seeds")
    p.add_argument("--drop-last", action="store_true", help="drop the last, smaller batch")
    p.add_argument("--keep-epochs", type=int, help="keep at most this many epochs on disk (the newest)")
    p.add_argument("--weights", type=Path, help=".npy of one non-negative weight per CSC edge (weighted sampling)")
    p.add_argument("--edge-ids", action="store_true", help="store global edge ids too")
    p.add_argument("--threads", type=int, help="sampling threads (default: all cores)")
    p.add_argument("--memory-budget", type=parse_size, default=1 << 30, help="e.g. 512M, 8G (default 1G)")
    p.add_argument("--topology", choices=("auto", "memory", "external"), default="auto",
                   help="read the topology node by node (memory) or in sweeps over groups of batches (external, "
                        "for a topology larger than memory); auto: external when it does not fit (default)")
    p.add_argument("--force", action="store_true", help="replace a plan made with other settings")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from gnn_ooc.graphstore.format.dataset import Dataset
    from gnn_ooc.graphstore.format.integrity import check_dataset
    from gnn_ooc.sampler.base import SamplerError, parse_fanouts
    from gnn_ooc.sampler.factory import make_sampler
    from gnn_ooc.sampler.plan import Planner, PlanSpec

    if args.epochs < 1 or args.start_epoch < 0 or args.seed < 0 or (args.keep_epochs is not None and args.keep_epochs < 1):
        raise ValueError("--epochs and --keep-epochs must be >= 1, --start-epoch and --seed >= 0")
    try:
        parse_fanouts(args.fanouts)
    except SamplerError as err:
        raise ValueError(f"--fanouts: {err}") from None
    ds = Dataset.open(args.dataset)
    ds.split(args.split)  # a missing split is named now, before any work
    check_dataset(ds, features=False)  # sampling reads the topology and the split: checked first
    sampler = make_sampler(ds, args.sampler, args.fanouts, weights=args.weights, edge_ids=args.edge_ids,
                           threads=args.threads)
    spec = PlanSpec(name=args.name, batch_size=args.batch_size, split=args.split, seed=args.seed,
                    drop_last=args.drop_last, threads=args.threads, memory_budget=args.memory_budget,
                    topology=args.topology)
    planner = Planner(ds, sampler, spec, force=args.force, progress=_say, bars=not args.no_progress)
    epochs = []
    for e in range(args.start_epoch, args.start_epoch + args.epochs):
        stats = planner.plan_epoch(e)
        epochs.append({"epoch": e, "skipped": stats is None, **({} if stats is None else dataclasses.asdict(stats))})
        if args.keep_epochs is not None:
            planner.keep_latest(args.keep_epochs)
    summary = {"plan": str(planner.path), "batches_per_epoch": planner.num_batches,
               "on_disk": planner.plan.epochs(), "epochs": epochs}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        done = [x for x in epochs if not x["skipped"]]
        edges = sum(x["edges"] for x in done)
        secs = sum(x["seconds"] for x in done)
        print(f"{planner.path}: {len(done)} epochs planned ({len(epochs) - len(done)} already there), "
              f"{planner.num_batches} batches each, {edges:,} edges in {secs:.2f} s; on disk: {planner.plan.epochs()}")
    return 0


# --- pack ------------------------------------------------------------------------------------------
def _add_pack(sub: Any) -> None:
    p = sub.add_parser("pack", help="place caches by a plan's hotness and pack each planned epoch's misses (DiskGNN)",
                       description="Fill-by-hotness cache placement, then per segment of batches the rows that miss "
                                   "both caches, stored contiguously in the order the batches need them.")
    p.add_argument("dataset", type=Path)
    p.add_argument("--plan", default="default", help="the plan's name (gnn-ooc sample --name)")
    p.add_argument("--name", default="default", help="pack name (folder under PLAN/packs)")
    p.add_argument("--segment-batches", type=int, default=64,
                   help="batches per packed segment (0: as many as an eighth of --memory-budget holds)")
    p.add_argument("--gpu-cache", type=parse_size, help="device cache bytes (default: a quarter of free GPU memory, "
                                                        "or an eighth of --memory-budget without CUDA)")
    p.add_argument("--cpu-cache", type=parse_size, help="pinned host cache bytes (default: a quarter of --memory-budget)")
    p.add_argument("--memory-budget", type=parse_size, default=1 << 30)
    p.add_argument("--pack-budget", help="cap on packed bytes on disk: bytes (e.g. 20G) or a multiple of the "
                                         "feature file (e.g. 2x); default: no cap")
    p.add_argument("--replace-placement", action="store_true", help="recompute the cache placement (repacks)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_pack)


def _run_pack(args: argparse.Namespace) -> int:
    from gnn_ooc.capabilities import cuda_available
    from gnn_ooc.graphstore.features.tiering import CacheBudgets, Placement, place_from_counts
    from gnn_ooc.graphstore.format.dataset import Dataset
    from gnn_ooc.graphstore.io.owned import check_name
    from gnn_ooc.graphstore.pack.format import PackSpec, epoch_dir, packs_dir, read_meta
    from gnn_ooc.graphstore.pack.writer import fit_segment_batches, pack_epoch
    from gnn_ooc.sampler.plan import Plan

    check_name(args.name, "pack")  # before any path is built from it
    if args.segment_batches < 0:
        raise ValueError(f"--segment-batches {args.segment_batches}: expected >= 1, or 0 to fit segments to "
                         "an eighth of --memory-budget")
    ds = Dataset.open(args.dataset)
    if not ds.has("features"):
        raise ValueError(f"{ds.path}: the dataset has no features to pack")
    plan = Plan.open(ds, args.plan)
    entry = ds.manifest.files["features"]
    features = ds.path / entry.name
    root = packs_dir(plan.path, args.name)
    if (root / "placement" / "device.npy").is_file() and not args.replace_placement:
        placement = Placement.load(root / "placement")
        if args.gpu_cache is not None or args.cpu_cache is not None:
            _say(f"{root}: keeping the saved cache placement ({placement.device.size:,} + {placement.pinned.size:,} "
                 "rows); --replace-placement applies new cache sizes")
    else:
        budgets = CacheBudgets(args.gpu_cache, args.cpu_cache, args.memory_budget)
        placement = place_from_counts(plan.totals()[1], ds.feature_row_bytes, budgets, cuda_available())
        placement.save(root / "placement")
    budget = None if args.pack_budget is None else parse_size_or_multiple(args.pack_budget, features.stat().st_size)
    results = []
    for e in plan.epochs():
        epoch_plan = plan.epoch(e)
        epoch_plan.verify()  # never pack from a damaged plan
        segments = args.segment_batches or fit_segment_batches(epoch_plan, ds.feature_row_bytes,
                                                               args.memory_budget // 8)
        spec = PackSpec(name=args.name, segment_batches=segments, memory_budget=args.memory_budget,
                        pack_budget=budget)
        stats = pack_epoch(plan, e, placement.cached, features, spec, progress=_say,
                           features_checksum=entry.checksum, bars=not args.no_progress)
        results.append(dataclasses.asdict(stats))
        if budget is not None:  # what is on disk counts, packed now or kept from an earlier run
            meta = read_meta(epoch_dir(plan.path, args.name, e))
            budget = max(0, budget - sum(int(g.get("size", 0)) for g in meta["segments"]))
    summary = {"packs": str(root), "device_rows": int(placement.device.size), "pinned_rows": int(placement.pinned.size),
               "epochs": results}
    print(json.dumps(summary, indent=2) if args.json else
          f"{root}: {len(results)} epochs packed; caches hold {placement.device.size:,} + {placement.pinned.size:,} rows")
    return 0


# --- train -----------------------------------------------------------------------------------------
def _add_train(sub: Any) -> None:
    from gnn_ooc.trainer.config import cli_fields

    p = sub.add_parser("train", help="train a GNN out of core (offline plan + packs + caches by default)",
                       description="Flags override --config; the resolved config is saved in the run folder.")
    p.add_argument("dataset", nargs="?", help="the preprocessed dataset (or dataset: in --config)")
    p.add_argument("--config", type=Path, help="YAML or JSON file of settings (flags override it)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue RUN from its newest checkpoint (with DATASET "
                   "only when the run's dataset moved: it must be the same dataset)")
    for f in cli_fields():
        flag = "--" + f.name.replace("_", "-")
        # a None default is explained by the help text itself ("default: from the memory budget")
        help_text = f.help + ("" if f.default is None else f" (default: {_default_text(f.default)})")
        if f.is_flag:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=help_text, metavar=f.name.upper())
    p.set_defaults(handler=_run_train)


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 << 20:
        return format_size(value)
    return str(value)


def _run_train(args: argparse.Namespace) -> int:
    from gnn_ooc.trainer.config import TrainConfig, cli_fields, read_config_file
    from gnn_ooc.trainer.run import plan_defaults, resume, train

    flags = {f.name: getattr(args, f.name) for f in cli_fields()}
    if args.resume is not None:
        summary = resume(args.resume, flags, say=_say, dataset=args.dataset)
        run = args.resume
    else:
        file_values = read_config_file(args.config) if args.config else {}
        if args.dataset:
            flags["dataset"] = args.dataset
        plan = flags.get("plan") or file_values.get("plan")
        dataset = flags.get("dataset") or file_values.get("dataset")
        # a --plan fixes fan-outs, batch size and seed: they are the defaults, flags and the file above them
        base = plan_defaults(dataset, plan) if plan and dataset else {}
        cfg = TrainConfig.resolve({**base, **file_values}, flags, source=str(args.config or "config"))
        summary = train(cfg, say=_say)
        run = summary["run"]
    from gnn_ooc.trainer.distributed import detect_env

    env = detect_env()
    if env is not None and env.rank != 0:
        return 0  # rank 0 reports for the job
    best, test = summary["best_valid_acc"], summary["test_acc_at_best_valid"]
    print(f"run: {Path(run).resolve()}")
    done = f"epochs {summary['epochs_done']}, steps {summary['steps']}"
    if summary["best_epoch"] < 0:
        print(f"no evaluation yet; {done}")
    else:
        print(f"best valid accuracy {100 * best:.2f}% (epoch {summary['best_epoch']}), test accuracy there "
              f"{100 * test:.2f}%; {done}")
    return 0


# --- embed -----------------------------------------------------------------------------------------
def _add_embed(sub: Any) -> None:
    p = sub.add_parser("embed", help="layer-wise inference over every node: embeddings, logits, predictions",
                       description="Run a trained model layer by layer over all nodes, out of core; each "
                                   "layer's rows are streamed to disk in chunks. See docs/embed.md.")
    p.add_argument("run", type=Path, help="the run folder (gnn-ooc train --out)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write (replaced atomically)")
    p.add_argument("--chunk-nodes", type=int, help="destination nodes per chunk (default: from the memory budget)")
    p.add_argument("--memory-budget", type=parse_size, help="bytes for a chunk's block and buffers (default: the run's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--layer-outputs", action="store_true", help="keep every hidden layer as layers/layer-I.npy")
    p.add_argument("--checkpoint", default="best",
                   help="best (the best validation accuracy; the newest when the run never evaluated), last, "
                        "or a checkpoint file (default: best)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print embed.json")
    p.set_defaults(handler=_run_embed)


def _run_embed(args: argparse.Namespace) -> int:
    from gnn_ooc.trainer.inference import embed

    summary = embed(args.run, args.output, chunk_nodes=args.chunk_nodes, memory_budget=args.memory_budget,
                    device=args.device, layer_outputs=args.layer_outputs, checkpoint=args.checkpoint, say=_say,
                    bars=not args.no_progress)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.output}: {summary['nodes']:,} nodes, {', '.join(summary['outputs'])} in "
              f"{summary['seconds']:.2f} s ({summary['rows_per_s']:,.0f} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
