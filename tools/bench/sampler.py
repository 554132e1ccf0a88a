"""Benchmark the built-in ``NeighborSampler`` and offline plan writing on a >= 20 M-edge graph.

Generates (or reuses, from ``--work``) a graph with ``gnn-ooc synth`` + ``gnn-ooc preprocess
--undirected --dedup`` (default 1 M nodes, average degree 12: about 23 M CSC edges, 8 features),
opens it memory-mapped (``Dataset.open``), reads the topology once into the page cache, and
samples batches of the shuffled train split (fan-outs 15,10,5, batch 1024). Every configuration
gets a warm-up batch (numba compile or cache load), then a.-c. take turns over the timed batches
in ``--rounds`` slices, so a change in the machine's load hits all of them:

a. one batch at a time on one thread (``threads=1``; a'. the ``.serial()`` kernel): per core;
b. intra-batch parallel: ``NeighborSampler(threads=T)``, one batch at a time, T = all cores;
c. batch-parallel: T Python threads each sampling other batches with ``.serial()`` (what the
   planner does), in total and per core;
d. plan writing: ``Planner.plan_epoch`` over the train split cut to ``--plan-batches`` batches
   (a ``Dataset`` view; same files, same dataset identity) against the planner's own sampling
   loop over the same batches, keys and threads without the writer, ``--repeats`` times each,
   alternating which goes first; ``ratio = plan time / sampling-only time`` (goal <= 2.0).

``--cold`` first plans ``--cold-batches`` batches in a child process under
``../shared/tools/memcap.sh`` (page cache dropped; cache + process memory capped, by default to
the process's own ~175 MB plus half the topology) and reports the cgroup's peak and how much
of the topology was cached. The verdict checks >= 16 M sampled edges/s per core. Plans written
here are deleted; the dataset stays in ``--work``.

Example:
    $ python -m gnn_ooc.tools.bench.sampler
    $ python -m gnn_ooc.tools.bench.sampler --batches 200 --cold --json > sampler.json
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.sampler.base import SampledSubgraph, SampleKey
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import EpochStats, Planner, PlanSpec, epoch_order

GOAL_EDGES_PER_CORE = 16e6
GOAL_PLAN_RATIO = 2.0
PREPROCESS_FLAGS = ["--undirected", "--dedup"]
DEFAULT_WORK = Path(tempfile.gettempdir()) / "gnn-ooc-bench-sampler"
MEMCAP = Path(__file__).resolve().parents[3] / "shared" / "tools" / "memcap.sh"
PLAN_PREFIX = "bench-sampler-"
COLD_OVERHEAD = 176 << 20


# --- the dataset -----------------------------------------------------------------------------------
def ensure_dataset(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from gnn_ooc.tools.bench.preprocess import ensure_dataset as build

    return build(work, args, marker="bench-sampler.json", flags=PREPROCESS_FLAGS, say=say)


def topology_files(ds: Dataset) -> list[Path]:
    return [ds.path / ds.manifest.files[k].name for k in ("indptr", "indices")]


def resident_fraction(paths: Sequence[Path]) -> float | None:
    """Share of the files' pages in the page cache (``mincore``); None where it cannot be asked."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    resident = total = 0
    for p in paths:
        m = np.memmap(p, dtype=np.uint8, mode="r")
        pages = (m.size + page - 1) // page
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(m.ctypes.data), ctypes.c_size_t(m.size), vec) != 0:
            return None
        resident += int(np.count_nonzero(np.ctypeslib.as_array(vec) & 1))
        total += pages
        del m
    return resident / total if total else None


