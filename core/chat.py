"""Inference: a base model loaded once, PEFT adapters loaded beside it and switched by name,
greedy or sampled generation, streamed token by token."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import TextIteratorStreamer

from core import models
from core.hardware import cuda_has_bf16
from core.encode import ensure_chat_template
from core.errors import ModelError, WorkbenchError
from core.workspace import read_json


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def kwargs(self) -> dict:
        kw = {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on: workbench.json, else adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    meta = read_json(adapter_dir / "workbench.json") or {}
    if meta.get("base_model"):
        return meta["base_model"]
    cfg = read_json(adapter_dir / "adapter_config.json")
    if not cfg:
        raise ModelError(f"'{adapter_dir}' is not an adapter folder (no adapter_config.json)", field="adapter")
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"adapter '{adapter_dir}' does not name its base model", field="adapter")
    return base


def content_text(content) -> str:
    """A message's text: a string, or a list of content parts ({"type": "text", "text": ...}, the
    form chat UIs send back), whose text parts are joined. Text-only chat templates need a string."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts
                   if not isinstance(p, dict) or p.get("type", "text") == "text")


def chat_dtype() -> torch.dtype:
    if torch.cuda.is_available():
        return torch.bfloat16 if cuda_has_bf16() else torch.float16
    return torch.float32


ACTIVE = object()    # "the adapter chosen with use()"


