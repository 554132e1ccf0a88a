"""Host to device copies on a side CUDA stream: batch t+1 crosses PCIe while batch t computes.

Rows held by the GPU cache never cross: the sources assemble only the other rows, compactly,
into the host buffer (``assemble.BatchAssembler``), and after the copy the stage scatters them and
gathers the cached ones on the GPU (``place_device_rows``) to form the batch's feature matrix.

The copy stage runs in its own pipeline thread. Its copies are asynchronous because the sources
assemble features into page-locked buffers (``BatchSource(pin=True)``); it waits for its own copy
event (in its thread, not the training loop's), gives the host buffers back to their pool, and
marks every device tensor as used by the compute stream: without that the caching allocator
could hand their memory to the next batch's copy while the step still reads it.

On the CPU there is nothing to copy and ``device_stages`` is empty.

Example:
    >>> import torch
    >>> device_stages(torch.device("cpu"))
    []
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gnn_ooc.capabilities import cuda_available


@dataclass(frozen=True)
class DeviceRows:
    """A batch's rows in a device-resident cache, gathered there after the host rows are copied.

    ``host_at``: where the host buffer's rows go (in order); ``at``: where the cached rows go;
    ``slots``: their slots in ``cache`` (CPU int64 tensors); ``num_rows``: the batch's rows.
    """

    cache: Any
    host_at: Any
    at: Any
    slots: Any
    num_rows: int


def place_device_rows(x_host: Any, rows: DeviceRows, device: Any) -> Any:
    """The batch's [num_rows, D] features on ``device``: ``x_host`` (already there) scattered to
    ``rows.host_at``, the cached rows gathered into ``rows.at``."""
    import torch

    x = torch.empty((rows.num_rows, x_host.shape[1]), dtype=x_host.dtype, device=device)
    x.index_copy_(0, rows.host_at.to(device, non_blocking=True), x_host)
    cached = rows.cache.rows.index_select(0, rows.slots.to(rows.cache.rows.device, non_blocking=True))
    x.index_copy_(0, rows.at.to(device, non_blocking=True), cached.to(device, non_blocking=True))
    return x


class DeviceTransfer:
    """A pipeline stage moving a batch (features, labels, blocks) to ``device`` on a side stream."""

    def __init__(self, device: Any) -> None:
        import torch

        if not cuda_available():
            raise RuntimeError("DeviceTransfer needs CUDA; on the CPU batches need no copy stage")
        self.device = torch.device(device)
        if self.device.index is None:  # "cuda": the builder's current GPU (this rank's under DDP)
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)
        # captured in the thread that builds the stage: the stream the training step runs on
        self.compute = torch.cuda.current_stream(self.device)

    def __call__(self, batch: Any) -> Any:
        import torch

        # a new thread starts on GPU 0: without this, leaving the stream context would switch
        # to it and make a context there for every rank of a node
        torch.cuda.set_device(self.device)
        with torch.cuda.stream(self.stream):
            x = batch.x.to(self.device, non_blocking=True)
            if batch.device_rows is not None:
                x = place_device_rows(x, batch.device_rows, self.device)
            y = batch.y.to(self.device, non_blocking=True)
            blocks = tuple(b.to(self.device, non_blocking=True) for b in batch.blocks)
            done = torch.cuda.Event(blocking=True)  # the wait sleeps instead of spinning a core
            done.record(self.stream)
        done.synchronize()  # the host buffers are free once the copy is done
        for t in _device_tensors(x, y, blocks):
            t.record_stream(self.compute)
        batch.x, batch.y, batch.blocks, batch.device_rows = x, y, blocks, None
        batch.release()
        return batch


def _device_tensors(x: Any, y: Any, blocks: tuple[Any, ...]) -> list[Any]:
    out = [x, y]
    for b in blocks:
        out.append(b.edge_index)
        if getattr(b, "src_out_degree", None) is not None:
            out.append(b.src_out_degree)
    return out


def device_stages(device: Any) -> list[tuple[str, Callable[[Any], Any]]]:
    """The ``h2d`` stage for a CUDA ``device``; none for the CPU."""
    import torch

    if torch.device(device).type != "cuda":
        return []
    return [("h2d", DeviceTransfer(device))]
