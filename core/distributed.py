"""The worker's side of a run on several processes (started by torchrun).

torchrun sets RANK and WORLD_SIZE; the transformers Trainer (through accelerate) does the
rest: the process group, DDP or FSDP wrapping, sharded data loading. This module only holds
what the workbench adds: the rank that reports, the strategy's Trainer options, a stop that
every rank agrees on, and the full weights gathered for saving.
"""
from __future__ import annotations

import os

from core.config import RunConfig
from core.errors import ConfigError

EIGHT_BIT_OPTIMIZERS = ("adamw8bit", "paged_adamw8bit")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """The process that writes status.json, metrics.jsonl, the log and the adapter."""
    return rank() == 0


def strategy(cfg: RunConfig, device: str) -> str:
    """single, ddp or fsdp. FSDP needs CUDA: on the CPU every method runs under DDP."""
    from core.vram import strategy_for

    chosen = strategy_for(cfg.method, world_size())
    return "ddp" if chosen == "fsdp" and device != "cuda" else chosen


def check_optimizer(cfg: RunConfig, chosen: str) -> None:
    """bitsandbytes' 8-bit optimizers step plain tensors; FSDP's sharded parameters are DTensors, and
    the first optimizer step would fail on them."""
    if chosen == "fsdp" and cfg.train.optimizer in EIGHT_BIT_OPTIMIZERS:
        raise ConfigError(f"{cfg.train.optimizer} does not work with FSDP, which {cfg.method} tuning on several "
                          f"GPUs uses: choose adamw, or LoRA/QLoRA", field="train.optimizer")


def bind_device() -> None:
    """Put this rank on its own GPU before anything touches CUDA; otherwise every rank opens a
    context on GPU 0 (accelerate binds the device only later, when the Trainer is made)."""
    import torch

    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def trainer_options(cfg: RunConfig, device: str) -> dict:
    """Extra TrainingArguments for the strategy (transformers 5: `fsdp=True` + `fsdp_config`)."""
    chosen = strategy(cfg, device)
    if chosen == "fsdp":
        return {"fsdp": True, "fsdp_config": {
            "version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT", "activation_checkpointing": cfg.train.gradient_checkpointing}}
    if chosen == "ddp":
        # Every trainable weight takes part in each step, so DDP need not search for unused ones.
        return {"ddp_find_unused_parameters": False, "ddp_backend": "nccl" if device == "cuda" else "gloo"}
    return {}


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a stop must end all ranks at the same step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def full_state_dict(trainer) -> dict | None:
    """Under FSDP every rank must take part in gathering the weights; otherwise None (the model
    saves its own)."""
    if getattr(trainer, "is_fsdp_enabled", False):
        return trainer.accelerator.get_state_dict(trainer.model)
    return None