# --- sampling measurements -------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One measurement over a list of batches: wall and process CPU seconds."""

    name: str
    threads: int
    batches: int = 0
    nodes: int = 0
    edges: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def edges_per_s(self) -> float:
        return self.edges / self.seconds

    @property
    def edges_per_s_per_core(self) -> float:
        return self.edges_per_s / self.threads

    @property
    def edges_per_cpu_s(self) -> float:
        return self.edges / self.cpu_seconds

    def plus(self, other: Run) -> Run:
        return replace(self, batches=self.batches + other.batches, nodes=self.nodes + other.nodes,
                       edges=self.edges + other.edges, seconds=self.seconds + other.seconds,
                       cpu_seconds=self.cpu_seconds + other.cpu_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "edges_per_s": self.edges_per_s, "edges_per_s_per_core": self.edges_per_s_per_core,
                "edges_per_cpu_s": self.edges_per_cpu_s}


Job = tuple[np.ndarray, SampleKey]


@dataclass(frozen=True)
class Config:
    """A way to sample a list of batches: one call per batch, in turn or in a thread pool."""

    name: str
    threads: int
    sample: Callable[[Job], SampledSubgraph]
    pool: ThreadPoolExecutor | None = None

    def run(self, jobs: Sequence[Job]) -> Run:
        nodes = edges = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for sub in self.pool.map(self.sample, jobs) if self.pool is not None else map(self.sample, jobs):
            nodes, edges = nodes + sub.num_nodes, edges + sub.num_edges  # drop each batch as it comes
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        return Run(self.name, self.threads, len(jobs), nodes, edges, seconds, cpu)


def make_jobs(train: np.ndarray, batch_size: int, count: int, seed: int) -> list[Job]:
    """The first ``count`` batches of epoch 0's shuffled train order, with their keys."""
    order = epoch_order(train, seed, 0)
    return [(order[b * batch_size : (b + 1) * batch_size], SampleKey(seed, 0, b)) for b in range(count)]


def interleaved(configs: list[Config], jobs: list[Job], rounds: int) -> list[Run]:
    """Warm each config up on the last job, then time the others in ``rounds`` slices, configs rotating.

    Interleaving spreads a change in the machine's load over every config instead of one.
    """
    for c in configs:
        c.sample(jobs[-1])
    totals = [Run(c.name, c.threads) for c in configs]
    for r, part in enumerate(np.array_split(np.arange(len(jobs) - 1), rounds)):
        for i in [(r + k) % len(configs) for k in range(len(configs))]:
            totals[i] = totals[i].plus(configs[i].run([jobs[j] for j in part]))
    return totals


