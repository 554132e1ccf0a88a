"""A training run from a ``TrainConfig``: the run folder, the mode's batch source, the model, the loop.

``train(cfg)`` is what ``gnn-ooc train`` calls. It resolves the mode (``auto`` is offline),
builds the training and evaluation sources, the model, optimizer and schedule, trains, and
writes ``summary.json``. ``resume(run)`` reloads the saved config and the newest checkpoint
and continues exactly where it stopped.

Memory: ``memory_budget`` is split once here. The caches take what ``CacheBudgets`` derives
(without CUDA an eighth as "device" cache and a quarter as pinned cache), planning and packing
in the background process a quarter, batches in flight in the queues an eighth (which caps the
pipeline depth), and the two segment buffers a quarter: ``segment_batches: 0`` (the default)
packs as many batches per segment as one buffer holds.

Example:
    >>> summary = train(TrainConfig.resolve({"dataset": "demo/dataset", "epochs": 2}))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from gnn_ooc.capabilities import cuda_available
from gnn_ooc.errors import DatasetError
from gnn_ooc.graphstore.features.base import FeatureStore
from gnn_ooc.graphstore.features.cache import RowCache
from gnn_ooc.graphstore.features.direct import DirectStore
from gnn_ooc.graphstore.features.policies.hosttable import SLOT_OVERHEAD
from gnn_ooc.graphstore.features.policies.sieve import SieveCache
from gnn_ooc.graphstore.features.policies.static import hottest_by_degree, rows_for_budget
from gnn_ooc.graphstore.features.stores import MemoryStore, MmapStore, torch_dtype
from gnn_ooc.graphstore.features.tiered import TieredStore
from gnn_ooc.graphstore.features.tiering import (
    CacheBudgets,
    Placement,
    build_tiered_store,
    place_for_future,
    place_from_counts,
)
from gnn_ooc.graphstore.format.dataset import Dataset
from gnn_ooc.graphstore.format.integrity import (
    CheckReport,
    check_dataset,
    check_labelled,
    verify_entry,
)
from gnn_ooc.graphstore.io.atomic import atomic_write_bytes
from gnn_ooc.graphstore.io.directio import process_read_bytes
from gnn_ooc.graphstore.pack.format import PackSpec, epoch_dir, packs_dir
from gnn_ooc.graphstore.pack.reader import PackedEpoch
from gnn_ooc.graphstore.pack.writer import fit_segment_batches, pack_epoch
from gnn_ooc.memory import MemoryMeter, release_free_memory
from gnn_ooc.sampler.background import BackgroundPlanner
from gnn_ooc.sampler.base import SampleKey, Sampler
from gnn_ooc.sampler.kernels import set_threads as set_numba_threads
from gnn_ooc.sampler.neighbor import NeighborSampler
from gnn_ooc.sampler.plan import Plan, Planner, PlanSpec
from gnn_ooc.trainer.budget import Shares, measure_step, probe_batch
from gnn_ooc.trainer.checkpoint import latest_checkpoint, load_checkpoint
from gnn_ooc.trainer.config import ConfigError, TrainConfig, resolve_device, saved_config_path
from gnn_ooc.trainer.distributed import detect_env, init, on_rank0, shutdown
from gnn_ooc.trainer.loop import LoopSettings, Trainer
from gnn_ooc.trainer.models import make_model
from gnn_ooc.trainer.parts import Parts, PartsError, check_model, check_same
from gnn_ooc.trainer.runfolder import RunFolder, mark_owner
from gnn_ooc.trainer.sources import BatchSource, OfflineSource, SampledSource
from gnn_ooc.units import format_size, parse_size_or_multiple

log = logging.getLogger(__name__)  # library messages: the CLI shows them, an application decides
Say = Callable[[str], None]
BACKGROUND_NICE = 10  # planning ahead gets the CPU training leaves idle, not the cores it is using
RESUMABLE = ("epochs", "progress", "max_steps", "threads", "patience", "checkpoint_every")


def run_folder(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return Path(cfg.dataset) / "runs" / time.strftime("%Y%m%d-%H%M%S")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the dataset and run folders absolute: the saved config works from any folder
    (``--resume`` and ``embed`` from elsewhere)."""
    return cfg.replace(dataset=str(Path(cfg.dataset).absolute()), out=str(run_folder(cfg).absolute()))