class ChatEngine:
    """One base model in memory; adapters are added once and switched by name without reloading."""

    def __init__(self, base: str, *, trust_remote_code: bool = False, tokenizer_from: str | Path | None = None):
        self.base = base
        resolved = models.resolve(base)
        self.tokenizer = models.load_tokenizer(
            models.ResolvedModel(str(tokenizer_from), "local", str(tokenizer_from)) if tokenizer_from else resolved,
            trust_remote_code)
        ensure_chat_template(self.tokenizer)
        self.model = models.load_causal_lm(resolved, dtype=chat_dtype(), trust_remote_code=trust_remote_code)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.model.eval()
        self.adapters: dict[str, str] = {}
        self.active: str | None = None
        self.lock = threading.Lock()

    @property
    def device(self):
        return next(self.model.parameters()).device

    def add_adapter(self, path: str | Path, name: str | None = None) -> str:
        from peft import PeftModel

        path = Path(path)
        if name is None:
            name = path.parent.name if path.name == "adapter" else path.name
        if name in self.adapters:
            return name
        if not (path / "adapter_config.json").is_file():
            raise ModelError(f"'{path}' is not an adapter folder (no adapter_config.json)", field="adapter")
        # peft changes the model in place before it reads the weights: refuse a bad adapter first.
        from core.adapter_check import check_fits_base, read_config, read_weight_shapes
        read_config(path)
        check_fits_base(read_weight_shapes(path), self.base)
        with self.lock:
            if not hasattr(self.model, "peft_config"):
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            else:
                self.model.load_adapter(str(path), adapter_name=name)
            self.model.eval()
            self.adapters[name] = str(path)
        self.use(name)
        return name

    def use(self, name: str | None) -> None:
        """Make an adapter (or None: the plain base model) the default for later replies."""
        self._check(name)
        self.active = name

    def _check(self, name: str | None) -> None:
        if name is not None and name not in self.adapters:
            raise ModelError(f"adapter '{name}' is not loaded", field="adapter")

    def _inputs(self, messages: list[dict]) -> dict:
        messages = [{**m, "content": content_text(m["content"])} for m in messages]
        enc = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        return {k: v.to(self.device) for k, v in enc.items()}

    def _generate(self, inputs: dict, opts: GenerationOptions, adapter, **extra):
        """Switch adapter and generate under one lock, so concurrent chats never mix adapters."""
        adapter = self.active if adapter is ACTIVE else adapter
        self._check(adapter)
        kwargs = dict(**inputs, **opts.kwargs(), pad_token_id=self.tokenizer.pad_token_id, **extra)
        with self.lock, torch.inference_mode():
            if adapter is None:
                if hasattr(self.model, "disable_adapter"):
                    with self.model.disable_adapter():
                        return self.model.generate(**kwargs)
                return self.model.generate(**kwargs)
            self.model.set_adapter(adapter)
            return self.model.generate(**kwargs)

    def reply(self, messages: list[dict], opts: GenerationOptions | None = None, adapter=ACTIVE) -> str:
        opts = opts or GenerationOptions()
        inputs = self._inputs(messages)
        out = self._generate(inputs, opts, adapter)
        return self.tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def stream(self, messages: list[dict], opts: GenerationOptions | None = None,
               stop: threading.Event | None = None, adapter=ACTIVE) -> Iterator[dict]:
        """Yield {"text", "ttft_s", "tokens_per_s", "tokens"} as tokens arrive; `stop` ends it early."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        opts = opts or GenerationOptions()
        inputs = self._inputs(messages)
        streamer = CountingStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = stop or threading.Event()
        abandoned = threading.Event()       # the reader went away (a closed page): end the generation too

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop.is_set() or abandoned.is_set()

        errors: list[BaseException] = []

        def work():
            try:
                self._generate(inputs, opts, adapter, streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([_Stop()]))
            except BaseException as e:   # handed to the reader below
                errors.append(e)
                streamer.end()

        start = time.perf_counter()
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text, first = "", None
        try:
            for piece in streamer:
                if not piece:
                    continue
                now = time.perf_counter() - start
                first = now if first is None else first
                text += piece
                n = streamer.generated
                rate = (n - 1) / (now - first) if n > 1 and now > first else 0.0
                yield {"text": text.strip(), "ttft_s": first, "tokens_per_s": rate, "tokens": n}
        finally:
            abandoned.set()
        thread.join()
        if errors:
            raise errors[0]


class CountingStreamer(TextIteratorStreamer):
    """Counts the generated tokens, which the streamed text pieces alone do not tell."""

    generated = 0

    def put(self, value):
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            self.generated += int(value.numel())
        super().put(value)


def named_adapter(name: str) -> Path:
    """A library name or id (as merge takes), or a run id: its adapter, or the newest checkpoint of a
    run that stopped or failed."""
    from core import chat_choices, jobs, library
    try:
        return library.adapter_dir(name)
    except WorkbenchError:
        pass
    try:
        target = chat_choices.of_run(jobs.get(name))
    except WorkbenchError:
        target = None
    if target is None:
        raise ModelError(f"'{name}' is not an adapter folder, a name in the library, or a run that left an "
                         "adapter or a checkpoint", field="adapter")
    return chat_choices.folder_of(target)


def one_shot(adapter: str | Path | None, prompt: str, *, base: str | None = None, max_new_tokens: int = 256,
             system: str | None = None) -> str:
    """`python -m core chat`: load, answer one prompt greedily, return the reply."""
    if adapter is not None:
        adapter = Path(adapter)
        if not adapter.is_dir():
            adapter = named_adapter(str(adapter))
        if (adapter / "config.json").is_file() and not (adapter / "adapter_config.json").is_file():
            base, adapter = str(adapter), None      # a full fine-tuned model folder
    if adapter is not None:
        engine = ChatEngine(base or adapter_base(adapter), tokenizer_from=adapter if models.has_tokenizer(adapter) else None)
        engine.add_adapter(adapter)
    else:
        if base is None:
            raise ModelError("name an adapter or a model", field="adapter")
        engine = ChatEngine(base)
    context = getattr(engine.model.config, "max_position_embeddings", None)
    if context and max_new_tokens > context:
        raise ModelError(f"must be at most {context}, the model's context length; got {max_new_tokens}",
                         field="max_new_tokens")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return engine.reply(messages, GenerationOptions(max_new_tokens=max_new_tokens))
