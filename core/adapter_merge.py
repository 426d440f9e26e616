"""Merge an adapter into its base model and export a full model folder that plain transformers loads.

The base is loaded in full precision (never 4-bit, even for QLoRA adapters) so the merge is exact;
the result is saved as safetensors shards with its tokenizer and chat template into a hidden temp
folder in exports/, then renamed to exports/<name>/.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from core import library, models, path_policy
from core.adapter_check import CONFIG, check_adapter
from core.chat import adapter_base
from core.encode import ensure_chat_template
from core.errors import ConfigError, ModelError, WorkbenchError
from core.workspace import atomic_write_json, exports_dir, read_json, shared_mode

Progress = Callable[[str, float, str], None]       # (stage, fraction 0..1, message)
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class MergeResult:
    path: str
    base_model: str
    adapter: str
    dtype: str
    shards: int
    size_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


SHARD_SIZE = re.compile(r"(\d+)[KMG]i?B", re.I)      # what transformers' convert_file_size_to_int reads


def check_request(adapter, name: str, dtype: str = "auto", max_shard_size: str | int = "5GB") -> tuple[Path, str]:
    """What merge refuses without loading anything: the adapter's folder and the export's name."""
    folder = library.adapter_dir(adapter)
    if not (folder / CONFIG).is_file():
        raise ModelError(f"'{folder}' is a full model already (no {CONFIG}); export it as a zip instead",
                         field="adapter")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}", field="dtype")
    size = SHARD_SIZE.fullmatch(str(max_shard_size))
    if not (isinstance(max_shard_size, int) and max_shard_size > 0) and not (size and int(size.group(1)) > 0):
        raise ConfigError(f"'{max_shard_size}' is not a size; write it like 2GB or 500MB", field="max_shard_size")
    path_policy.check(adapter_base(folder), "base_model")     # the base it loads, as typed paths are
    name = library.validate_name(name)
    if name.lower().endswith(".zip"):
        raise ConfigError("a merged model's name must not end in .zip, the name of an adapter's export; choose "
                          "another name", field="name")
    if (exports_dir() / name).exists():
        raise ConfigError(f"exports/{name} already exists; choose another name", field="name")
    return folder, name


def merge(adapter: str | os.PathLike, name: str, *, max_shard_size: str | int = "5GB", dtype: str = "auto",
          progress: Progress | None = None) -> MergeResult:
    """Merge `adapter` (library name, id or folder) into its base and write exports/<name>/.

    `dtype` "auto" saves in the base model's own dtype; the merge itself always runs in float32."""
    import torch
    from peft import PeftModel

    report = progress or (lambda stage, fraction, message: None)
    report("check", 0.0, "checking the adapter and its base model")
    folder, name = check_request(adapter, name, dtype, max_shard_size)
    target = exports_dir() / name
    base = adapter_base(folder)
    check_adapter(folder, base)
    resolved = models.resolve(base, field="base_model")
    config = models.load_config(resolved)
    if getattr(config, "quantization_config", None):
        raise ModelError(f"base model '{base}' is stored quantized; merge into its unquantized original",
                         field="base_model")
    out_dtype = _output_dtype(dtype, config)

    report("load_base", 0.05, f"loading {base} in float32")
    model = models.load_causal_lm(resolved, dtype=torch.float32)
    report("load_adapter", 0.35, "loading the adapter")
    model = PeftModel.from_pretrained(model, str(folder))
    report("merge", 0.45, "merging the adapter into the weights")
    try:
        model = model.merge_and_unload(safe_merge=True)
    except ValueError as e:             # safe_merge found NaN: the adapter's own weights are broken
        raise ModelError(f"the adapter cannot be merged: {str(e).splitlines()[0]}", field="adapter") from None
    report("save", 0.65, f"saving safetensors ({str(out_dtype).replace('torch.', '')})")
    exports_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=exports_dir()))
    try:
        _save(model.to(out_dtype), tmp, folder, resolved, max_shard_size)
        atomic_write_json(tmp / "workbench.json", {"source": "merged", "base_model": base, "adapter": str(folder),
                                                   "adapter_name": _library_name(folder),
                                                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        shared_mode(tmp)
        os.rename(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"cannot write exports/{name}: {e}", field="name") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shards = len(list(target.glob("*.safetensors")))
    report("done", 1.0, f"saved {target}")
    return MergeResult(path=str(target), base_model=base, adapter=str(folder),
                       dtype=str(out_dtype).replace("torch.", ""), shards=shards, size_bytes=library.folder_size(target))


def _library_name(folder: Path) -> str:
    """What the Library calls the adapter (a trained run's folder is just 'adapter')."""
    try:
        return library.get(folder).name
    except WorkbenchError:
        return folder.name


def _output_dtype(dtype: str, config):
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    own = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(own, str):
        own = getattr(torch, own, None)
    return own if isinstance(own, torch.dtype) and own.is_floating_point else torch.float32


def _save(model, out: Path, adapter_folder: Path, resolved, max_shard_size) -> None:
    """Weights, config without any quantization_config key, generation config, tokenizer and chat
    template (the adapter's own tokenizer when it carries one: that is what it was trained with)."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, max_shard_size=max_shard_size)
    source = models.ResolvedModel(str(adapter_folder), "local", str(adapter_folder)) \
        if models.has_tokenizer(adapter_folder) else resolved
    tokenizer = models.load_tokenizer(source)
    ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(out)
    config = read_json(out / "config.json")
    if isinstance(config, dict) and "quantization_config" in config:
        del config["quantization_config"]
        atomic_write_json(out / "config.json", config)
