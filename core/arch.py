"""A model's architecture numbers without its weights: what the memory estimate needs.

The numbers come from a config.json (a model folder, a bare file, or the hub, fetched alone) or
from the architecture cards shipped in presets/models/, so the estimate also works offline.
Reading JSON runs no model code, so `trust_remote_code` is never needed to read a config.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core import path_policy
from core.errors import ModelError

CARDS_DIR = Path(__file__).resolve().parent.parent / "presets" / "models"
QK_NORM_TYPES = {"qwen3", "gemma3", "gemma3_text", "olmo2"}
GEMMA_TYPES = {"gemma", "gemma2", "gemma3", "gemma3_text"}
BIASED_QKV_TYPES = {"qwen2"}            # modelling code always gives q, k and v a bias
# Every real config names these; hub configs may leave out heads and vocabulary where they equal the
# defaults (Gemma 3's text_config), so only these three missing make the estimate doubtful.
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers")
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class Vision:
    """A vision tower beside the language model (Gemma 3 4B and up): frozen weights that never
    run on text data, but whose linear layers get adapters under all-linear."""
    hidden_size: int
    intermediate_size: int
    num_layers: int
    patch_size: int
    image_size: int
    channels: int = 3

    def linears(self) -> list[tuple[str, int, int, int]]:
        h, i, n = self.hidden_size, self.intermediate_size, self.num_layers
        return [(name, h, h, n) for name in ("q_proj", "k_proj", "v_proj", "out_proj")] + \
            [("fc1", h, i, n), ("fc2", i, h, n)]

    def params(self, text_hidden: int) -> int:
        h = self.hidden_size
        linear = sum(a * b * n + b * n for _, a, b, n in self.linears())      # weights and biases
        norms = 2 * 2 * h * self.num_layers + 2 * h                           # layer norms (weight, bias)
        patches = (self.image_size // self.patch_size) ** 2
        embed = self.channels * self.patch_size ** 2 * h + h + patches * h
        projector = h * text_hidden + h
        return linear + norms + embed + projector


@dataclass(frozen=True)
class Arch:
    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool
    qkv_bias: bool = False
    qk_norm: bool = False
    gemma_norms: bool = False           # four norms per layer, computed in fp32 (Gemma)
    fused_projections: bool = False     # qkv_proj and gate_up_proj (Phi-3)
    sliding_window: int | None = None
    sliding_layers: int = 0             # layers that attend within the window
    final_logit_softcapping: float | None = None
    vision: Vision | None = None
    hub_id: str = ""
    source: str = ""
    defaulted: tuple[str, ...] = ()     # size keys the config left out, taken from transformers' defaults

    # ---- shapes -------------------------------------------------------------------------------

    def layer_linears(self) -> list[tuple[str, int, int]]:
        """(module name, in features, out features) of one decoder layer's linear layers."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.fused_projections:
            return [("qkv_proj", h, q + 2 * kv), ("o_proj", q, h), ("gate_up_proj", h, 2 * i), ("down_proj", i, h)]
        return [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h),
                ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]

    def layer_linear_params(self) -> int:
        return sum(a * b for _, a, b in self.layer_linears())

    def layer_small_tensors(self) -> list[int]:
        """Sizes of one layer's biases and norm weights: everything 4-bit quantization leaves alone."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        norms = [self.hidden_size] * (4 if self.gemma_norms else 2) + ([self.head_dim] * 2 if self.qk_norm else [])
        return norms + ([q, kv, kv] if self.qkv_bias else [])

    def layer_other_params(self) -> int:
        return sum(self.layer_small_tensors())

    def layer_params(self) -> int:
        return self.layer_linear_params() + self.layer_other_params()

    def embed_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def head_params(self) -> int:
        """Weights of the output head that are not the embedding's (0 when tied)."""
        return 0 if self.tie_embeddings else self.vocab_size * self.hidden_size

    def vision_params(self) -> int:
        return self.vision.params(self.hidden_size) if self.vision else 0

    def total_params(self) -> int:
        return (self.embed_params() + self.head_params() + self.num_layers * self.layer_params()
                + self.hidden_size + self.vision_params())

    def module_names(self) -> set[str]:
        names = {name for name, _, _ in self.layer_linears()} | {"lm_head", "embed_tokens"}
        if self.vision:
            names |= {name for name, _, _, _ in self.vision.linears()}
        return names


