"""Mix adapters of one base model into a new adapter with peft's add_weighted_adapter.

The result is a normal PEFT adapter folder, adapters/<name>/, with a workbench.json naming its
parents and weights, and it is listed like any other adapter.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

from core import library, models
from core.adapter_check import CONFIG, same_model
from core.adapter_merge import Progress
from core.models import TOKENIZER_FILES
from core.errors import ConfigError, ModelError
from core.workspace import atomic_write_json, read_json

COMBINATIONS = ("linear", "cat", "svd", "ties", "dare_ties")
NEEDS_DENSITY = ("ties", "dare_ties")
EQUAL_RANKS = ("linear", "ties", "dare_ties")
COMBINATION_HELP = {
    "linear": "weighted sum of the LoRA matrices; all adapters need the same rank; fast but approximate",
    "cat": "concatenates the LoRA matrices; exact; the new rank is the sum of the ranks",
    "svd": "weighted sum of the full updates, cut back to a rank by SVD; exact up to that rank",
    "ties": "TIES merging: keeps the largest `density` share of each update and resolves sign conflicts; "
            "same rank needed",
    "dare_ties": "DARE + TIES: drops updates at random (keeping `density`), rescales, resolves signs; "
                 "same rank needed",
}


def parse_weights(text: str, count: int) -> list[float]:
    """Weights typed as "0.7, 0.3" (commas or semicolons); empty: 1 for each of `count` adapters."""
    if not text.strip():
        return [1.0] * count
    weights = []
    for item in (x.strip() for x in text.replace(";", ",").split(",") if x.strip()):
        try:
            weights.append(float(item))
        except ValueError:
            raise ConfigError(f"'{item}' is not a number; give one weight per adapter, e.g. 0.7, 0.3",
                              field="weights") from None
    return weights


def mix(adapters: list[str], weights: list[float], name: str, *, combination: str = "linear",
        density: float | None = None, svd_rank: int | None = None,
        progress: Progress | None = None) -> library.AdapterInfo:
    """Mix library adapters (names, ids or folders) with `weights` into adapters/<name>/."""
    report = progress or (lambda stage, fraction, message: None)
    report("check", 0.0, "checking the adapters")
    combination, density = check_arguments(adapters, weights, combination, density, svd_rank)
    parents = [library.get(a) for a in adapters]
    configs = [_lora_config(p) for p in parents]
    base = _common_base(parents)
    _check_ranks(parents, configs, combination)
    name = library.check_name_free(name)

    library.adapters_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".mix-", dir=library.adapters_dir()))
    try:
        report("load", 0.1, f"loading {base} and {len(parents)} adapters")
        model = _load_all(base, parents)
        report("mix", 0.6, f"mixing ({combination})")
        try:
            model.add_weighted_adapter([f"a{i}" for i in range(len(parents))], list(map(float, weights)),
                                       "default", combination_type=combination, svd_rank=svd_rank,
                                       density=density)
        except (ValueError, TypeError, RuntimeError) as e:     # RuntimeError: e.g. an SVD rank the layers lack
            raise ConfigError(f"peft cannot mix these adapters: {str(e).splitlines()[0]}",
                              field="svd_rank" if svd_rank else "combination") from None
        _check_finite(model)
        report("save", 0.85, "saving the mixed adapter")
        staged = work / "staged"
        model.save_pretrained(str(staged), selected_adapters=["default"])
        _fix_config(staged / CONFIG, base)
        _copy_tokenizer(Path(parents[0].path), staged)
        meta = {"source": "mixed", "base_model": base, "method": "lora", "combination": combination,
                "density": density, "svd_rank": svd_rank, "weights": list(map(float, weights)),
                "parents": [{"id": p.id, "name": p.name, "weight": float(w)} for p, w in zip(parents, weights)],
                "datasets": list(dict.fromkeys(d for p in parents for d in p.datasets)),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        info = library.install(staged, name, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("done", 1.0, f"saved {info.path}")
    return info


def _check_finite(model) -> None:
    """Weights past what the adapter's dtype holds overflow to infinity: a mix saved so answers
    nothing in the chat and cannot be merged."""
    for name, tensor in model.state_dict().items():
        if ".default" in name and "lora_" in name and not tensor.isfinite().all():
            raise ConfigError("the mixed weights overflow (infinite or NaN values): use smaller weights",
                              field="weights")


def check_arguments(adapters, weights, combination, density, svd_rank):
    if not adapters:
        raise ConfigError("choose at least one adapter to mix", field="adapters")
    if len(set(map(str, adapters))) != len(adapters):
        raise ConfigError("an adapter is listed twice; give each adapter once with its weight", field="adapters")
    if len(weights) != len(adapters):
        raise ConfigError(f"{len(adapters)} adapters but {len(weights)} weights; give one weight per adapter",
                          field="weights")
    if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise ConfigError("weights must be finite numbers", field="weights")
    if combination not in COMBINATIONS:
        raise ConfigError(f"combination '{combination}' is not one of {', '.join(COMBINATIONS)}",
                          field="combination")
    if combination in NEEDS_DENSITY:
        if density is None or not 0 < density <= 1:
            raise ConfigError(f"'{combination}' needs a density between 0 (exclusive) and 1: the share of each "
                              f"update that is kept", field="density")
    else:
        density = None
    if svd_rank is not None and (combination != "svd" or svd_rank < 1):
        raise ConfigError("svd_rank is a positive rank, used only by the svd combination", field="svd_rank")
    return combination, density


def _lora_config(info: library.AdapterInfo) -> dict:
    config = read_json(Path(info.path) / CONFIG)
    if info.kind != "adapter" or not isinstance(config, dict):
        raise ModelError(f"'{info.name}' is a full model, not an adapter; only LoRA adapters can be mixed",
                         field="adapters")
    if config.get("use_dora"):
        raise ModelError(f"'{info.name}' is a DoRA adapter; peft mixes plain LoRA adapters only", field="adapters")
    return config


def _common_base(parents: list[library.AdapterInfo]) -> str:
    base = parents[0].base_model
    for p in parents[1:]:
        if not same_model(p.base_model, base):
            raise ModelError(f"adapters of different base models cannot be mixed: '{parents[0].name}' is for "
                             f"'{base}', '{p.name}' is for '{p.base_model}'", field="adapters")
    return base


def _check_ranks(parents, configs, combination: str) -> None:
    """peft needs equal ranks for linear, ties and dare_ties; say so before loading anything."""
    ranks = [max([c.get("r") or 0, *(c.get("rank_pattern") or {}).values()]) for c in configs]
    if combination in EQUAL_RANKS and len(set(ranks)) > 1:
        listing = ", ".join(f"{p.name}: r={r}" for p, r in zip(parents, ranks))
        raise ConfigError(f"'{combination}' mixing needs adapters of the same rank ({listing})",
                          field="combination", hint="use 'cat' (the new rank is the sum of the ranks) or 'svd' "
                                                     "(the new rank is svd_rank, or the largest rank)")


def _load_all(base: str, parents: list[library.AdapterInfo]):
    """The base in float32 with every parent loaded as a0, a1, ...; the mix becomes 'default', which
    peft saves at the top of the folder rather than in a subfolder."""
    import torch
    from peft import PeftModel

    model = models.load_causal_lm(models.resolve(base, field="base_model"), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, parents[0].path, adapter_name="a0")
    for i, parent in enumerate(parents[1:], start=1):
        model.load_adapter(parent.path, adapter_name=f"a{i}")
    return model


def _fix_config(path: Path, base: str) -> None:
    """peft gives the mix lora_alpha = r and folds every scale into the weights, so the mix must be
    scaled by exactly 1; it copies use_rslora from the first parent, which would scale it by sqrt(r)."""
    config = read_json(path)
    config.update(use_rslora=False, inference_mode=True)
    config.setdefault("base_model_name_or_path", base)
    atomic_write_json(path, config)


def _copy_tokenizer(parent: Path, out: Path) -> None:
    for path in parent.iterdir():
        if path.is_file() and (path.name in TOKENIZER_FILES or path.name in (
                "special_tokens_map.json", "merges.txt", "chat_template.jinja", "added_tokens.json")):
            shutil.copy2(path, out / path.name)
