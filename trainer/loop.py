"""The training loop: pipelined epochs, evaluation, early stopping, checkpoints, exact resume.

``Trainer.fit`` trains epoch after epoch. Each epoch's batches come through a ``Pipeline``
built from the training source's stages; the caller's thread runs forward, backward and the
optimizer step (the ``compute`` stage). Every ``checkpoint_every`` steps and at every epoch end
the whole state is saved (model, optimizer, scheduler, position in the epoch, random states,
best accuracies, early-stopping counter), so ``load_state_dict`` + ``fit`` continue exactly
where the checkpoint stands: the batches are a function of (seed, epoch, batch index), and the
random states restore dropout.

Example:
    >>> trainer = Trainer(model, opt, None, train_src, {"valid": v, "test": t}, Path("run"))  # doctest: +SKIP
    >>> summary = trainer.fit(epochs=10)                                                      # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gnn_ooc.graphstore.base import StoreStats
from gnn_ooc.trainer.checkpoint import random_states, save_checkpoint, set_random_states
from gnn_ooc.trainer.distributed import gather_objects, sum_across
from gnn_ooc.trainer.metrics import MetricsLog, TensorBoard
from gnn_ooc.trainer.pipeline import Pipeline, StageTimers
from gnn_ooc.trainer.sources import BatchSource, TrainBatch
from gnn_ooc.trainer.transfer import device_stages


@dataclass
class LoopSettings:
    """How the loop runs (plain values; the CLI fills them from ``TrainConfig``)."""

    epochs: int = 10
    device: str = "cpu"
    precision: str = "fp32"
    eval_every: int = 1
    patience: int | None = None
    checkpoint_every: int | None = None
    depth: int = 2
    progress: bool = True
    max_steps: int | None = None
    rank: int = 0
    world: int = 1


@dataclass
class LoopState:
    """Where the run stands; saved in every checkpoint."""

    epoch: int = 0
    position: int = 0  # local batches of ``epoch`` done
    step: int = 0      # global optimizer steps done
    best_valid: float = -1.0
    best_epoch: int = -1
    test_at_best: float = -1.0
    bad_evals: int = 0
    stopped_early: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``train`` batches, evaluating on ``evals`` (``{"valid": ..., "test": ...}``)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 train: BatchSource, evals: dict[str, BatchSource], run: Path, settings: LoopSettings,
                 *, say: Callable[[str], None] = print) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train, self.evals = train, evals
        self.run, self.settings = Path(run), settings
        self.state = LoopState()
        self.device = torch.device(settings.device)
        self.timers = StageTimers()  # per epoch, reset at its start
        self.total_seconds: dict[str, float] = {}
        self.main = settings.rank == 0
        self.say = say if self.main else (lambda _m: None)
        self.steps_log = MetricsLog(self.run, "steps") if self.main else None
        self.epochs_log = MetricsLog(self.run, "epochs") if self.main else None
        self.tb = TensorBoard(self.run, enabled=self.main)
        self.eval_stats = StoreStats(row_bytes=getattr(getattr(train, "store", None), "row_bytes", 0))
        self.scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" and self.device.type == "cuda" else None

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "loop": self.state.__dict__.copy(),
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": self.train.sampler.state_dict() if self.train.sampler is not None else {},
            "order": {"epoch": self.state.epoch, "position": self.state.position},
            "random": random_states(),  # this rank's; ``checkpoint`` adds every rank's
            "total_seconds": dict(self.total_seconds),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = LoopState(**state["loop"])
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.train.sampler is not None and state.get("sampler"):
            self.train.sampler.load_state_dict(state["sampler"])
        self.total_seconds = dict(state.get("total_seconds", {}))
        per_rank = state.get("random_ranks") or []
        # each rank resumes its own dropout draws; a run resumed on another world size takes rank 0's
        same_world = len(per_rank) == self.settings.world
        set_random_states(per_rank[self.settings.rank] if same_world else state["random"])
        for log in (self.steps_log, self.epochs_log):
            if log is not None:  # records after the checkpoint belong to the lost future
                log.truncate(self.state.step)

    def checkpoint(self) -> None:
        """Save the state (rank 0 writes it); every rank calls this at the same steps."""
        ranks = gather_objects(random_states(), self.settings.world)
        if self.main:
            state = self.state_dict()
            if self.settings.world > 1:
                state["random_ranks"] = ranks
            save_checkpoint(self.run, self.state.step, state)

    # --- the loop ------------------------------------------------------------------------------
    def fit(self) -> LoopState:
        s = self.settings
        try:
            while self.state.epoch < s.epochs and not self.state.stopped_early and not self._out_of_steps():
                if not self._epoch(self.state.epoch):
                    self.checkpoint()  # stopped by max_steps inside the epoch: resumable from here
                    break
                self._end_epoch(self.state.epoch)
        finally:
            self.tb.close()
        return self.state

    def _out_of_steps(self) -> bool:
        return self.settings.max_steps is not None and self.state.step >= self.settings.max_steps

    def _epoch(self, epoch: int) -> bool:
        """Train the rest of ``epoch``; False when ``max_steps`` stopped it early."""
        self.timers.reset()
        t0 = time.perf_counter()
        with self.timers.time("wait"):  # offline: the epoch's plan and pack, if the background is late
            self.train.begin_epoch(epoch)
        source, stages = self.train.stages(epoch, self.state.position)
        total = len(self.train.local_batches(epoch))
        self.model.train()
        # under CUDA a last stage copies each batch to the GPU on a side stream while the step runs
        pipe = Pipeline(source, stages + device_stages(self.device), depth=self.settings.depth, source_name="plan",
                        timers=self.timers, stop=self.train.stop)
        bar = _progress(self.settings.progress and self.main, total, self.state.position, f"epoch {epoch}")
        losses: list[float] = []
        try:
            for batch in pipe:
                losses.append(self._step(batch))
                bar.update(1)
                bar.set_postfix_str(self._postfix(losses[-1]), refresh=False)
                if self._out_of_steps():
                    break
                if self.settings.checkpoint_every and self.state.step % self.settings.checkpoint_every == 0:
                    self.checkpoint()
        finally:
            pipe.close()
            bar.close()
        self._epoch_time = time.perf_counter() - t0
        self._epoch_losses = losses
        return self.state.position >= total

    def _step(self, batch: TrainBatch) -> float:
        with self.timers.time("compute"):
            x = batch.x.to(self.device, non_blocking=True)
            y = batch.y.to(self.device, non_blocking=True)
            blocks = [b.to(self.device, non_blocking=True) for b in batch.blocks]
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                out = self.model(blocks, x)
                loss = torch.nn.functional.cross_entropy(out.float(), y)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            value = float(loss.detach())
            acc = float((out.argmax(1) == y).float().mean())
        batch.release()
        self.state.step += 1
        self.state.position += 1
        record = {"step": self.state.step, "epoch": batch.epoch, "batch": batch.index, "loss": value,
                  "acc": acc, "lr": self.optimizer.param_groups[0]["lr"], "seeds": batch.num_seeds}
        if self.steps_log is not None:
            self.steps_log.append(record)
        self.tb.scalars("train", record, self.state.step)
        return value

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.settings.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _postfix(self, loss: float) -> str:
        secs, items = self.timers.seconds(), self.timers.items()
        stage = " ".join(f"{k} {1e3 * v / max(1, items.get(k, 1)):.0f}ms" for k, v in secs.items())
        hits = self.train.stats().get("hit_rates", {})
        rates = " ".join(f"{k} {100 * v:.0f}%" for k, v in hits.items())
        return f"loss {loss:.3f} | {stage}" + (f" | {rates}" if rates else "")

    def _end_epoch(self, epoch: int) -> None:
        self.train.end_epoch(epoch)
        if self.scheduler is not None:
            self.scheduler.step()
        record = self._epoch_record(epoch)
        self.state.epochs.append(record)
        self.state.epoch, self.state.position = epoch + 1, 0
        if self.epochs_log is not None:
            self.epochs_log.append(record)
        self.tb.scalars("epoch", record, self.state.step)
        self.say(_epoch_line(record))
        self.checkpoint()

    def _epoch_record(self, epoch: int) -> dict[str, Any]:
        secs = self.timers.seconds()
        for k, v in secs.items():
            self.total_seconds[k] = self.total_seconds.get(k, 0.0) + v
        # the epoch's mean loss over every rank's batches
        total, count = sum_across([sum(self._epoch_losses), len(self._epoch_losses)], self.settings.world)
        record: dict[str, Any] = {
            "step": self.state.step, "epoch": epoch, "seconds": self._epoch_time,
            "loss": total / count if count else float("nan"),
            "overlap": self._epoch_time / sum(secs.values()) if secs else 1.0,
            **{f"{k}_s": v for k, v in secs.items()},
        }
        every = self.settings.eval_every
        if every and ((epoch + 1) % every == 0 or epoch + 1 == self.settings.epochs):
            record.update(self._evaluate_all(epoch))
        return record

    def _evaluate_all(self, epoch: int) -> dict[str, Any]:
        store = getattr(self.train, "store", None)
        if store is None:
            accs = {name: self.evaluate(src) for name, src in self.evals.items()}
        else:
            # evaluation reads through the same store: its rows go to counters of their own
            train_stats, store.stats = store.stats, StoreStats(row_bytes=store.stats.row_bytes)
            try:
                accs = {name: self.evaluate(src) for name, src in self.evals.items()}
            finally:
                self.eval_stats.merge(store.stats)
                store.stats = train_stats
        valid, st = accs.get("valid"), self.state
        if valid is not None and valid > st.best_valid:
            st.best_valid, st.best_epoch, st.test_at_best, st.bad_evals = valid, epoch, accs.get("test", -1.0), 0
        elif valid is not None:
            st.bad_evals += 1
            if self.settings.patience is not None and st.bad_evals >= self.settings.patience:
                st.stopped_early = True
        return {f"{k}_acc": v for k, v in accs.items()}

    @torch.no_grad()
    def evaluate(self, source: BatchSource) -> float:
        """Accuracy over every batch of ``source`` (epoch 0 of its order: the same nodes every time)."""
        model = _unwrap(self.model)
        was_training = model.training
        model.eval()
        correct = total = 0
        for batch in iter_batches(source, 0, self.settings.depth, device=self.device):
            with self._autocast():
                out = model([b.to(self.device) for b in batch.blocks], batch.x.to(self.device))
            correct += int((out.argmax(1) == batch.y).sum())
            total += batch.num_seeds
            batch.release()
        source.end_epoch(0)  # an offline evaluation source gives its segment buffers back
        source.drop_buffers()  # and every evaluation source its feature buffers, until next time
        model.train(was_training)
        # each rank evaluated its share: every rank gets the same accuracy (and early-stop decision)
        correct, total = sum_across([correct, total], self.settings.world)
        return correct / total if total else float("nan")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside a DDP wrapper."""
    return getattr(model, "module", model)


def _epoch_line(r: dict[str, Any]) -> str:
    accs = " ".join(f"{k} {100 * v:.2f}%" for k, v in r.items() if k.endswith("_acc"))
    return f"epoch {r['epoch']}: loss {r['loss']:.4f}, {r['seconds']:.2f} s (overlap {r['overlap']:.2f}) {accs}"


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety: without tqdm the epoch lines still print
        return _NoBar()
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def iter_batches(source: BatchSource, epoch: int, depth: int = 2, *, device: Any = "cpu") -> Iterator[TrainBatch]:
    """All of ``source``'s batches of ``epoch`` through its pipeline, copied to ``device`` (a CUDA
    device: on a side stream) (evaluation, tools and tests)."""
    source.begin_epoch(epoch)
    items, stages = source.stages(epoch, 0)
    with Pipeline(items, stages + device_stages(device), depth=depth, stop=source.stop) as pipe:
        yield from pipe