def sampling_runs(ds: Dataset, fanouts: str, jobs: list[Job], threads: int, rounds: int) -> list[Run]:
    one = NeighborSampler(ds, fanouts, threads=1)
    serial = one.serial()
    wide = NeighborSampler(ds, fanouts, threads=threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-sample") as pool:
        configs = [Config("a. one batch at a time, threads=1", 1, lambda j: one.sample(*j)),
                   Config("a'. one batch at a time, .serial()", 1, lambda j: serial.sample(*j)),
                   Config(f"b. intra-batch parallel, threads={threads}", threads, lambda j: wide.sample(*j)),
                   Config(f"c. batch-parallel, {threads} x .serial()", threads, lambda j: serial.sample(*j), pool)]
        return interleaved(configs, jobs, rounds)


def page_in(paths: Sequence[Path]) -> None:
    """Read the files once so the warm measurements find them in the page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


# --- plan writing ----------------------------------------------------------------------------------
class SplitView(Dataset):
    """The dataset with one split replaced by ``seeds`` (same files, manifest and identity)."""

    def __init__(self, ds: Dataset, name: str, seeds: np.ndarray) -> None:
        super().__init__(ds.path, ds.manifest)
        self._name, self._seeds = name, seeds

    def split(self, name: str) -> np.ndarray:
        return self._seeds if name == self._name else super().split(name)


def plan_view(ds: Dataset, args: argparse.Namespace) -> SplitView:
    """Train cut to the first ``--plan-batches`` batches of its shuffled order (0 = the whole split)."""
    train = np.asarray(ds.split("train"), dtype=np.int64)
    if args.plan_batches <= 0:
        return SplitView(ds, "train", train)
    return SplitView(ds, "train", epoch_order(train, args.seed, 0)[: args.plan_batches * args.batch_size])


def make_planner(ds: Dataset, args: argparse.Namespace, name: str, threads: int) -> Planner:
    view = plan_view(ds, args)
    spec = PlanSpec(name=name, batch_size=args.batch_size, seed=args.seed, threads=threads)
    return Planner(view, NeighborSampler(view, args.fanouts), spec, force=True)


T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any) -> tuple[T, float, float]:
    """``fn(*args)`` with its wall and process-CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t0, time.process_time() - c0


def sample_only(planner: Planner, epoch: int) -> None:
    """The planner's own sampling loop (same batches, keys, threads, window) without the writer."""
    with tempfile.TemporaryDirectory(dir=planner.path) as scratch:  # spills of external planning, if any
        for _ in planner._batches(epoch, Path(scratch)):
            pass


def plan_epoch(planner: Planner, epoch: int) -> EpochStats:
    stats = planner.plan_epoch(epoch)
    if stats is None:
        raise RuntimeError(f"{planner.path}: epoch {epoch} was already planned")
    return stats


def plan_repeat(planner: Planner, epoch: int) -> tuple[EpochStats, dict[str, float]]:
    """Epoch ``epoch`` sampled only and planned (which goes first alternates); the epoch is then deleted."""
    if epoch % 2:
        stats, p_wall, p_cpu = timed(plan_epoch, planner, epoch)
        _, s_wall, s_cpu = timed(sample_only, planner, epoch)
    else:
        _, s_wall, s_cpu = timed(sample_only, planner, epoch)
        stats, p_wall, p_cpu = timed(plan_epoch, planner, epoch)
    planner.plan.release(epoch)
    return stats, {"sample_only_s": s_wall, "sample_only_cpu_s": s_cpu, "plan_s": p_wall, "plan_cpu_s": p_cpu}


def plan_runs(ds: Dataset, args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """``--repeats`` x (sampling only, plan_epoch) on the same batches; the best time of each."""
    planner = make_planner(ds, args, f"{PLAN_PREFIX}{os.getpid()}", threads)
    try:
        sample_only(planner, args.repeats)  # warm-up epoch, not timed
        results = [plan_repeat(planner, e) for e in range(args.repeats)]
    finally:
        remove_plan(planner.path)
    stats, reps = results[0][0], [r for _, r in results]
    best = {k: min(r[k] for r in reps) for k in reps[0]}
    return {"batches": stats.batches, "threads": threads, "nodes": stats.nodes, "edges": stats.edges,
            "bytes_written": stats.bytes_written, **best,
            "edges_per_s": stats.edges / best["plan_s"], "MBps_written": stats.bytes_written / best["plan_s"] / 1e6,
            "ratio": best["plan_s"] / best["sample_only_s"],
            "cpu_ratio": best["plan_cpu_s"] / best["sample_only_cpu_s"], "repeats": reps}


def remove_plan(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


# --- cold cache, capped memory ---------------------------------------------------------------------
def default_cap(topology_bytes: int) -> int:
    """The process's own share (measured on this graph: interpreter, numpy, numba, libraries and the
    planner's buffers, about 175 MB) plus room for half the topology in the page cache."""
    return COLD_OVERHEAD + topology_bytes // 2


def warm_kernels(ds: Dataset, fanouts: str) -> None:
    """Compile (or load from numba's cache) both kernels on a 2-node graph of the dataset's dtypes."""
    dtypes = [np.dtype(ds.manifest.files[k].dtype or "int64") for k in ("indptr", "indices")]
    toy = (np.array([0, 1, 2], dtypes[0]), np.array([1, 0], dtypes[1]))  # maps nothing of the dataset
    sampler = NeighborSampler(toy, fanouts)
    sampler.sample([0], 0)
    sampler.serial().sample([0], 0)


def child_plan(args: argparse.Namespace) -> int:
    """Run inside memcap: plan the batches once from a dropped cache; print JSON."""
    ds = Dataset.open(args.work / "dataset")
    warm_kernels(ds, args.fanouts)
    before = resident_fraction(topology_files(ds))
    planner = make_planner(ds, args, args.child_plan, args.threads or cpu_count())
    try:
        stats, seconds, cpu = timed(plan_epoch, planner, 0)
    finally:
        remove_plan(planner.path)
    print(json.dumps({"resident_before": before, "resident_after": resident_fraction(topology_files(ds)),
                      "batches": stats.batches, "edges": stats.edges, "bytes_written": stats.bytes_written,
                      "plan_s": seconds, "plan_cpu_s": cpu, "edges_per_s": stats.edges / seconds,
                      "MBps_written": stats.bytes_written / seconds / 1e6,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
    return 0


def child_command(args: argparse.Namespace, cap: int, name: str) -> list[str]:
    cmd = [str(args.memcap), str(cap), sys.executable, "-m", "gnn_ooc.tools.bench.sampler", "--work", str(args.work),
           "--fanouts", args.fanouts, "--batch-size", str(args.batch_size), "--seed", str(args.seed),
           "--plan-batches", str(args.cold_batches), "--child-plan", name]
    return cmd + (["--threads", str(args.threads)] if args.threads else [])


def run_group(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    """Run ``cmd`` in its own process group; on timeout kill that group (memcap's child too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\ntimed out after {timeout:.0f} s (--cold-timeout); killed"
    return proc.returncode, out, err


def cold_run(args: argparse.Namespace, cap: int) -> dict[str, Any]:
    name = f"{PLAN_PREFIX}cold-{os.getpid()}"
    say(f"cold run: {args.cold_batches or 'all'} batches under {args.memcap} with a {mb(cap)} MB cap")
    try:
        rc, out, err = run_group(child_command(args, cap, name), args.cold_timeout)
    finally:
        remove_plan(args.work / "dataset" / "plans" / name)
    peak = re.search(r"peak_bytes=(\d+)", err)
    result: dict[str, Any] = {"cap_bytes": cap, "exit": rc, "peak_bytes": int(peak.group(1)) if peak else None}
    if rc:
        return {**result, "error": err.strip()[-2000:]}
    return {**result, **json.loads(out.strip().splitlines()[-1])}


# --- report ----------------------------------------------------------------------------------------
def say(msg: str) -> None:
    print(f"[bench-sampler {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def verdict(runs: list[Run], plan: dict[str, Any]) -> str:
    one, batch_par = runs[0].edges_per_s_per_core, runs[3].edges_per_s_per_core
    ok, ok_plan = one >= GOAL_EDGES_PER_CORE, plan["ratio"] <= GOAL_PLAN_RATIO
    return (f"VERDICT: {'MET' if ok else 'NOT MET'}: {mb(one)} M sampled edges/s per core with threads=1 "
            f"({mb(batch_par)} M per core batch-parallel) vs goal >= {mb(GOAL_EDGES_PER_CORE)} M; "
            f"plan/sampling-only {plan['ratio']:.2f} vs goal <= {GOAL_PLAN_RATIO}: {'met' if ok_plan else 'NOT met'}")


def plan_rows(p: dict[str, Any]) -> list[Run]:
    batches, edges, nodes, t = p["batches"], p["edges"], p["nodes"], p["threads"]
    return [Run(f"d. planner sampling only ({batches} batches)", t, batches, nodes, edges,
                p["sample_only_s"], p["sample_only_cpu_s"]),
            Run("d. Planner.plan_epoch (sample + write)", t, batches, nodes, edges, p["plan_s"], p["plan_cpu_s"])]


def run_lines(runs: list[Run], base: Run) -> list[str]:
    head = (f"{'measurement':<44}{'threads':>8}{'wall s':>8}{'M edges/s':>11}{'/core':>7}{'CPU/wall':>9}"
            f"{'/CPU-s':>8}{'x a':>6}")
    return [head] + [f"{r.name:<44}{r.threads:>8}{r.seconds:>8.2f}{mb(r.edges_per_s):>11}"
                     f"{mb(r.edges_per_s_per_core):>7}{r.cpu_seconds / r.seconds:>9.2f}{mb(r.edges_per_cpu_s):>8}"
                     f"{r.edges_per_s / base.edges_per_s:>6.2f}" for r in runs]


def oversubscribed(runs: list[Run]) -> list[str]:
    """Warnings for configs that kept more cores busy than the threads they were given."""
    return [f"WARNING: {r.name!r} kept {r.cpu_seconds / r.seconds:.2f} cores busy with {r.threads} thread(s): "
            "its kernels run in more threads than asked (for .serial(), numba's cache may have served the "
            "parallel build of the same function: numba issue #6845), so its /core figure is not per core"
            for r in runs if r.cpu_seconds > 1.2 * r.threads * r.seconds]


def table(report: dict[str, Any], runs: list[Run]) -> str:
    g, p, env = report["graph"], report["plan"], report["environment"]
    a = runs[0]
    lines = [
        f"graph: {g['path']}: {g['nodes']:,} nodes, {g['edges']:,} CSC edges ({g['source']})",
        f"topology: {mb(g['topology_bytes'])} MB, memory-mapped; in page cache {pct(g['resident_start'])} at start, "
        f"{pct(g['resident_measured'])} when measuring ({g['page_in']}), {pct(g['resident_end'])} at end",
        f"batches: {a.batches} timed x {report['batch_size']} seeds of the shuffled train split (+1 warm-up batch "
        f"per config, {report['rounds']} interleaved rounds), fan-outs {report['fanouts']}: "
        f"{a.nodes / a.batches:,.0f} nodes/batch, {a.edges / a.batches:,.0f} edges/batch",
        f"machine: {env['cores']} cores, load average {env['load_start']:.2f} at start, {env['load_end']:.2f} at end "
        "(shared: other processes may be running; every ratio below comes from this run)",
        "",
        *run_lines([*runs, *plan_rows(p)], a),
        "  (/core = edges/s / threads; CPU/wall = cores this process kept busy; /CPU-s = edges per second of "
        "its CPU time, less sensitive to other load; x a = edges/s relative to a.; d. rows: best of the repeats)",
        *oversubscribed(runs),
        "",
        f"plan writing: {mb(p['bytes_written'])} MB written at {p['MBps_written']:,.1f} MB/s, "
        f"{mb(p['edges_per_s'])} M edges/s while writing",
        f"plan / sampling-only: {p['ratio']:.2f} wall, {p['cpu_ratio']:.2f} CPU (goal <= {GOAL_PLAN_RATIO}; "
        f"best of {len(p['repeats'])} each; per repeat "
        + ", ".join(f"{r['plan_s'] / r['sample_only_s']:.2f}" for r in p["repeats"]) + ")",
        f"  how: {report['plan_method']}",
    ]
    if "cold" in report:
        lines.append(cold_line(report["cold"], g["topology_bytes"]))
    lines += ["", report["verdict"]]
    return "\n".join(lines)


def cold_line(c: dict[str, Any], topo: int) -> str:
    head = f"cold (--cold): memcap.sh cap {mb(c['cap_bytes'])} MB for cache + process (topology {mb(topo)} MB)"
    if c["exit"]:
        return f"{head}: FAILED (exit {c['exit']}, cgroup peak {mb(c['peak_bytes'] or 0)} MB): {c['error'][-400:]}"
    fit = "all of it stayed cached" if c["resident_after"] == 1.0 else "it did not all fit under the cap"
    return (f"{head}: planned {c['batches']} batches from a dropped cache in {c['plan_s']:.2f} s, "
            f"{mb(c['edges_per_s'])} M edges/s, {c['MBps_written']:,.1f} MB/s written; cgroup peak "
            f"{mb(c['peak_bytes'])} MB; topology in page cache {pct(c['resident_before'])} before, "
            f"{pct(c['resident_after'])} after ({fit})")


def pct(x: float | None) -> str:
    return "unknown" if x is None else f"{100 * x:.0f}%"


# --- main ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"graph folder, reused (default {DEFAULT_WORK})")
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--avg-degree", type=float, default=12.0)
    p.add_argument("--feature-dim", type=int, default=8)
    p.add_argument("--fanouts", default="15,10,5")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=100, help="timed batches per measurement")
    p.add_argument("--plan-batches", type=int, help="batches planned in d. (default --batches; 0 = the whole train split)")
    p.add_argument("--repeats", type=int, default=3, help="d. runs sampling-only and plan_epoch this many times")
    p.add_argument("--threads", type=int, help="T for b., c., d. (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5, help="a.-c. alternate in this many slices of the batches")
    p.add_argument("--no-page-in", action="store_true", help="do not read the topology once before measuring")
    p.add_argument("--cold", action="store_true", help="also plan from a dropped cache under memcap.sh")
    p.add_argument("--cold-cap", type=int, help="memcap bytes (default: ~175 MB for the process + half the topology)")
    p.add_argument("--cold-batches", type=int, default=20, help="batches planned in the cold run (0 = all)")
    p.add_argument("--cold-timeout", type=float, default=600.0, help="seconds before the cold run is killed")
    p.add_argument("--memcap", type=Path, default=MEMCAP)
    p.add_argument("--json", action="store_true", help="JSON on stdout (the table goes to stderr)")
    p.add_argument("--child-plan", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plan_batches is None:
        args.plan_batches = args.batches
    if args.batches < 1 or args.repeats < 1 or args.plan_batches < 0:
        p.error("--batches and --repeats must be >= 1, --plan-batches >= 0")
    return args


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], list[Run]]:
    built = ensure_dataset(args.work, args)
    ds = Dataset.open(args.work / "dataset")
    topo = topology_files(ds)
    threads = args.threads or cpu_count()
    resident_start, load_start = resident_fraction(topo), os.getloadavg()[0]
    warm_kernels(ds, args.fanouts)  # fills numba's cache for the child
    # before this process maps the topology: drop_caches keeps pages that a live mapping holds
    cold = cold_run(args, args.cold_cap or default_cap(sum(p.stat().st_size for p in topo))) if args.cold else None
    if not args.no_page_in:
        page_in(topo)
    resident_measured = resident_fraction(topo)
    train = np.asarray(ds.split("train"), dtype=np.int64)
    count = min(args.batches + 1, train.size // args.batch_size)
    say(f"sampling {count - 1} batches x 4 configurations on {threads} threads")
    jobs = make_jobs(train, args.batch_size, count, args.seed)
    runs = sampling_runs(ds, args.fanouts, jobs, threads, min(args.rounds, count - 1))
    say(f"planning {args.plan_batches or 'all'} batches x {args.repeats} (+ sampling-only baselines)")
    plan = plan_runs(ds, args, threads)
    report: dict[str, Any] = {
        "graph": {"nodes": ds.num_nodes, "edges": ds.num_edges, "path": str(ds.path.resolve()),
                  "source": "reused" if built["reused"] else f"generated now in {built['build_s']:.0f} s",
                  "topology_bytes": sum(p.stat().st_size for p in topo), "resident_start": resident_start,
                  "page_in": "not read ahead" if args.no_page_in else "read once before measuring",
                  "resident_measured": resident_measured, "resident_end": resident_fraction(topo)},
        "fanouts": args.fanouts, "batch_size": args.batch_size, "rounds": min(args.rounds, count - 1),
        "environment": {"cores": cpu_count(), "load_start": load_start, "load_end": os.getloadavg()[0]},
        "runs": [r.as_dict() for r in runs], "plan": plan,
        "plan_method": (f"Planner.plan_epoch over the train split cut to the first {plan['batches']} x "
                        f"{args.batch_size} seeds of its shuffled order (a Dataset view: same files and "
                        "identity); baseline = the planner's own sampling loop (Planner._batches: same "
                        "batches, keys, threads) without the writer; plan time includes fsync and totals"),
    }
    if cold is not None:
        report["cold"] = cold
    report["verdict"] = verdict(runs, plan)
    return report, runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_plan:
        return child_plan(args)
    report, runs = measure(args)
    text = table(report, runs)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
