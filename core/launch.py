"""The command that starts a run: `python -m core train` for one process, torchrun
(`python -m torch.distributed.run`) for several devices or several machines.

The supervisor and the Train tab's preview build their commands here, so what the preview
prints is what Start runs. Several nodes use torchrun's static rendezvous: node 0 hosts it at
nodes.host:nodes.port, and every node passes its own --node_rank.
"""
from __future__ import annotations

import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass

from core.config import RunConfig
from core.devices import Placement, gpus_for_estimate, place
from core.distributed import check_optimizer
from core.vram import strategy_for

TORCHRUN_MODULE = ["-m", "torch.distributed.run"]


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]          # set for the launched process (CUDA_VISIBLE_DEVICES)

    def shell(self) -> str:
        prefix = "".join(f"{k}={shlex.quote(v) if v else ''} " for k, v in self.env.items())
        return prefix + shlex.join(self.argv)


def is_distributed(cfg: RunConfig, placement: Placement) -> bool:
    return placement.procs != 1 or cfg.nodes.count > 1


def worker_args(config: str, *, workspace: str | None = None, resume: bool = False) -> list[str]:
    args = ["-m", "core"] + (["--workspace", workspace] if workspace else []) + ["train", "--config", config]
    return args + (["--resume"] if resume else [])


def torchrun_args(cfg: RunConfig, procs: int | str, node_rank: int = 0) -> list[str]:
    """Single node: --standalone (a free local port, so runs side by side never collide)."""
    if cfg.nodes.count == 1:
        return ["--standalone", "--nnodes", "1", "--nproc_per_node", str(procs)]
    n = cfg.nodes
    return ["--nnodes", str(n.count), "--node_rank", str(node_rank), "--master_addr", n.host.strip(),
            "--master_port", str(n.port), "--nproc_per_node", str(procs)]


def command(cfg: RunConfig, config: str, *, cuda_count: int, node_rank: int = 0, workspace: str | None = None,
            resume: bool = False, strict: bool = True, python: str = sys.executable,
            torchrun: list[str] | None = None) -> Launch:
    """The launch of one node. `torchrun` defaults to `python -m torch.distributed.run`;
    strict refuses GPU numbers this machine lacks (see core.devices.place)."""
    placement = place(cfg.gpus, cuda_count, nodes=cfg.nodes.count, strict=strict)
    env = {} if placement.visible is None else {"CUDA_VISIBLE_DEVICES": placement.visible}
    worker = worker_args(config, workspace=workspace, resume=resume)
    if not is_distributed(cfg, placement):
        return Launch([python, *worker], env)
    if placement.visible != "":                  # the workers see GPUs: FSDP for full/freeze
        check_optimizer(cfg, strategy_for(cfg.method, gpus_for_estimate(cfg.gpus, cfg.nodes.count, cuda_count)))
    runner = torchrun or [python, *TORCHRUN_MODULE]
    return Launch([*runner, *torchrun_args(cfg, placement.procs, node_rank), *worker], env)


def node_commands(cfg: RunConfig, config: str, cuda_count: int) -> list[str]:
    """What to type on each node, as shell lines (the Train tab preview)."""
    return [command(cfg, config, cuda_count=cuda_count, node_rank=rank, strict=False, python="python",
                    torchrun=["torchrun"]).shell() for rank in range(cfg.nodes.count)]


_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


LAUNCH_MARK = "--- launched "


def launch_marker(when: float) -> str:
    """The line the supervisor writes to train.log before each launch (a resume appends to the same log)."""
    return f"{LAUNCH_MARK}{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))} ---\n"


def root_cause(log: str) -> str | None:
    """torchrun's report of the rank that failed first in the latest launch, in one line (None when
    there is none)."""
    found = _ROOT_CAUSE.findall(log.rsplit(LAUNCH_MARK, 1)[-1])
    if not found:
        return None
    rank, code = int(found[-1][0]), int(found[-1][1])
    how = f"exited with code {code}"
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"the worker process of rank {rank} {how}"
