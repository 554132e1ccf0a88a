"""How one ``--memory-budget`` is shared by a run's parts, from measured sizes.

Before anything is allocated the run probes its largest batch (the first ``PROBE_BATCHES`` of
epoch 0, sampled exactly as training will sample them) and measures one forward and backward
step on it with a copy of the model (``measure_step``: the step's activations and gradients
depend on the model, and GAT or GCN hold several times what GraphSAGE does). The fixed parts
come first; the caches take what is left:

========================  =====================================================================
planning and packing      offline: a quarter, for the background process (and, while setting
                          up, for planning and packing epoch 0 and the evaluation batches here)
segment buffers           offline: two, an eighth each (segments are fitted to one)
direct reads              the read buffer of direct disk reads: a 32nd, at most 32 MiB
batches in flight         ``depth + 2`` feature buffers of the largest batch (assembling, queued,
                          in the step), ``depth`` at most ``--prefetch`` and within an eighth
the step                  the measured forward/backward working set, with a tenth to spare
working memory            sampling, blocks, temporaries: 8 MiB and one batch's features more
                          (three in online mode, whose misses gather into temporaries)
the features (memory)     all of them, in memory mode
the caches                the rest: a third device cache, two thirds pinned host cache (unless
                          ``--gpu-cache``/``--cpu-cache`` say; under CUDA the device cache is in
                          GPU memory and outside this budget)
========================  =====================================================================

A budget whose fixed parts do not fit is refused before any work, with each part and the least
budget that would do (``MemoryBudgetError``).

Example:
    >>> s = Shares.split(256 << 20, "online", batch_bytes=4 << 20, step_bytes=20 << 20, prefetch=4)
    >>> s.depth, s.device_cache + s.host_cache > 100 << 20
    (4, True)
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gnn_ooc.errors import MemoryBudgetError
from gnn_ooc.memory import allocator_slack, process_memory
from gnn_ooc.units import format_size

PROBE_BATCHES = 4
WORKING = 8 << 20  # measured here: 14-18 MiB beside batches of 7.5 MiB (sampling, blocks, allocator)
MARGIN = 1.1  # later batches sample a little larger or smaller than the probed ones
DIRECT_READS_MAX = 32 << 20


@dataclass(frozen=True)
class Shares:
    """Bytes of each part of a run's memory budget (see the module docstring)."""

    budget: int
    planning: int
    segments: int
    reads: int
    batches: int
    depth: int
    step: int
    working: int
    features: int
    device_cache: int
    host_cache: int

    @classmethod
    def split(cls, budget: int, mode: str, *, batch_bytes: int, step_bytes: int, prefetch: int,
              feature_bytes: int = 0, gpu_cache: int | None = None, cpu_cache: int | None = None,
              device_elsewhere: bool = False) -> Shares:
        """The shares of ``budget`` for ``mode``; raises when the fixed parts do not fit."""
        offline = mode == "offline"
        batch = int(batch_bytes * MARGIN)
        depth = max(1, min(prefetch, budget // 8 // max(1, batch) - 2))
        fixed = {
            "planning and packing": budget // 4 if offline else 0,
            "two segment buffers": 2 * (budget // 8) if offline else 0,
            "direct reads": min(DIRECT_READS_MAX, budget // 32) if mode in ("offline", "online") else 0,
            f"{depth + 2} batch buffers": (depth + 2) * batch,
            "the step": int(step_bytes * MARGIN),
            # online mode gathers each batch's misses into temporaries of their own, in two stages
            "working memory": WORKING + batch * (3 if mode == "online" else 1),
            "the features": feature_bytes if mode == "memory" else 0,
            "allocator slack": allocator_slack(budget),
        }
        left = budget - sum(fixed.values())
        if left < 0:
            raise MemoryBudgetError(_too_small(budget, mode, fixed, lambda b: cls.split(
                b, mode, batch_bytes=batch_bytes, step_bytes=step_bytes, prefetch=prefetch, feature_bytes=feature_bytes,
                gpu_cache=0, cpu_cache=0)))
        device, host = _caches(left, mode, gpu_cache, cpu_cache, device_elsewhere)
        parts = list(fixed.values())
        return cls(budget, parts[0], parts[1], parts[2], parts[3], depth, parts[4], parts[5], parts[6], device, host)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        named = {"planning": self.planning, "segments": self.segments, "reads": self.reads,
                 f"batches (depth {self.depth})": self.batches, "step": self.step, "working": self.working,
                 "features": self.features,
                 "device cache": self.device_cache, "host cache": self.host_cache}
        return ", ".join(f"{k} {format_size(v)}" for k, v in named.items() if v)


def _caches(left: int, mode: str, gpu: int | None, cpu: int | None, elsewhere: bool) -> tuple[int, int]:
    if mode not in ("offline", "online"):
        return 0, 0
    device = gpu if gpu is not None else (0 if elsewhere else left // 3)
    host = cpu if cpu is not None else left - (0 if elsewhere else device)
    return int(device), int(max(0, host))


def _too_small(budget: int, mode: str, fixed: dict[str, int], fits: Any) -> str:
    need = sum(fixed.values())
    parts = ", ".join(f"{k} {format_size(v)}" for k, v in fixed.items() if v)
    hint = "or lower --batch-size, --fanouts or --hidden" + (", or train out of core (--mode offline)"
                                                          if mode == "memory" else "")
    return (f"--memory-budget {format_size(budget)} cannot hold {'an' if mode[0] in 'aeiou' else 'a'} {mode} run: "
            f"it needs {format_size(need)} before any cache ({parts}); raise it to at least "
            f"{format_size(_least(need, fits))}, {hint}")


def _least(need: int, fits: Any) -> int:
    """The least budget (to 1 MiB) whose fixed parts fit: the shares that scale with the budget grow too.

    Plus 2 %, rounded up to a MiB: the step is measured, and a second run measures it a little
    differently, so the budget named must hold the next run too, not only this one."""
    lo, hi = need, need
    while not _fits(fits, hi):
        hi *= 2
    while hi - lo > 1 << 20:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _fits(fits, mid) else (mid, hi)
    return -(-(hi + hi // 50) >> 20) << 20


def _fits(fits: Any, budget: int) -> bool:
    try:
        fits(budget)
    except MemoryBudgetError:
        return False
    return True


# --- probing the largest batch and its step ---------------------------------------------------------
def probe_batch(sampler: Any, seeds: np.ndarray, batch_size: int, seed: int) -> Any:
    """The largest of the first ``PROBE_BATCHES`` batches of epoch 0, sampled as training will."""
    from gnn_ooc.sampler.base import SampleKey
    from gnn_ooc.sampler.plan import epoch_order

    order = epoch_order(np.asarray(seeds, dtype=np.int64), seed, 0)
    best = None
    for b in range(min(PROBE_BATCHES, -(-order.size // batch_size))):
        sub = sampler.sample(order[b * batch_size : (b + 1) * batch_size], SampleKey(seed, 0, b))
        if best is None or sub.num_nodes > best.num_nodes:
            best = sub
    return best


def measure_step(model: Any, sub: Any, dim: int, dtype: Any, device: Any, classes: int) -> int:
    """Bytes one forward, backward and optimizer step on ``sub`` adds (a copy of the model, random
    states restored: the run's own model and draws are untouched). Sampled every half millisecond
    on the CPU; on CUDA the step's memory is the GPU's, outside the host budget, so 0."""
    import torch

    if torch.device(device).type == "cuda" or sub is None:
        return 0
    from gnn_ooc.trainer.base import torch_blocks

    twin = copy.deepcopy(model)
    optimizer = torch.optim.Adam(twin.parameters())
    x = torch.zeros((sub.num_nodes, dim), dtype=dtype)
    y = torch.zeros(int(sub.num_sampled_nodes[0]), dtype=torch.long).clamp_(max=max(0, classes - 1))
    blocks = torch_blocks(sub)

    def step() -> None:
        optimizer.zero_grad(set_to_none=False)
        # half-precision features are converted for the fp32 model in every step, as training does
        inputs = x.float() if x.is_floating_point() and x.dtype != torch.float32 else x
        torch.nn.functional.cross_entropy(twin(blocks, inputs).float(), y).backward()
        optimizer.step()

    with torch.random.fork_rng(devices=[]):
        step()  # gradients and optimizer state exist from here on, as in training
        peak = _peak_during(step)
    return peak


def _peak_during(fn: Any) -> int:
    base = process_memory()
    peak = [base]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process_memory())
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch, name="gnn-ooc-step-probe", daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        done.set()
        watcher.join()
    return max(0, peak[0] - base)
