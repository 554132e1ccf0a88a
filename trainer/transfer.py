"""Host to device copies on a side CUDA stream: batch t+1 crosses PCIe while batch t computes.

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

from typing import Any, Callable

from gnn_ooc.capabilities import cuda_available


class DeviceTransfer:
    """A pipeline stage moving a batch (features, labels, blocks) to ``device`` on a side stream."""

    def __init__(self, device: Any) -> None:
        import torch

        if not cuda_available():
            raise RuntimeError("DeviceTransfer needs CUDA; on the CPU batches need no copy stage")
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        # captured in the thread that builds the stage: the stream the training step runs on
        self.compute = torch.cuda.current_stream(self.device)

    def __call__(self, batch: Any) -> Any:
        import torch

        with torch.cuda.stream(self.stream):
            x = batch.x.to(self.device, non_blocking=True)
            y = batch.y.to(self.device, non_blocking=True)
            blocks = tuple(b.to(self.device, non_blocking=True) for b in batch.blocks)
            done = torch.cuda.Event()
            done.record(self.stream)
        done.synchronize()  # the host buffers are free once the copy is done
        for t in _device_tensors(x, y, blocks):
            t.record_stream(self.compute)
        batch.x, batch.y, batch.blocks = x, y, blocks
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
