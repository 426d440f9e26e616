"""The `gpus` setting of a run: which devices of a machine it uses, and how many worker processes
that makes on each node.

    auto     one GPU (the first) where the machine has one, else the CPU
    all      every GPU of the machine, one process each
    0,1,3    these GPUs, one process each
    cpu      the CPU, one process
    cpu:N    N processes on the CPU (gloo backend): checks data parallelism without a GPU
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ConfigError

MAX_CPU_PROCS = 64
_PATTERN = re.compile(r"auto|all|cpu|cpu:(\d+)|\d+(,\d+)*")


@dataclass(frozen=True)
class Placement:
    procs: int | str        # worker processes per node; "gpu" lets torchrun count each node's GPUs
    visible: str | None     # CUDA_VISIBLE_DEVICES for the workers; "" hides every GPU, None leaves it

    @property
    def device_set(self) -> str:
        """What the run occupies on this machine: 'cpu', or CUDA device ids ('0,1')."""
        return self.visible or "cpu"


def check(spec: str) -> str | None:
    """Why `spec` is not a valid gpus setting, or None when it is."""
    text = spec.replace(" ", "")
    match = _PATTERN.fullmatch(text)
    if not match:
        return "use auto, all, cpu, cpu:N or GPU numbers separated by commas (0,1)"
    if match.group(1) is not None and not 1 <= int(match.group(1)) <= MAX_CPU_PROCS:
        return f"cpu:N takes 1 to {MAX_CPU_PROCS} processes"
    ids = gpu_ids(text)
    if len(ids) != len(set(ids)):
        return "a GPU is named twice"
    return None


QUEUE_WORKER = "WORKBENCH_QUEUE_WORKER"    # set for the workers the supervisor starts: their GPUs are placed


def gpu_ids(spec: str) -> list[int]:
    text = spec.replace(" ", "")
    return [int(x) for x in text.split(",")] if text[:1].isdigit() else []


def place(spec: str, cuda_count: int, *, nodes: int = 1, strict: bool = True) -> Placement:
    """Worker processes and visible GPUs for `spec` on a machine with `cuda_count` GPUs.

    strict: GPU numbers this machine lacks are an error (the run starts here); without it
    they are kept, for commands printed to run on other machines."""
    text = spec.replace(" ", "")
    if text.startswith("cpu"):
        return Placement(int(text.split(":")[1]) if ":" in text else 1, "")
    if text == "auto":
        return Placement(1, "0" if cuda_count else None)
    if text == "all":
        visible = ",".join(map(str, range(cuda_count))) or None
        return Placement("gpu" if nodes > 1 else max(cuda_count, 1), visible)
    ids = gpu_ids(text)
    missing = [i for i in ids if i >= cuda_count]
    if strict and missing:
        have = f"GPUs 0 to {cuda_count - 1}" if cuda_count > 1 else "only GPU 0" if cuda_count else "no CUDA GPU"
        raise ConfigError(f"GPU {missing[0]} was asked for, but this machine has {have}", field="gpus")
    return Placement(len(ids), ",".join(map(str, ids)))


def choices(cuda_count: int) -> list[str]:
    """Settings offered in the form for a machine with `cuda_count` GPUs."""
    return ["auto", "all", "cpu", "cpu:2"] + [str(i) for i in range(cuda_count)]


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def occupied() -> str:
    """The device set this process trains on, in the jobs table's terms: 'cpu', or the CUDA ids the
    machine knows them by (a run started by hand may have narrowed them with CUDA_VISIBLE_DEVICES)."""
    import os

    count = cuda_count()
    if not count:
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return visible if visible else ",".join(str(i) for i in range(count))


def gpus_for_estimate(spec: str, nodes: int, cuda_count: int) -> int:
    """GPUs a run spreads over, for the memory estimate (FSDP shards across all of them)."""
    if check(spec):
        return 1
    procs = place(spec, cuda_count, nodes=nodes, strict=False).procs
    return (procs if isinstance(procs, int) else max(cuda_count, 1)) * max(1, nodes)