# ---- reading config.json ------------------------------------------------------------------------

def from_config(config: dict, *, name: str = "", source: str = "") -> Arch:
    """Arch from the numbers of a config.json (a multimodal config's text_config is used)."""
    if not isinstance(config, dict):
        raise ModelError(f"{source or name}: a config.json must hold a JSON object", file=source or None)
    raw_text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    defaulted = tuple(k for k in SHAPE_KEYS if k not in raw_text)
    config = _with_defaults(config)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    model_type = str(config.get("model_type") or text.get("model_type") or "")
    if any(_positive(text.get(k)) for k in MOE_KEYS):
        raise ModelError(f"{name or source}: mixture-of-experts models are not covered by the memory estimate",
                         field="model")
    try:
        h = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        layer_types = text.get("layer_types") or []
        window = text.get("sliding_window") if text.get("use_sliding_window", True) else None
        arch = Arch(
            name=name or text.get("_name_or_path") or source or "model",
            model_type=model_type,
            hidden_size=h,
            intermediate_size=int(text["intermediate_size"]),
            num_layers=int(text["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or h // heads),
            vocab_size=int(text["vocab_size"]),
            tie_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings",
                                                                              model_type in GEMMA_TYPES))),
            qkv_bias=model_type in BIASED_QKV_TYPES or bool(text.get("attention_bias", False)),
            qk_norm=model_type in QK_NORM_TYPES,
            gemma_norms=model_type in GEMMA_TYPES - {"gemma"},
            fused_projections=model_type in ("phi3",),
            sliding_window=int(window) if window else None,
            sliding_layers=_sliding_layers(text, layer_types, window),
            final_logit_softcapping=text.get("final_logit_softcapping"),
            vision=_vision(config.get("vision_config")) if text is not config else None,
            hub_id=str(config.get("hub_id") or ""),
            source=source,
            defaulted=defaulted,
        )
    except (KeyError, TypeError, ValueError) as e:
        missing = f"no '{e.args[0]}'" if isinstance(e, KeyError) else f"a bad value ({e})"
        raise ModelError(f"{source or name}: config has {missing}; the estimate needs hidden_size, "
                         f"intermediate_size, num_hidden_layers, num_attention_heads and vocab_size",
                         file=source or None) from None
    return arch


