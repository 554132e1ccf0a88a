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
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gnn_ooc.graphstore.features.base import StoreStats
from gnn_ooc.progress import bar as progress_bar
from gnn_ooc.trainer.base import TrainerError
from gnn_ooc.trainer.checkpoint import (
    CheckpointError,
    random_states,
    save_checkpoint,
    set_random_states,
)
from gnn_ooc.trainer.distributed import gather_objects, sum_across
from gnn_ooc.trainer.metrics import MetricsLog, TensorBoard
from gnn_ooc.trainer.pipeline import Pipeline, StageTimers
from gnn_ooc.trainer.sources import BatchSource, TrainBatch
from gnn_ooc.trainer.transfer import device_stages

log = logging.getLogger(__name__)
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
    # the current epoch before ``position``: this rank's loss sum and count, and seconds trained
    # (a run resumed mid-epoch reports the whole epoch's mean loss and time, not the rest's)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    epoch_seconds: float = 0.0


class Trainer:
    """Trains ``model`` on ``train`` batches, evaluating on ``evals`` (``{"valid": ..., "test": ...}``)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 train: BatchSource, evals: dict[str, BatchSource], run: Path, settings: LoopSettings,
                 *, say: Callable[[str], None] | None = None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train, self.evals = train, evals
        self.run, self.settings = Path(run), settings
        self.state = LoopState()
        self.setup_seconds = 0.0  # before the first step: sources built (features loaded, epoch 0 packed)
        self.device = torch.device(settings.device)
        self.timers = StageTimers()  # per epoch, reset at its start
        self.total_seconds: dict[str, float] = {}
        self.main = settings.rank == 0
        self.say = (say or log.info) if self.main else (lambda _m: None)
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
        try:
            _unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])[:300]
            raise CheckpointError(f"{self.run}: the checkpoint does not fit this model ({detail}); the run's "
                                  "settings or dataset changed since it was saved: start a new run") from None
        per_rank_loss = state.get("partial_ranks") or []
        if len(per_rank_loss) == self.settings.world:  # each rank resumes its own partial epoch
            self.state.epoch_loss_sum, self.state.epoch_loss_count = per_rank_loss[self.settings.rank]
        elif self.settings.rank != 0:  # another world size: rank 0 carries the whole partial sum
            self.state.epoch_loss_sum, self.state.epoch_loss_count = 0.0, 0
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
        # records after the checkpoint belong to the lost future; so does the record of an epoch the
        # checkpoint had not ended (killed between the epoch's record and its end checkpoint)
        if self.steps_log is not None:
            self.steps_log.truncate(self.state.step)
        if self.epochs_log is not None:
            self.epochs_log.truncate(self.state.step, epoch=self.state.epoch)

    def checkpoint(self, *, best: bool = False) -> None:
        """Save the state (rank 0 writes it); every rank calls this at the same steps."""
        mine = {"random": random_states(), "partial": [self.state.epoch_loss_sum, self.state.epoch_loss_count]}
        ranks = gather_objects(mine, self.settings.world)
        if self.main:
            state = self.state_dict()
            if self.settings.world > 1:
                state["random_ranks"] = [r["random"] for r in ranks]
                state["partial_ranks"] = [r["partial"] for r in ranks]
                total = [sum(r["partial"][0] for r in ranks), sum(r["partial"][1] for r in ranks)]
                state["loop"]["epoch_loss_sum"], state["loop"]["epoch_loss_count"] = total
            info = {"epoch": self.state.epoch, "position": self.state.position,
                    "best_valid_acc": self.state.best_valid, "best_epoch": self.state.best_epoch}
            save_checkpoint(self.run, self.state.step, state, best=best, info=info)

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
        self._before = self.state.epoch_seconds  # trained of this epoch before a resume
        with self.timers.time("wait"):  # offline: the epoch's plan and pack, if the background is late
            self.train.begin_epoch(epoch)
        source, stages = self.train.stages(epoch, self.state.position)
        total = len(self.train.local_batches(epoch))
        self.model.train()
        # under CUDA a last stage copies each batch to the GPU on a side stream while the step runs
        pipe = Pipeline(source, stages + device_stages(self.device), depth=self.settings.depth, source_name="plan",
                        timers=self.timers, stop=self.train.stop)
        bar = progress_bar(total, f"epoch {epoch}", enabled=self.settings.progress and self.main,
                           initial=self.state.position, unit="batch")
        losses: list[float] = []
        try:
            for batch in pipe:
                losses.append(self._step(batch))
                self.state.epoch_loss_sum += losses[-1]
                self.state.epoch_loss_count += 1
                self.state.epoch_seconds = self._before + time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix_str(self._postfix(losses[-1]), refresh=False)
                if self._out_of_steps():
                    break
                if self.settings.checkpoint_every and self.state.step % self.settings.checkpoint_every == 0:
                    self.checkpoint()
        finally:
            pipe.close()
            bar.close()
        self._epoch_time = self._before + time.perf_counter() - t0
        return self.state.position >= total

    def _step(self, batch: TrainBatch) -> float:
        with self.timers.time("compute"):
            x = self._inputs(batch.x)
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
            if not math.isfinite(value):
                raise _nonfinite_loss(batch, x, value, self.state.step + 1)
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

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Features on the device, in float32 unless autocast computes in half precision (float16
        and bfloat16 datasets store half the bytes; an fp32 model computes on float32 inputs)."""
        x = x.to(self.device, non_blocking=True)
        if self.settings.precision == "fp32" and x.is_floating_point() and x.dtype != torch.float32:
            x = x.float()
        return x

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
        best_before = self.state.best_epoch
        record = self._epoch_record(epoch)
        self.state.epochs.append(record)
        self.state.epoch, self.state.position = epoch + 1, 0
        self.state.epoch_loss_sum, self.state.epoch_loss_count, self.state.epoch_seconds = 0.0, 0, 0.0
        if self.epochs_log is not None:
            self.epochs_log.append(record)
        self.tb.scalars("epoch", record, self.state.step)
        self.say(_epoch_line(record))
        self.checkpoint(best=self.state.best_epoch != best_before)

    def _epoch_record(self, epoch: int) -> dict[str, Any]:
        secs = self.timers.seconds()
        busiest = max(secs, key=lambda k: secs[k]) if secs else ""
        for k, v in secs.items():
            self.total_seconds[k] = self.total_seconds.get(k, 0.0) + v
        # the epoch's mean loss over every rank's batches (those before a resume included)
        total, count = sum_across([self.state.epoch_loss_sum, self.state.epoch_loss_count], self.settings.world)
        record: dict[str, Any] = {
            "step": self.state.step, "epoch": epoch, "seconds": self._epoch_time,
            "loss": total / count if count else float("nan"),
            "overlap": self._epoch_time / sum(secs.values()) if secs else 1.0,
            # an epoch cannot beat its busiest stage: 1.0 is the pipeline at its bound
            "bound": self._epoch_time / secs[busiest] if busiest and secs[busiest] > 0 else 1.0,
            "busiest": busiest,
            **{f"{k}_s": v for k, v in secs.items()},
        }
        every = self.settings.eval_every
        if every and ((epoch + 1) % every == 0 or epoch + 1 == self.settings.epochs):
            record.update(self._evaluate_all(epoch))
        return record

    def _evaluate_all(self, epoch: int) -> dict[str, Any]:
        self.train.drop_buffers()  # training's buffers would sit idle beside the evaluation's
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
        shown = progress_bar(len(source.local_batches(0)), "evaluating", enabled=self.settings.progress and self.main,
                             unit="batch")
        for batch in iter_batches(source, 0, self.settings.depth, device=self.device):
            with self._autocast():
                out = model([b.to(self.device) for b in batch.blocks], self._inputs(batch.x))
            y = batch.y.to(out.device)
            known = y >= 0  # an unlabelled node is neither right nor wrong
            correct += int((out.argmax(1)[known] == y[known]).sum())
            total += int(known.sum())
            batch.release()
            shown.update(1)
        shown.close()
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


