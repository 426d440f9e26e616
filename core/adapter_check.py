"""Is this folder a PEFT adapter the workbench can use, and does it fit its base model?

Checked before anything is copied into the library: adapter_config.json readable and of a
supported type, weights in safetensors (never pickles), a named base model, and tensor shapes
that fit that base model's layers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core import models
from core.errors import ModelError

SUPPORTED_PEFT_TYPES = ("LORA",)
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
KEY_PREFIX = "base_model.model."


@dataclass
class CheckedAdapter:
    root: Path
    config: dict
    base_model: str
    shapes: dict[str, tuple[int, ...]]


def find_root(folder: Path) -> Path:
    """The folder holding adapter_config.json: the folder itself, or the one folder inside it that
    holds it (zips often wrap the adapter in a folder)."""
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        return folder
    found = sorted(p.parent for p in folder.glob(f"*/{CONFIG}")) + sorted(p.parent for p in folder.glob(f"*/*/{CONFIG}"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ModelError(f"'{folder}' holds {len(found)} adapters ({', '.join(p.name for p in found)}); import "
                         f"one at a time", field="source")
    raise ModelError(f"no {CONFIG} in '{folder}': this is not a PEFT adapter", field="source")


def read_config(root: Path) -> dict:
    """adapter_config.json as a dict, validated by peft itself."""
    from peft import PeftConfig

    path = root / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"no {CONFIG}: this is not a PEFT adapter", file=str(root)) from None
    except json.JSONDecodeError as e:
        raise ModelError(f"not valid JSON: {e.msg}", file=str(path), line=e.lineno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"cannot read the adapter config: {e}", file=str(path)) from None
    if not isinstance(config, dict):
        raise ModelError("the adapter config is not a JSON object", file=str(path))
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in SUPPORTED_PEFT_TYPES:
        raise ModelError(f"peft_type '{config.get('peft_type')}' is not supported; the library takes "
                         f"{', '.join(SUPPORTED_PEFT_TYPES)} adapters", file=str(path), field="peft_type")
    try:
        PeftConfig.from_peft_type(**config)
    except Exception as e:
        raise ModelError(f"peft cannot read this adapter config: {e}", file=str(path)) from None
    return config


def read_weight_shapes(root: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from the safetensors header; the weights themselves are not read."""
    from safetensors import safe_open

    path = root / WEIGHTS
    if not path.is_file():
        pickles = sorted(p.name for p in root.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelError(f"the weights are a pickle file ({', '.join(pickles)}); the workbench loads "
                             f"safetensors only, because loading a pickle can run any code it holds",
                             file=str(root), hint="convert it where you trust it: load it and save_pretrained() it "
                                                  "with peft, which writes adapter_model.safetensors")
        raise ModelError(f"no {WEIGHTS}: the adapter has no weights", file=str(root))
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:
        raise ModelError(f"not a readable safetensors file: {e}", file=str(path)) from None


def check_ranks(config: dict, shapes: dict[str, tuple[int, ...]], root: Path) -> None:
    """Each lora_A's rank is the config's r (or one of its rank_pattern's): peft would fail to load
    the weights otherwise, in the middle of a merge or a chat."""
    pattern = config.get("rank_pattern") if isinstance(config.get("rank_pattern"), dict) else {}
    allowed = {config.get("r"), *pattern.values()}
    for name, shape in shapes.items():
        if ".lora_A." in name and len(shape) == 2 and shape[0] not in allowed:
            raise ModelError(f"the weights hold rank {shape[0]} ({name}) but {CONFIG} says r={config.get('r')}",
                             file=str(root / CONFIG), field="r")


def same_model(a: str, b: str) -> bool:
    """Two names of one base model: equal, the same local folder, or a hub id and a local copy that
    share the model's name (org/Model and /models/Model)."""
    if a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower():
        return True
    if models.is_embedded(a) or models.is_embedded(b):
        name = models.EMBEDDED_MODEL.lower()
        return {Path(a.rstrip("/")).name.lower(), Path(b.rstrip("/")).name.lower()} <= {name, "embedded", "default"}
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def known_here(name: str) -> bool:
    """A base name that means something on this machine: a folder, the embedded model, or a hub id."""
    return bool(Path(name).expanduser().exists() or models.is_embedded(name) or models.HUB_ID.match(name))


def choose_base(named_in_config: str | None, given: str | None, *, file: str) -> str:
    """The base model: the user's, when it agrees with the adapter's own; else the adapter's."""
    named_in_config, given = (named_in_config or "").strip(), (given or "").strip()
    if given and named_in_config and known_here(named_in_config) and not same_model(given, named_in_config):
        raise ModelError(f"the adapter was trained on '{named_in_config}', not on '{given}'", file=file,
                         field="base_model")
    base = given or named_in_config
    if not base:
        raise ModelError("the adapter does not name its base model (base_model_name_or_path is empty); name it",
                         file=file, field="base_model")
    return base


def check_fits_base(shapes: dict[str, tuple[int, ...]], base: str) -> None:
    """Every LoRA tensor must fit the layer it adapts. The base model is built on the meta device
    from its config.json alone (no weights), so its layers give the exact sizes to compare with."""
    skeleton = _skeleton(base)
    modules = dict(skeleton.named_modules())
    params = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for key, shape in shapes.items():
        name = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        problem = _misfit(name, shape, modules, params)
        if problem:
            raise ModelError(f"the adapter does not fit base model '{base}': {problem}", field="base_model",
                             hint="it was trained on a different model or model size")


def _skeleton(base: str):
    import torch
    from transformers import AutoModelForCausalLM

    config = models.load_config(models.resolve(base, field="base_model"))
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise ModelError(f"cannot check the adapter against base model '{base}': transformers cannot build "
                         f"its architecture ({e})", field="base_model") from None


LORA_PARTS = {".lora_A.": "A", ".lora_B.": "B", ".lora_embedding_A": "A", ".lora_embedding_B": "B"}


def _misfit(name: str, shape: tuple, modules: dict, params: dict) -> str | None:
    """Why one adapter tensor does not fit the base model, or None when it fits."""
    for marker, part in LORA_PARTS.items():
        if marker in name:
            module_name = name.split(marker)[0]
            module = modules.get(module_name)
            if module is None:
                return f"it adapts layer '{module_name}', which the base model does not have"
            in_f, out_f = _in_out(module)
            if in_f is None:
                return None
            want, got = (in_f, shape[-1]) if part == "A" else (out_f, shape[0])
            if want != got:
                side = "input" if part == "A" else "output"
                return (f"tensor '{name}' has shape {list(shape)}, but layer '{module_name}' has {side} size "
                        f"{want}")
            return None
    if name in params and params[name] != tuple(shape):
        return f"tensor '{name}' has shape {list(shape)}, the base model's has {list(params[name])}"
    return None


def _in_out(module) -> tuple[int | None, int | None]:
    """(input size, output size) of a layer LoRA can adapt, as peft sizes lora_A and lora_B."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if isinstance(module, Conv1D):
        return tuple(module.weight.shape)
    return None, None


def check_adapter(root: Path, base: str | None = None) -> CheckedAdapter:
    """All the checks, in the order a user fixes them; raises ModelError naming the first problem."""
    root = Path(root)
    config = read_config(root)
    shapes = read_weight_shapes(root)
    check_ranks(config, shapes, root)
    base = choose_base(config.get("base_model_name_or_path"), base, file=str(root / CONFIG))
    check_fits_base(shapes, base)
    return CheckedAdapter(root=root, config=config, base_model=base, shapes=shapes)