def _with_defaults(config: dict) -> dict:
    """The config with the defaults of its transformers config class filled in: hub configs leave
    out what equals the default (Gemma 3's text_config names neither its heads nor its vocabulary).
    Unknown model types (remote code) keep their raw numbers."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        return config
    try:
        filled = CONFIG_MAPPING[model_type](**config).to_dict()
    except Exception:                           # an odd value the class refuses: the raw numbers still count
        return config
    return {**filled, "hub_id": config.get("hub_id", "")}


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def _sliding_layers(text: dict, layer_types: list, window) -> int:
    if not window:
        return 0
    if layer_types:
        return sum(1 for t in layer_types if t == "sliding_attention")
    pattern = text.get("sliding_window_pattern")
    n = int(text["num_hidden_layers"])
    if pattern:                       # Gemma 3: every pattern-th layer is global
        return n - n // int(pattern)
    return n


def _vision(cfg) -> Vision | None:
    if not isinstance(cfg, dict) or "hidden_size" not in cfg:
        return None
    return Vision(hidden_size=int(cfg["hidden_size"]), intermediate_size=int(cfg["intermediate_size"]),
                  num_layers=int(cfg["num_hidden_layers"]), patch_size=int(cfg.get("patch_size", 14)),
                  image_size=int(cfg.get("image_size", 896)), channels=int(cfg.get("num_channels", 3)))


def read_config_file(path: Path, name: str = "") -> Arch:
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"'{path}' does not exist", field="model", file=str(path)) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read '{path}' as JSON ({e})", field="model", file=str(path)) from None
    return from_config(config, name=name or Path(path).parent.name, source=str(path))


# ---- shipped cards -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Card:
    name: str
    hub_id: str
    family: str
    published_params: float           # billions, as the model card gives them
    config: dict
    path: Path

    def arch(self) -> Arch:
        return from_config({**self.config, "hub_id": self.hub_id}, name=self.name, source=str(self.path))


@lru_cache(maxsize=1)
def _cards() -> tuple[Card, ...]:
    cards = []
    for path in sorted(CARDS_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        cards.append(Card(name=data["name"], hub_id=data["hub_id"], family=data["family"],
                          published_params=float(data["published_params_b"]), config=data["config"], path=path))
    return tuple(cards)


def list_cards() -> list[dict]:
    """The shipped architecture cards, for the model dropdown: name, hub id, family, size."""
    return [{"name": c.name, "hub_id": c.hub_id, "family": c.family, "params_b": c.published_params}
            for c in _cards()]


def find_card(name: str) -> Card | None:
    """A card by its name, its hub id, or the last part of a hub id (case does not matter).
    An instruct, chat or "-it" variant has the numbers of its base model."""
    wanted = _card_keys(name.strip())
    for card in _cards():
        if wanted & (_card_keys(card.name) | _card_keys(card.hub_id)):
            return card
    return None


def _card_keys(name: str) -> set[str]:
    base = name.lower().rsplit("/", 1)[-1]
    keys = {name.lower(), base}
    for suffix in ("-instruct", "-chat", "-it", "-pt", "-base"):
        if base.endswith(suffix):
            keys.add(base[: -len(suffix)])
    return keys


# ---- resolving what the user typed -------------------------------------------------------------

def load_arch(model: str, trust_remote_code: bool = False) -> Arch:
    """Architecture numbers of `model`: a model folder, a bare config.json, the embedded default,
    a shipped card, or a hub id (only its config.json is fetched; offline, a matching card).

    `trust_remote_code` is accepted for symmetry with loading: reading numbers runs no code."""
    from core import models

    name = (model or "").strip()
    if not name:
        raise ModelError("no model given", field="model")
    path = Path(os.path.expanduser(name))
    path_policy.check(name, "model")
    if path.is_file() and path.suffix.lower() == ".json":
        return read_config_file(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"folder '{name}' has no config.json", field="model")
        return read_config_file(path / "config.json", name=path.name)
    if path.suffix.lower() == ".gguf":
        return read_config_file(Path(models.resolve(name).path) / "config.json", name=path.stem)
    if models.is_embedded(name):
        return _embedded_arch()
    if models.HUB_ID.match(name):
        return _hub_arch(name)
    card = find_card(name)
    if card:
        return card.arch()
    raise ModelError(f"model '{name}' not found: not a model folder, not a config.json, not a shipped card "
                     f"({', '.join(c.name for c in _cards()[:4])}, ...), and not a hub id of the form owner/name",
                     field="model")


def _embedded_arch() -> Arch:
    from core.config import EMBEDDED_MODEL
    from core.workspace import models_dir

    converted = models_dir() / EMBEDDED_MODEL / "config.json"
    if converted.is_file():
        return read_config_file(converted, name=EMBEDDED_MODEL)
    return find_card(EMBEDDED_MODEL).arch()


def _hub_arch(repo: str) -> Arch:
    """config.json alone from the hub (or its local cache); a shipped card when that fails."""
    try:
        from huggingface_hub import constants, hf_hub_download

        from core.models import hub_reachable

        try:
            path = hf_hub_download(repo, "config.json", local_files_only=True)
        except Exception:
            if constants.is_offline_mode() or not hub_reachable(constants.ENDPOINT):
                raise ConnectionError("offline") from None
            path = hf_hub_download(repo, "config.json")
    except Exception as e:                  # offline, unreachable, gated, missing: all end the same way
        card = find_card(repo)
        if card:
            return card.arch()
        raise ModelError(f"cannot read the configuration of '{repo}': {_reason(e)}, and no shipped card "
                         f"matches it; pass a model folder or a path to its config.json", field="model") from None
    return read_config_file(Path(path), name=repo)


def _reason(err: Exception) -> str:
    kind = type(err).__name__
    if "Offline" in kind or "LocalEntryNotFound" in kind or isinstance(err, ConnectionError):
        return "the hub cannot be reached and the file is not cached"
    if "RepositoryNotFound" in kind:
        return "no such repository on the hub (or it is private)"
    if "Gated" in kind:
        return "the repository is gated (log in to the hub first)"
    return f"the hub cannot be reached ({kind})"
