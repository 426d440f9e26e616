"""The chat playground's model holder: one base model in memory for the whole app, adapters
added to it once and picked per reply. Picking another base releases the old one first."""
from __future__ import annotations

import gc
import hashlib
import threading
from pathlib import Path

import torch

from core.chat import ChatEngine, GenerationOptions
from core.errors import ModelError

GIB = 1024 ** 3


class ChatBusy(ModelError):
    """The GPU is taken by a training run and the chat model would not fit beside it."""


class ChatService:
    def __init__(self):
        self.engine: ChatEngine | None = None
        self._lock = threading.Lock()

    @property
    def base(self) -> str | None:
        return self.engine.base if self.engine else None

    def ensure_base(self, base: str, tokenizer_from: str | None = None) -> ChatEngine:
        with self._lock:
            if self.engine is not None and self.engine.base == base:
                return self.engine
            self.release()
            check_gpu_room(base)
            self.engine = ChatEngine(base, tokenizer_from=tokenizer_from)
            return self.engine

    def release(self) -> None:
        self.engine = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def adapter_name(self, engine: ChatEngine, path: str | Path | None) -> str | None:
        """Load the adapter into `engine` once and return the name it is used by: named after its
        folder, so that two chats asking for two adapters at once never share a name."""
        if path is None:
            return None
        name = "a" + hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]
        with self._lock:
            return engine.add_adapter(path, name=name)

    def stream(self, base: str, adapter_path, messages: list[dict], opts: GenerationOptions,
               stop: threading.Event | None = None, tokenizer_from: str | None = None):
        engine = self.ensure_base(base, tokenizer_from)
        name = self.adapter_name(engine, adapter_path)
        yield from engine.stream(messages, opts, stop, adapter=name)


def check_gpu_room(base: str) -> None:
    """A chat may share the GPU with a training run only when both fit, by the memory estimate."""
    if not torch.cuda.is_available():
        return
    from core import jobs
    active = [j for j in jobs.list_jobs() if j.state in jobs.ACTIVE and j.devices != "cpu"]
    if not active:
        return
    total = torch.cuda.mem_get_info()[1]
    training = sum(_estimate_gib(j.dir.config) for j in active)
    chat = chat_memory_gib(base)
    if training + chat > total / GIB:
        raise ChatBusy(f"the GPU is busy training ({training:.1f} GiB estimated) and this model needs about "
                       f"{chat:.1f} GiB more of the {total / GIB:.0f} GiB; the chat waits until the run ends",
                       field="model")


def _estimate_gib(config_file: Path) -> float:
    """A run's estimate; 0 for one that cannot be estimated (its model card gone, its config damaged)."""
    from core.config import RunConfig
    from core.errors import WorkbenchError
    from core.vram import estimate
    try:
        return estimate(RunConfig.load(config_file)).total_gib
    except (WorkbenchError, OSError):
        return 0.0


def chat_memory_gib(base: str) -> float:
    """Weights in bf16 plus a little for the KV cache and the CUDA context."""
    from core.vram import load_arch
    arch = load_arch(base)
    return arch.param_count() * 2 / GIB + 1.0