def train(cfg: TrainConfig, *, say: Say | None = None, rank: int | None = None,
          world: int | None = None, parts: Parts | None = None) -> dict[str, Any]:
    """Train from scratch into ``cfg.out`` (created; an existing run there must be resumed instead),
    with the user's own ``parts`` where given (``trainer.parts``; ``gnn_ooc.train`` is the way in).

    Without ``rank``/``world`` a torchrun or srun environment (``distributed.detect_env``) makes
    this one of several DDP processes: the process group lives for this call, and only rank 0
    creates the run folder (and holds its lock), logs and writes files.
    """
    parts = parts or Parts()
    say = say or log.info
    _check_parts(cfg, parts)
    with _processes(cfg, rank, world) as (rank, world):
        # rank 0's folder for everyone: each rank's own default (a timestamp) may differ by a second
        cfg = on_rank0(lambda: absolute_paths(cfg), rank, world)
        with _held(rank, world) as held:
            run = on_rank0(lambda: _create_run(cfg, held, parts), rank, world)
            return _fit(cfg, run, None, _rank_say(say, rank), rank, world, parts)


def _check_parts(cfg: TrainConfig, parts: Parts) -> None:
    """What can be checked of the user's parts before a run folder exists."""
    if _mode(cfg) == "offline":
        parts.check_picklable()
    if cfg.plan is not None and parts.sampler is not None:
        raise PartsError("plan: a --plan was made by a built-in sampler; with your own sampler leave plan out "
                         "(the run plans its own epochs with it)")


@contextlib.contextmanager
def _held(rank: int, world: int) -> Iterator[list[RunFolder]]:
    """The run folder locks this process takes (rank 0's), released when the call ends."""
    held: list[RunFolder] = []
    try:
        yield held
    finally:
        for folder in held:
            folder.release()


def _create_run(cfg: TrainConfig, held: list[RunFolder], parts: Parts) -> Path:
    run = Path(cfg.out)
    ds = Dataset.open(cfg.dataset)
    held.append(RunFolder.create(run, dataset_path=ds.path, identity=ds.identity(), parts=parts.record()))
    cfg.save(run / "config.yaml")
    return run


def resume(run: Path, overrides: dict[str, Any] | None = None, *, say: Say | None = None, rank: int | None = None,
           world: int | None = None, dataset: str | os.PathLike[str] | None = None,
           parts: Parts | None = None) -> dict[str, Any]:
    """Continue ``run`` from its newest checkpoint; only ``RESUMABLE`` settings may change, and
    ``dataset`` only to the same dataset moved elsewhere (its identity must be the run's). A run
    trained with its own ``parts`` resumes with the same ones (their classes and sampler settings
    are checked against the run's record).

    Every rank reads the config and the checkpoint (rank 0's, saved for all), so the run
    folder must be on a filesystem all of them see.
    """
    run = Path(run).absolute()
    cfg_path = saved_config_path(run)
    bad = sorted(k for k, v in (overrides or {}).items() if v is not None and k not in RESUMABLE)
    if bad:
        raise ConfigError(f"--resume keeps the run's settings; these cannot change: {', '.join(bad)}")
    saved = TrainConfig.load(cfg_path)
    if dataset is not None:
        saved = saved.replace(dataset=str(Path(dataset).absolute()))
    cfg = TrainConfig.resolve(saved.to_dict(), overrides, source=str(cfg_path))
    parts = parts or Parts()
    say = say or log.info
    check_same(RunFolder.recorded(run).get("parts"), parts, run)
    _check_parts(cfg, parts)
    with _processes(cfg, rank, world) as (rank, world), _held(rank, world) as held:
        on_rank0(lambda: _open_run(run, cfg, held), rank, world)
        state = load_checkpoint(latest_checkpoint(run))
        return _fit(cfg, run, state, _rank_say(say, rank), rank, world, parts)


def _open_run(run: Path, cfg: TrainConfig, held: list[RunFolder]) -> None:
    held.append(RunFolder.open(run))
    ds = Dataset.open(cfg.dataset)
    RunFolder.check_dataset(run, ds.path, ds.identity())


@contextlib.contextmanager
def _processes(cfg: TrainConfig, rank: int | None, world: int | None) -> Iterator[tuple[int, int]]:
    """(rank, world) of this call; joins (and finally leaves) a process group the launcher set up.

    An explicit ``rank``/``world`` means the caller owns the process group: nothing is joined.
    """
    if rank is not None or world is not None:
        yield rank or 0, world or 1
        return
    env = detect_env()
    if env is None:
        yield 0, 1
        return
    init(env, resolve_device(cfg.device))
    try:
        yield env.rank, env.world
    finally:  # also on errors: a rank that leaves makes its peers' collectives fail, not hang
        shutdown()


def _rank_say(say: Say, rank: int) -> Say:
    return say if rank == 0 else _quiet


def _quiet(_message: str) -> None:
    pass


