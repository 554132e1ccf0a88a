"""gnn_ooc.cuda: GPU kernels, each with a pure-torch fallback; empty until the GPU issue lands.

What it will hold (Triton, an optional ``gpu`` extra; never needed on a CPU):

* a zero-copy gather of feature rows from page-locked host memory straight into a batch's
  device tensor, reading whole aligned 128-byte windows (float32 / float16 / bfloat16, any width);
* one fused assembly of a batch on the GPU from the device cache, the pinned host cache and the
  staged segment rows (what ``trainer.assemble`` does on the host today);
* the device-cache lookup (global id to cache slot) on the GPU;
* the shard exchange of a device cache shared by all ranks under DDP.

Until then the CUDA paths (page-locked batch buffers, the side-stream copy in
``trainer.transfer``, the GPU-resident device cache) are plain torch, behind the checks in
``gnn_ooc.capabilities``.
"""
