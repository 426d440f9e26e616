"""What this machine computes fast: a CUDA device, bf16 matmuls on the CPU, Liger's kernels.

torch runs bf16 on any AVX512 CPU, but only CPUs with native bf16 dot products (AVX512-BF16 or
AMX-BF16) run it faster than fp32, and torch does not say which: the CPU flags decide.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def device_kind() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=1)
def _proc_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first processor in /proc/cpuinfo (or of the text given)."""
    text = _proc_cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16)."""
    return any(flag in cpu_flags(cpuinfo) for flag in FAST_BF16_FLAGS)


def cuda_has_bf16() -> bool:
    """Native bf16 only (Ampere and later): torch's default also counts the slow emulation that
    T4 and V100 cards offer."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def liger_missing() -> str | None:
    """Why Liger's Triton kernels cannot run here, or None when they can."""
    if not torch.cuda.is_available():
        return "they run on CUDA GPUs only"
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def is_out_of_memory(e: BaseException) -> bool:
    """torch's own error, or the text of one raised from a CUDA kernel outside torch (bitsandbytes)."""
    return isinstance(e, torch.OutOfMemoryError) or "CUDA out of memory" in str(e) \
        or "CUDA error: out of memory" in str(e)
