"""Several processes and machines: who this process is (torchrun or srun), and the process group.

``detect_env`` reads what the launcher put in the environment: ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE`` (torchrun), else ``SLURM_PROCID``, ``SLURM_LOCALID`` and ``SLURM_NTASKS`` (srun);
``MASTER_ADDR`` defaults to the first host of ``SLURM_JOB_NODELIST`` and ``MASTER_PORT`` to a
port derived from ``SLURM_JOB_ID`` (or 29500). ``init`` starts the process group: NCCL on
GPUs, gloo on CPUs. Nothing here changes the environment; the rendezvous address goes to
``init_process_group`` as a ``tcp://`` URL instead of through ``os.environ``.

Example:
    >>> env = detect_env({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"})
    >>> env.rank, env.world, env.master_addr, env.master_port
    (1, 2, '127.0.0.1', 29500)
    >>> detect_env({}) is None
    True
    >>> expand_nodelist("gpu[01-02,07],login1")
    ['gpu01', 'gpu02', 'gpu07', 'login1']
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

from gnn_ooc.trainer.config import ConfigError

T = TypeVar("T")
DEFAULT_PORT = 29500
_GROUP = re.compile(r"\[([^\]]*)\]")


@dataclass(frozen=True)
class DistEnv:
    """This process's place among ``world`` processes, and where they meet.

    Example:
        >>> DistEnv(rank=0, local_rank=0, world=4, master_addr="node01", master_port=29500).main
        True
    """

    rank: int
    local_rank: int
    world: int
    master_addr: str
    master_port: int

    @property
    def main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and writes the run folder."""
        return self.rank == 0

    @property
    def init_method(self) -> str:
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr  # IPv6
        return f"tcp://{host}:{self.master_port}"


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The launcher's view of this process, or None when it runs alone (world size 1 or unset).

    torchrun's variables win over SLURM's, so ``srun torchrun ...`` works. The SLURM fallbacks
    count only inside an srun step (``SLURM_STEP_ID`` set): a batch script's own shell also has
    ``SLURM_NTASKS``, and taking it there would make one process wait for peers that never come.
    """
    env = os.environ if environ is None else environ
    in_step = "SLURM_STEP_ID" in env or "SLURM_STEPID" in env
    world = _int(env, "WORLD_SIZE", "SLURM_STEP_NUM_TASKS" if in_step else None,
                 "SLURM_NTASKS" if in_step else None)
    if world is None or world <= 1:
        return None
    rank = _int(env, "RANK", "SLURM_PROCID" if in_step else None)
    if rank is None:
        raise ConfigError(f"{world} processes (WORLD_SIZE or SLURM_NTASKS), but no RANK or SLURM_PROCID")
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside 0..{world - 1}")
    local = _int(env, "LOCAL_RANK", "SLURM_LOCALID" if in_step else None)
    return DistEnv(rank=rank, local_rank=rank if local is None else local, world=world,
                   master_addr=_master_addr(env), master_port=_master_port(env))


def _int(env: Mapping[str, str], *names: str | None) -> int | None:
    for name in names:
        if name is not None and env.get(name, "").strip():
            try:
                return int(env[name])
            except ValueError:
                raise ConfigError(f"{name}={env[name]!r}: expected an integer") from None
    return None


def _master_addr(env: Mapping[str, str]) -> str:
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    return expand_nodelist(nodes)[0] if nodes else "127.0.0.1"


def _master_port(env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    # two jobs sharing a node must not meet on the same port; every task of one job agrees on it
    return 20000 + int(job) % 20000 if job and job.isdigit() else DEFAULT_PORT


def expand_nodelist(text: str) -> list[str]:
    """The hosts of a SLURM host list: ``node[01-03,07]``, ``a1,b[2-3]``, ``rack[1-2]-n[1-2]``.

    Zero padding is kept (``n[08-10]`` gives n08, n09, n10).

    Example:
        >>> expand_nodelist("rack[1-2]-n[08-09]")
        ['rack1-n08', 'rack1-n09', 'rack2-n08', 'rack2-n09']
    """
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        parts = _GROUP.split(item)  # literal, group, literal, group, ..., literal
        choices = [[p] if i % 2 == 0 else _expand_ranges(p, item) for i, p in enumerate(parts)]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    if not hosts:
        raise ConfigError(f"host list {text!r}: no hosts")
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets (those inside separate ranges of one host pattern)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    if depth != 0:
        raise ConfigError(f"host list {text!r}: unbalanced brackets")
    return [s for s in items if s]


def _expand_ranges(group: str, item: str) -> list[str]:
    out: list[str] = []
    for part in group.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ConfigError(f"host list item {item!r}: {part!r} is not a number or range")
        width = len(lo)
        out.extend(str(n).zfill(width) for n in range(int(lo), int(hi if sep else lo) + 1))
    return out


# --- the process group ------------------------------------------------------------------------------
def available() -> bool:
    """Whether this torch was built with ``torch.distributed``."""
    return bool(torch.distributed.is_available())


def initialized() -> bool:
    return available() and bool(torch.distributed.is_initialized())


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(env: DistEnv, device: torch.device) -> None:
    """Join the process group of ``env`` (blocks until all ``env.world`` processes arrive).

    On CUDA this process's GPU (``gpu_for``) becomes the current device first, so NCCL and
    every later ``torch.device("cuda")`` use the GPU of this rank rather than all piling onto GPU 0.
    """
    if not available():
        raise ConfigError(f"{env.world} processes requested, but this torch has no torch.distributed")
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(gpu_for(env.local_rank, torch.cuda.device_count()))
    torch.distributed.init_process_group(backend, init_method=env.init_method, rank=env.rank,
                                         world_size=env.world)


def gpu_for(local_rank: int, visible: int) -> int:
    """The GPU index of a rank: ``local_rank`` when the task sees the node's GPUs, 0 when the
    launcher bound it to one (``srun --gpus-per-task=1`` leaves one visible).

    Example:
        >>> gpu_for(3, visible=4), gpu_for(3, visible=1)
        (3, 0)
    """
    if visible == 1:
        return 0
    if not 0 <= local_rank < visible:
        raise ConfigError(f"local rank {local_rank}, but this process sees {visible} GPUs")
    return local_rank


def shutdown() -> None:
    """Leave the process group, if this process is in one."""
    if initialized():
        torch.distributed.destroy_process_group()


def gather_objects(obj: T, world: int) -> list[T]:
    """``obj`` from every rank, in rank order (``[obj]`` in one process).

    Example:
        >>> gather_objects({"a": 1}, world=1)
        [{'a': 1}]
    """
    if world <= 1 or not initialized():
        return [obj]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def sum_across(values: Sequence[float], world: int) -> list[float]:
    """``values`` summed element by element over the ranks (``values`` in one process).

    Example:
        >>> sum_across([3.0, 2.0], world=1)
        [3.0, 2.0]
    """
    if world <= 1 or not initialized():
        return [float(v) for v in values]
    device = "cpu"
    if torch.distributed.get_backend() == "nccl":  # NCCL reduces GPU tensors only
        device = f"cuda:{torch.cuda.current_device()}"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return [float(v) for v in t.cpu()]


def barrier(world: int) -> None:
    if world > 1 and initialized():
        torch.distributed.barrier()


def on_rank0(fn: Callable[[], T], rank: int, world: int) -> T:
    """``fn()`` on rank 0 only; every rank gets its result (or its error) once rank 0 is done.

    The broadcast is the barrier: other ranks go on only after rank 0's side effects (a run
    folder, a config file) exist, and an error there fails every rank instead of leaving
    them waiting in the next collective.

    Example:
        >>> on_rank0(lambda: "runs/a", rank=0, world=1)
        'runs/a'
    """
    if world <= 1 or not initialized():
        return fn()
    box: list[Any] = [None]
    error: BaseException | None = None
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # handed to the others, then raised here as it was
            error = exc
            box[0] = ("error", f"rank 0: {type(exc).__name__}: {exc}")
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise ConfigError(value)
    return value