def _fit(cfg: TrainConfig, run: Path, state: dict[str, Any] | None, say: Say, rank: int, world: int,
         parts: Parts) -> dict[str, Any]:
    t0 = time.perf_counter()
    _seed_everything(cfg.seed, cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU (distributed.init)
    ds = Dataset.open(cfg.dataset)
    mode = _mode(cfg)
    parts.check_store(ds.num_nodes, ds.feature_dim)
    # online and mmap read the feature file as they go: checked first (a user's store: never read)
    checked = _check_data(ds, mode in ("online", "mmap") and parts.store is None, say)
    sampler = train_sampler(cfg, ds, parts)  # made once: the meter, the budget and the sources share it
    meter = _start_meter(cfg, ds, sampler)
    try:
        trainer = _train(cfg, ds, mode, run, state, say, rank, world, device, t0, meter, parts, sampler)
    finally:
        memory = meter.stop()
    _say_memory(memory, say)
    summary = {"run": str(run), **_summary(cfg, mode, trainer, parts), "parts": parts.record(),
               "setup_seconds": trainer.setup_seconds,
               "kernel_read_bytes": process_read_bytes(), "integrity": checked.as_dict(), "memory": memory}
    if rank == 0:
        atomic_write_bytes(run / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _train(cfg: TrainConfig, ds: Dataset, mode: str, run: Path, state: dict[str, Any] | None, say: Say, rank: int,
           world: int, device: torch.device, t0: float, meter: MemoryMeter, parts: Parts,
           sampler: Sampler) -> Trainer:
    """Sources, model and loop of one run; trains, closes the sources, returns the trainer."""
    first_epoch = int(state["loop"]["epoch"]) if state else 0
    model, optimizer, scheduler = build_model(cfg, ds, device, parts.model)
    shares = budget_shares(cfg, ds, mode, model, device, sampler, check=parts.model is not None)
    say(f"memory budget {format_size(cfg.memory_budget)}: {shares.describe()}")
    train_src, evals = build_sources(cfg, ds, mode, run, first_epoch, say, rank, world, meter=meter, shares=shares,
                                     parts=parts, sampler=sampler)
    try:
        if world > 1:
            model = _ddp(model, device)
        depth = shares.depth
        settings = LoopSettings(epochs=cfg.epochs, device=str(device), precision=cfg.precision,
                                eval_every=cfg.eval_every, patience=cfg.patience,
                                checkpoint_every=cfg.checkpoint_every, depth=depth, progress=cfg.progress,
                                max_steps=cfg.max_steps, rank=rank, world=world)
        trainer = Trainer(model, optimizer, scheduler, train_src, evals, run, settings, say=say)
        if state is not None:
            trainer.load_state_dict(state)
            say(f"resuming {run} at epoch {trainer.state.epoch}, batch {trainer.state.position} "
                f"(step {trainer.state.step})")
        say(f"training {_model_name(cfg, parts)} on {ds.path} in {mode} mode on {device}: "
            f"{len(train_src.local_batches(first_epoch))} batches per epoch"
            f"{f' per rank ({world} ranks)' if world > 1 else ''}, pipeline depth {depth}; run {run}")
        # features loaded (memory) or the first epoch planned and packed (offline)
        trainer.setup_seconds = time.perf_counter() - t0
        release_free_memory()  # what setup freed (planning, packing epoch 0) goes back before training
        trainer.fit()
    finally:
        train_src.close()
        for src in evals.values():
            if src is not train_src:
                src.close()
    done = trainer.state.epoch >= cfg.epochs or trainer.state.stopped_early
    if done and isinstance(train_src, OfflineSource):  # each rank's plan is its own
        train_src.epochs.remove_own()  # nothing left to resume: the run's plan (or its packs) go
    return trainer


def _start_meter(cfg: TrainConfig, ds: Dataset, sampler: Sampler) -> MemoryMeter:
    """The run's memory meter, its baseline taken once the libraries and kernels are loaded (a
    one-seed sample, a tiny step) and before any data is: what the budget covers comes after."""
    seeds = np.asarray(ds.split("train")[:1], dtype=np.int64)
    if seeds.size:
        sampler.sample(seeds, SampleKey(cfg.seed, 0, 0))
        sampler.serial().sample(seeds, SampleKey(cfg.seed, 0, 0))
    x = torch.ones(4, 4, requires_grad=True)
    step = torch.optim.Adam([x])  # torch.optim's first use imports the compiler stack: ~70 MiB of code
    torch.zeros(4, 4).index_add_(0, torch.arange(4), x @ x).sum().backward()
    step.step()
    release_free_memory()
    return MemoryMeter(cfg.memory_budget).start()


def _say_memory(memory: dict[str, Any], say: Say) -> None:
    above, budget = memory["peak_above_baseline"], memory["budget"]
    line = (f"memory: peak {format_size(above)} above the baselines (trainer {format_size(memory['trainer_baseline'])}"
            + (f", planner {format_size(memory['planner_baseline'])}" if memory["planner_baseline"] else "")
            + f"), budget {format_size(budget)}")
    say(line if memory["within_budget"] else f"warning: {line}: OVER the budget; raise --memory-budget, or lower "
        "--batch-size, --fanouts or --prefetch")


def _check_data(ds: Dataset, features: bool, say: Say) -> CheckReport:
    """Check the bytes training reads before the first step (``graphstore.integrity``): the
    topology, labels and splits here, the features too when ``features`` (else they are checked
    while loaded in memory mode, during the first pack pass offline, or never read: a user's store)."""
    report = check_dataset(ds, features=features)
    for split in ("train", "valid", "test"):
        check_labelled(ds, split)
    say(f"checked {len(report.files)} dataset files ({format_size(report.bytes)}) in {report.seconds:.2f} s")
    return report


def _seed_everything(seed: int, threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
        set_numba_threads(threads)  # the layers' compressed-row kernels run in this thread, beside torch's
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _mode(cfg: TrainConfig) -> str:
    return "offline" if cfg.mode == "auto" else cfg.mode


def budget_shares(cfg: TrainConfig, ds: Dataset, mode: str, model: torch.nn.Module, device: torch.device,
                  sampler: Sampler | None = None, *, check: bool = False) -> Shares:
    """The budget's shares from the largest probed batch and one measured step on it (``trainer.budget``);
    ``check``: the model is the user's, checked on the probe batch first (``parts.check_model``)."""
    sampler = sampler or NeighborSampler(ds, list(cfg.fanouts))
    sub = probe_batch(sampler, ds.split("train"), cfg.batch_size, cfg.seed)
    rows = 0 if sub is None else sub.num_nodes
    dtype = torch_dtype(ds.feature_dtype or "float32")
    if check:
        check_model(model, sub, ds.feature_dim or 0, dtype, ds.num_classes or 1, device)
    step = measure_step(model, sub, ds.feature_dim or 0, dtype, device, ds.num_classes or 1)
    features = ds.manifest.files["features"].size if ds.has("features") else 0
    return Shares.split(cfg.memory_budget, mode, batch_bytes=rows * ds.feature_row_bytes, step_bytes=step,
                        prefetch=cfg.prefetch, feature_bytes=features, gpu_cache=cfg.gpu_cache, cpu_cache=cfg.cpu_cache,
                        device_elsewhere=device.type == "cuda" and cfg.gpu_cache is None)


# --- sources -----------------------------------------------------------------------------------------
def build_sources(cfg: TrainConfig, ds: Dataset, mode: str, run: Path, first_epoch: int, say: Say,
                  rank: int = 0, world: int = 1, *, meter: MemoryMeter | None = None,
                  shares: Shares | None = None, parts: Parts | None = None,
                  sampler: Sampler | None = None) -> tuple[BatchSource, dict[str, BatchSource]]:
    """The training source of ``mode`` and the evaluation sources (valid, test) over the same store,
    sized by ``shares`` (default: the budget split for a batch of unknown size), with the user's
    sampler and store where ``parts`` has them (``sampler``: the training sampler, when the caller made it)."""
    parts = parts or Parts()
    labels = ds.labels
    if labels is None:
        raise DatasetError(f"{ds.path}: the dataset has no labels; node classification needs them "
                           "(preprocess it with --labels)")
    shares = shares or Shares.split(cfg.memory_budget, mode, batch_bytes=0, step_bytes=0, prefetch=cfg.prefetch,
                                    gpu_cache=cfg.gpu_cache, cpu_cache=cfg.cpu_cache)
    sampler = sampler or train_sampler(cfg, ds, parts)
    eval_sampler = parts.evaluation_sampler() or NeighborSampler(ds, list(cfg.eval_fanouts or cfg.fanouts))
    device = resolve_device(cfg.device)
    # under CUDA: page-locked batches (asynchronous copies), and the device cache in GPU memory,
    # its rows gathered there after each copy
    pin = device.type == "cuda"
    splits = [s for s in ("valid", "test") if ds.has(f"split/{s}") and ds.split(s).size]
    if mode == "offline":
        train_src, evals = _offline(cfg, ds, sampler, eval_sampler, splits, run, first_epoch, labels, say, rank,
                                    world, device, shares, meter, parts.store)
    else:
        store = parts.store or _sampled_store(cfg, ds, mode, device, shares)
        train_src = SampledSource(ds.split("train"), labels, sampler, store, batch_size=cfg.batch_size,
                                  seed=cfg.seed, mode=mode, rank=rank, world=world, pin=pin, defer_device=pin)
        evals = {split: SampledSource(ds.split(split), labels, eval_sampler, store,
                                      batch_size=cfg.eval_batch_size or cfg.batch_size, seed=cfg.seed + 1,
                                      mode="eval", pin=pin, rank=rank, world=world, even=False, defer_device=pin)
                 for split in splits}
    for src in (train_src, *evals.values()):
        src.keep_buffers = shares.depth + 2  # as many as are in flight: more would sit idle in the budget
    return train_src, evals


def _sampled_store(cfg: TrainConfig, ds: Dataset, mode: str, device: torch.device, shares: Shares) -> FeatureStore:
    if mode == "memory":
        return MemoryStore.of(ds)
    if mode == "mmap":
        return MmapStore.of(ds)
    return _online_store(ds, device, shares)


def _online_store(ds: Dataset, device: torch.device, shares: Shares) -> TieredStore:
    """Online mode: a device cache of the highest in-degree rows (no plan to rank them by), then a
    SIEVE host cache in front of direct disk reads."""
    row_bytes = ds.feature_row_bytes
    dev_bytes, host_bytes = _cache_budgets(shares).resolve(cuda_available())
    hot = hottest_by_degree(ds.indptr, rows_for_budget(dev_bytes, row_bytes + RowCache.SLOT_OVERHEAD))
    direct = DirectStore.of(ds, max_buffer=max(1 << 20, shares.reads))
    device_cache = RowCache.filled("device", hot, direct, device=device)
    host = SieveCache(rows_for_budget(host_bytes, row_bytes + SLOT_OVERHEAD), ds.feature_dim or 0,
                      torch_dtype(ds.feature_dtype), direct)
    return TieredStore([device_cache], host)


def _cache_budgets(shares: Shares) -> CacheBudgets:
    # under CUDA without --gpu-cache the device cache takes a share of GPU memory instead
    return CacheBudgets(shares.device_cache if shares.device_cache or not cuda_available() else None,
                        shares.host_cache, shares.budget)


class OfflineEpochs:
    """Epochs of a run's plan: the first planned and packed here, the rest in a background process
    (planned and packed while the previous epoch trains), at most ``keep_epochs`` on disk."""

    def __init__(self, ds: Dataset, sampler: Sampler, plan_spec: PlanSpec, pack_spec: PackSpec,
                 placement: Callable[[Any], Placement] | None, epochs: range, keep_epochs: int, say: Say,
                 segment_limit: int = 0, *, bars: bool = False, shared: bool = False, auto_segments: bool = False,
                 on_ready: Callable[[int, int], None] | None = None) -> None:
        """``shared``: the plan is the user's (``--plan``): the epochs on it now are kept after use;
        ``auto_segments``: ``pack_spec.segment_batches`` is fitted to ``segment_limit``; no
        ``placement``: nothing is packed (the features come from a user's store)."""
        planner = Planner(ds, sampler, plan_spec, progress=say, bars=bars)
        self.kept = set(planner.plan.epochs()) if shared else set()  # never ours to delete
        self.first = epochs.start
        self.eval_prefix = planner.plan.path.name
        planner.plan_epoch(self.first)
        self.plan = planner.plan
        self.pack_spec = pack_spec
        self.background: BackgroundPlanner | None = None
        self.placement: Placement | None = None
        if placement is None:
            self._later: tuple[Any, ...] = (ds, sampler, plan_spec, list(epochs)[1:], max(2, keep_epochs), on_ready)
            return
        if auto_segments:
            self.pack_spec = dataclasses.replace(pack_spec, segment_batches=fit_segment_batches(
                self.plan.epoch(self.first), ds.feature_row_bytes, segment_limit))
            say(f"packing {self.pack_spec.segment_batches} batches per segment (two segment buffers of "
                f"{format_size(segment_limit)})")
        self.placement = placement(self.plan)
        entry = ds.manifest.files["features"]
        stats = pack_epoch(self.plan, self.first, self.placement.serving, ds.path / entry.name, self.pack_spec,
                           progress=say, features_checksum=entry.checksum, bars=bars)
        if stats.passes == 0:  # nothing to pack (all cached, or kept from before): check the rows now
            verify_entry(ds.path, entry, direct=True)
        self._later = (ds, sampler, plan_spec, list(epochs)[1:], max(2, keep_epochs), on_ready)

    def start_background(self) -> None:
        """Start planning the other epochs in the background process (once the setup here is done:
        both at once would hold two planning shares)."""
        ds, sampler, plan_spec, rest, keep, on_ready = self._later
        if rest and self.background is None:
            # the first epoch is one of the kept ones: while it trains the child packs the next, and
            # the one after as soon as it is released (the child once waited for the next's release)
            pack = None if self.placement is None else (self.pack_spec, self.placement.serving)
            self.background = BackgroundPlanner(ds, sampler, plan_spec, rest, keep_epochs=keep, pack=pack,
                                                nice=BACKGROUND_NICE, held=1, kept=self.kept,
                                                on_ready=on_ready).__enter__()

    def wait(self, epoch: int) -> Any:
        if epoch == self.first:
            plan = self.plan.epoch(epoch)
        else:
            assert self.background is not None
            plan = self.background.wait(epoch)
        plan.verify()  # the epoch's batches are read through memory maps: checked whole before use
        return plan

    def release(self, epoch: int) -> None:
        if epoch == self.first:
            from gnn_ooc.graphstore.io.atomic import remove_dir

            if epoch not in self.kept:
                self.plan.release(epoch)
            remove_dir(epoch_dir(self.plan.path, self.pack_spec.name, epoch), self.plan.path)
            if self.background is not None:
                self.background.release_held()
        elif self.background is not None:
            self.background.release(epoch)

    def packed(self, epoch: int) -> PackedEpoch | None:
        # every epoch is packed before it is handed out: a missing, foreign or damaged pack is an
        # error to report, not a reason to fall back to slow random reads unnoticed
        return None if self.placement is None else PackedEpoch(self.plan, epoch, self.pack_spec.name)

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
            self.background = None

    def remove_own(self) -> None:
        """Remove what the run wrote for itself once it is done: its own plan, or in a shared plan
        (``--plan``) its packs (the plan and the epochs it held before stay)."""
        from gnn_ooc.graphstore.io.atomic import remove_dir

        if self.kept or self.pack_spec.name != "default":
            remove_dir(packs_dir(self.plan.path, self.pack_spec.name), self.plan.path)
        else:
            remove_dir(self.plan.path, self.plan.path.parent)


def _offline(cfg: TrainConfig, ds: Dataset, sampler: Sampler, eval_sampler: Sampler,
             splits: list[str], run: Path, first_epoch: int, labels: np.ndarray, say: Say, rank: int, world: int,
             device: torch.device, shares: Shares, meter: MemoryMeter | None = None,
             user_store: FeatureStore | None = None) -> tuple[OfflineSource, dict[str, BatchSource]]:
    """Offline mode: epoch ``first_epoch`` planned and packed here, the evaluation batches too (before
    the caches fill, so setup peaks at one planning share), then the caches, then the background
    planner for the next epochs. With a ``user_store`` the epochs are planned ahead the same way,
    but nothing is packed or cached: every row is gathered from that store."""
    plan_name = cfg.plan or "run-" + hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:12]
    if cfg.cache == "future" and (world > 1 or user_store is not None):
        raise ConfigError("cache: future runs in one process over gnn-ooc's own tiers (not yet under DDP, nor "
                          "with a store of your own); use --cache static")
    if cfg.plan is not None and world > 1:
        raise ConfigError("plan: a shared plan under DDP is not supported yet (each rank plans its own); "
                          "leave --plan out")
    if world > 1:
        # a plan per rank: no rank reads files another is writing or releasing, and it works
        # when each node keeps the dataset on its own local disk
        plan_name += f"-rank{rank}"
    plan_spec = PlanSpec(name=plan_name, batch_size=cfg.batch_size, seed=cfg.seed,
                         threads=cfg.threads, memory_budget=shares.planning, topology=cfg.topology)
    # 0 (auto) is fitted to the first epoch below; a shared plan's packs are this run's own
    pack_spec = PackSpec(name="default" if cfg.plan is None else _run_pack_name(run),
                         segment_batches=cfg.segment_batches or 1, memory_budget=shares.planning,
                         pack_budget=_pack_budget(cfg, ds))
    row_bytes = ds.feature_row_bytes
    budgets = _cache_budgets(shares)

    def placement(plan: Any) -> Placement:
        counts = np.asarray(plan.epoch(first_epoch).access_counts())
        if cfg.cache == "future":
            return place_for_future(counts, row_bytes, budgets, cuda_available(), cfg.cache_window)
        return place_from_counts(counts, row_bytes, budgets, cuda_available())

    if cfg.plan is not None:
        check_plan_fits(ds, cfg.plan, sampler, plan_spec)
    epochs = OfflineEpochs(ds, sampler, plan_spec, pack_spec, placement if user_store is None else None,
                           range(first_epoch, cfg.epochs),
                           cfg.keep_epochs, say, segment_limit=_segment_limit(cfg, shares, row_bytes), bars=cfg.progress and rank == 0,
                           shared=cfg.plan is not None, auto_segments=cfg.segment_batches == 0,
                           on_ready=None if meter is None else meter.watch)
    epochs.eval_prefix = _run_pack_name(run) + (f"-rank{rank}" if world > 1 else "")
    # what gnn-ooc clean needs to know: this plan (or, in a shared one, these packs) serve this run
    mark_owner(epochs.plan.path if cfg.plan is None else packs_dir(epochs.plan.path, pack_spec.name), run)
    fixed = {split: _offline_eval_epoch(cfg, ds, eval_sampler, split, epochs, say, run, shares)
             for split in splits} if cfg.eval_every else {}
    store = user_store if epochs.placement is None else build_tiered_store(
        ds, epochs.placement, device=device, max_buffer=max(1 << 20, shares.reads))
    epochs.start_background()
    cuda = device.type == "cuda"
    future = getattr(store, "future", None)
    # the future cache's slots change at the next batch's step: its rows are gathered on the host,
    # not left to the copy stage (which runs after that step)
    train_src = OfflineSource(epochs, labels, store, rank=rank, world=world, sampler=sampler,
                              on_close=epochs.close, pin=cuda, defer_device=cuda and future is None, future=future)
    # the evaluation's segment buffers go back after each evaluation
    evals: dict[str, BatchSource] = {
        split: OfflineSource(f, labels, store, sampler=eval_sampler, on_close=f.remove, hold_buffers=False,
                             pin=cuda, rank=rank, world=world, even=False, defer_device=cuda)
        for split, f in fixed.items()}
    for split in splits:
        if split not in evals:  # never evaluated (--eval-every 0), or on demand: sampled online
            evals[split] = SampledSource(ds.split(split), labels, eval_sampler, store,
                                         batch_size=cfg.eval_batch_size or cfg.batch_size, seed=cfg.seed + 1,
                                         mode="eval", pin=cuda, rank=rank, world=world, even=False, defer_device=cuda)
    return train_src, evals


def _run_pack_name(run: Path) -> str:
    """A run's own packs inside a shared plan: removed after use, never another run's."""
    return "run-" + hashlib.sha256(str(run.resolve()).encode()).hexdigest()[:12]


def plan_defaults(dataset: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """The settings a ``--plan`` fixes (fan-outs, batch size, seed, split): the defaults of a run
    that trains on it, so that ``train --plan NAME`` needs no other flag."""
    plan = Plan.open(Dataset.open(dataset), name)
    sampler, batching = plan.meta.get("sampler", {}), plan.meta.get("batching", {})
    if not str(sampler.get("sampler", "")).endswith("NeighborSampler") or sampler.get("weighted"):
        raise ConfigError(f"plan {name!r} was made with {sampler.get('sampler')} (weighted: {sampler.get('weighted')}); "
                          "train --plan takes unweighted neighbour-sampler plans (gnn-ooc sample --sampler neighbor)")
    if batching.get("split", "train") != "train" or batching.get("drop_last"):
        raise ConfigError(f"plan {name!r} batches the {batching.get('split')} split (drop_last "
                          f"{batching.get('drop_last')}); train --plan needs a plan of the train split, every batch")
    return {"fanouts": list(sampler["fanouts"]), "batch_size": batching["batch_size"], "seed": batching["seed"]}


def check_plan_fits(ds: Dataset, name: str, sampler: Any, spec: PlanSpec) -> None:
    """Refuse a ``--plan`` whose batches are not the ones these settings would make."""
    plan = Plan.open(ds, name)
    have = (plan.meta.get("sampler", {}).get("fanouts"), plan.meta.get("batching", {}))
    want = (list(sampler.settings()["fanouts"]), spec.batching())
    if have != want or plan.meta.get("sampler") != json.loads(json.dumps(sampler.settings())):
        raise ConfigError(f"plan {name!r} was made with fan-outs {have[0]} and {have[1]}; this run asks for "
                          f"fan-outs {want[0]} and {want[1]}: leave --fanouts, --batch-size and --seed out to "
                          "train on the plan's, or plan again")


class FixedEpoch:
    """Epoch 0 of a plan for every evaluation: the evaluation batches never change (epoch 0's order,
    a fixed sampling key), so they are planned and packed once and read sequentially each time
    (not packed: ``pack_name`` None, the rows come from the store)."""

    def __init__(self, plan: Any, pack_name: str | None) -> None:
        self.plan, self.pack_name = plan, pack_name

    def wait(self, epoch: int) -> Any:
        return self.plan.epoch(0)

    def release(self, epoch: int) -> None:
        pass  # kept for the next evaluation

    def packed(self, epoch: int) -> PackedEpoch | None:
        return None if self.pack_name is None else PackedEpoch(self.plan, 0, self.pack_name)

    def remove(self) -> None:
        from gnn_ooc.graphstore.io.atomic import remove_dir

        remove_dir(self.plan.path, self.plan.path.parent)


def _offline_eval_epoch(cfg: TrainConfig, ds: Dataset, sampler: Sampler, split: str, epochs: OfflineEpochs,
                        say: Say, run: Path, shares: Shares) -> FixedEpoch:
    """``split``'s evaluation batches (the ones ``SampledSource`` would sample: seed + 1, epoch 0),
    planned and packed once beside the training plan against the training caches' placement."""
    spec = PlanSpec(name=f"{epochs.eval_prefix}-{split}", split=split, batch_size=cfg.eval_batch_size or cfg.batch_size,
                    seed=cfg.seed + 1, threads=cfg.threads, memory_budget=shares.planning, topology=cfg.topology)
    planner = Planner(ds, sampler, spec, progress=say)
    mark_owner(planner.plan.path, run)
    planner.plan_epoch(0)
    if epochs.placement is None:  # the rows come from a user's store: nothing to pack
        return FixedEpoch(planner.plan, None)
    features = ds.path / ds.manifest.files["features"].name
    # fitted to the evaluation batches (their size may differ from training's)
    segments = cfg.segment_batches or fit_segment_batches(planner.plan.epoch(0), ds.feature_row_bytes,
                                                          _segment_limit(cfg, shares, ds.feature_row_bytes))
    pack_spec = dataclasses.replace(epochs.pack_spec, segment_batches=segments)
    pack_epoch(planner.plan, 0, epochs.placement.cached, features, pack_spec, progress=say,
               features_checksum=ds.manifest.files["features"].checksum)
    return FixedEpoch(planner.plan, pack_spec.name)


def _segment_limit(cfg: TrainConfig, shares: Shares, row_bytes: int) -> int:
    """One of the two segment buffers: an eighth of the budget, and no more rows than packing can
    plan in its share (about 48 bytes per batch node: half the planning share)."""
    return min(cfg.memory_budget // 8, shares.planning // 2 // 48 * max(1, row_bytes))


def _pack_budget(cfg: TrainConfig, ds: Dataset) -> int | None:
    if cfg.pack_budget is None:
        return None
    return parse_size_or_multiple(cfg.pack_budget, ds.manifest.files["features"].size)


# --- model -------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, ds: Dataset, device: torch.device,
                model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, Any, Any]:
    """The run's model (``model``, the user's, else ``make_model(cfg.model)``) on ``device``, its
    Adam optimizer (``cfg.lr``, ``cfg.weight_decay``) and learning-rate schedule."""
    if ds.num_classes is None or (ds.feature_dim is None and model is None):
        raise DatasetError(f"{ds.path}: training needs node features and labels (preprocess it with "
                           "--features and --labels)")
    if model is None:
        kwargs: dict[str, Any] = {"in_dim": ds.feature_dim, "hidden": cfg.hidden, "out_dim": ds.num_classes,
                                  "num_layers": cfg.num_layers, "dropout": cfg.dropout, "norm": cfg.norm}
        if cfg.model == "gat":
            kwargs["heads"] = cfg.heads
        model = make_model(cfg.model, **kwargs)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler: Any = None
    if cfg.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    elif cfg.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, cfg.epochs // 4), gamma=0.5)
    return model, optimizer, scheduler


def _ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def train_sampler(cfg: TrainConfig, ds: Dataset, parts: Parts) -> Sampler:
    """The run's training sampler: the user's, else ``NeighborSampler`` with the config's fan-outs."""
    return parts.sampler if parts.sampler is not None else NeighborSampler(ds, list(cfg.fanouts))


def _model_name(cfg: TrainConfig, parts: Parts) -> str:
    return cfg.model if parts.model is None else type(parts.model).__name__


def _summary(cfg: TrainConfig, mode: str, trainer: Trainer, parts: Parts) -> dict[str, Any]:
    st = trainer.state
    stats = trainer.train.stats()
    return {
        "mode": mode, "model": _model_name(cfg, parts), "epochs_done": st.epoch, "steps": st.step,
        "best_valid_acc": st.best_valid, "best_epoch": st.best_epoch, "test_acc_at_best_valid": st.test_at_best,
        "stopped_early": st.stopped_early,
        "epoch_seconds": [r["seconds"] for r in st.epochs],
        "overlap": [r["overlap"] for r in st.epochs],
        "bound": [r.get("bound", 1.0) for r in st.epochs],  # epoch / its busiest stage's busy time
        "busiest_stage": [r.get("busiest", "") for r in st.epochs],
        "stage_seconds": trainer.total_seconds,
        "disk_bytes_read": stats.get("disk_bytes_read", 0),
        "read_amplification": stats.get("read_amplification", 0.0),
        "hit_rates": stats.get("hit_rates", {}),
        "store": stats,
        "eval_store": trainer.eval_stats.as_dict(),
        "epochs": st.epochs,
    }
