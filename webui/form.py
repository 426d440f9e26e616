"""The run form, built from the RunConfig fields: adding an option to RunConfig adds it here.

Each component is made from the field's type, bounds, choices, label and hint; values go back
into a RunConfig through the same validation the YAML file and the CLI use.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field

import gradio as gr

from core.config import RunConfig, field_meta
from webui.i18n import Translator, field_help, field_label

DEFAULTS = RunConfig()

# The groups of the form, in the order a user fills them in. `datasets` is drawn by the Train tab.
GROUPS: dict[str, list[str]] = {
    "model": ["model", "method", "name", "trust_remote_code"],
    "lora": ["lora.rank", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.rslora", "lora.dora"],
    "quant": ["quant.quant_type", "quant.double_quant", "quant.upcast_unquantized"],
    "freeze": ["freeze.trainable_layers"],
    "training": ["train.epochs", "train.max_steps", "train.learning_rate", "train.scheduler", "train.warmup_ratio",
                 "train.batch_size", "train.grad_accum", "train.optimizer", "train.dtype", "train.seed",
                 "train.weight_decay", "train.max_grad_norm", "train.logging_steps", "train.eval_steps",
                 "train.save_steps"],
    "speed": ["train.gradient_checkpointing", "train.padding_free", "train.fused_loss", "train.liger_kernels",
              "data.packing"],
    "data": ["data.max_seq_len", "data.train_on", "data.eval_split"],
    "devices": ["gpus", "nodes.count", "nodes.host", "nodes.port"],
}

# Learning rates that suit each method; switching method swaps a default for the other default.
METHOD_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5, "freeze": 5e-5}


def field_type(dotted: str):
    cls = RunConfig
    parts = dotted.split(".")
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return typing.get_type_hints(cls)[parts[-1]]


def get_value(cfg: RunConfig, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Form:
    components: dict[str, gr.components.Component] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.components)

    @property
    def inputs(self) -> list:
        return list(self.components.values())

    def values(self, cfg: RunConfig) -> list:
        return [get_value(cfg, name) for name in self.names]

    def to_dict(self, values: list) -> dict:
        """Nested config dict from the components' values, in `names` order."""
        out: dict = {}
        for name, value in zip(self.names, values):
            target = out
            parts = name.split(".")
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = value
        return out


def make_component(dotted: str, value, lang: str, tr: Translator, model_choices: list | None = None,
                   gpu_choices: list[str] | None = None):
    meta = field_meta(dotted)
    tp = field_type(dotted)
    common = dict(label=field_label(dotted, lang), info=field_help(dotted, lang), value=value,
                  elem_id="field-" + dotted.replace(".", "-"))
    if dotted == "model":
        comp = gr.Dropdown(choices=model_choices or [value], allow_custom_value=True, **common)
    elif dotted == "gpus":
        comp = gr.Dropdown(choices=gpu_choices or [value], allow_custom_value=True, **common)
    elif meta.get("choices"):
        comp = gr.Dropdown(choices=list(meta["choices"]), **common)
    elif tp is bool:
        comp = gr.Checkbox(**common)
    elif tp in (int, float):
        # Bounds and whole numbers are checked by RunConfig, whose message names the field; gradio's own
        # check would reject the whole event with a generic toast, and precision=0 would round 2.5 to 2.
        comp = gr.Number(step=1 if tp is int else float_step(get_value(DEFAULTS, dotted)), **common)
    else:
        comp = gr.Textbox(max_lines=1, **common)
    return tr.add(comp, dotted, "field")


def float_step(default: float) -> float:
    """The spinner's step for a number field: a tenth of its default's order of magnitude (2e-4 moves
    by 1e-5, 3.0 by 0.1), not gradio's 1, which would jump a learning rate to 1."""
    return 10.0 ** (math.floor(math.log10(abs(default))) - 1) if default else 0.01


def build_group(form: Form, group: str, cfg: RunConfig, lang: str, tr: Translator, per_row: int = 3, **kw) -> None:
    """The group's fields in rows of `per_row`, switches after the other fields."""
    names = sorted(GROUPS[group], key=lambda n: field_type(n) is bool)
    for i in range(0, len(names), per_row):
        with gr.Row(equal_height=False):
            for dotted in names[i:i + per_row]:
                form.components[dotted] = make_component(dotted, get_value(cfg, dotted), lang, tr, **kw)


def all_fields() -> list[str]:
    return [name for names in GROUPS.values() for name in names]