def _nonfinite_loss(batch: TrainBatch, x: torch.Tensor, value: float, step: int) -> TrainerError:
    """The error that stops a run whose loss is NaN or infinite: which batch, and whether its
    feature rows are to blame (damaged bytes) or the model diverged."""
    where = f"epoch {batch.epoch}, batch {batch.index} (step {step}): the loss is {value}"
    bad: Any = torch.nonzero(~torch.isfinite(x.float()).all(dim=1)).flatten().cpu().numpy() if x.numel() else []
    if len(bad):
        nodes = batch.sub.node[: x.shape[0]][bad[:5]].tolist()
        return TrainerError(f"{where}: {len(bad)} feature rows are not finite (nodes {nodes}{' ...' if len(bad) > 5 else ''}); "
                            "the features are damaged: run gnn-ooc verify on the dataset")
    return TrainerError(f"{where}, with every feature row finite: the model diverged; lower --lr, or train "
                        "with --precision fp32")


def iter_batches(source: BatchSource, epoch: int, depth: int = 2, *, device: Any = "cpu") -> Iterator[TrainBatch]:
    """All of ``source``'s batches of ``epoch`` through its pipeline, copied to ``device`` (a CUDA
    device: on a side stream) (evaluation, tools and tests)."""
    source.begin_epoch(epoch)
    items, stages = source.stages(epoch, 0)
    with Pipeline(items, stages + device_stages(device), depth=depth, stop=source.stop) as pipe:
        yield from pipe
