"""The memory panel beside the run form: total GiB, the parts as a stacked bar, a verdict against
the chosen GPU, trainable parameters, and the cheapest changes that make the run fit."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from core import vram
from core.arch import load_arch
from core.config import RunConfig
from core.errors import WorkbenchError
from webui.charts import memory_figure
from webui.i18n import Translator, describe_error, t
from webui.messages_zh import translated

SLOTS = 4                 # suggestions shown at most
_archs: dict[str, object] = {}


def gpu_options() -> list[tuple[str, float]]:
    detected = [(f"{g.name} ({g.gib:.0f} GiB, this machine)", g.gib) for g in vram.detected_gpus()]
    return detected + [(g.name, g.gib) for g in vram.COMMON_GPUS]


def default_gpu() -> float:
    found = vram.detected_gpus()
    return found[0].gib if found else next(g.gib for g in vram.COMMON_GPUS if g.memory_gb == 24)


def arch_for(model: str):
    """Architecture numbers are read once per model (a hub id costs one download)."""
    if model not in _archs:
        _archs[model] = load_arch(model)
    return _archs[model]


@dataclass
class Panel:
    gpu: gr.Dropdown
    gpus: gr.Number
    summary: gr.Markdown
    params: gr.Markdown
    chart: gr.Plot
    advice_title: gr.Markdown
    advice: list
    apply: list
    overrides: gr.State

    @property
    def outputs(self) -> list:
        return [self.summary, self.params, self.chart, self.advice_title, *self.advice, *self.apply, self.overrides]


def build(tr: Translator, lang: str = "en") -> Panel:
    with tr.add(gr.Accordion(t("mem.title", lang), open=True, elem_id="memory-panel"), "mem.title"):
        with gr.Row():
            gpu = tr.add(gr.Dropdown(choices=gpu_options(), value=default_gpu(), label=t("mem.gpu", lang), scale=3,
                                     elem_id="mem-gpu"), "mem.gpu")
            gpus = tr.add(gr.Number(value=1, precision=0, label=t("mem.gpus", lang), scale=1,
                                    elem_id="mem-gpus"), "mem.gpus")
        summary = gr.Markdown(elem_id="mem-summary")
        params = gr.Markdown(elem_id="train-params")
        chart = gr.Plot(show_label=False, elem_id="mem-chart")
        advice_title = gr.Markdown()
        advice, apply = [], []
        for i in range(SLOTS):
            with gr.Row(equal_height=True):
                advice.append(gr.Markdown(visible=False, elem_id=f"mem-advice-{i}"))
                apply.append(tr.add(gr.Button(t("mem.apply", lang), size="sm", visible=False, scale=0, min_width=90,
                                              elem_id=f"mem-apply-{i}"), "mem.apply", "value"))
    return Panel(gpu, gpus, summary, params, chart, advice_title, advice, apply, gr.State([]))


def render(cfg: RunConfig | None, error: str | None, gpu_gib: float, gpus: int, lang: str) -> list:
    """Values for Panel.outputs."""
    hidden = [gr.update(visible=False)] * (2 * SLOTS)
    if cfg is None:
        return [t("mem.unknown", lang, error=error), "", None, ""] + hidden + [[]]
    try:
        arch = arch_for(cfg.model)
        est = vram.estimate(cfg, gpus=gpus, arch=arch)           # fewer than 1 GPU: a ConfigError, shown
        advice = vram.suggestions(cfg, gpu_gib, gpus=gpus, arch=arch)
    except WorkbenchError as e:
        return [t("mem.unknown", lang, error=describe_error(e, lang)), "", None, ""] + hidden + [[]]
    gpu_name = next((name for name, gib in gpu_options() if gib == gpu_gib), f"{gpu_gib:.0f} GiB")
    verdict = est.verdict(gpu_gib)
    color = {"fits": "#2e9e48", "tight": "#c27c0e", "does not fit": "#c9302c"}[verdict]
    shown = f"<b style='color:{color}'>{t(f'mem.{verdict}', lang)}</b>"
    summary = t("mem.total", lang, total=est.total_gib, gpu=gpu_name.split(':')[0], verdict=shown)
    summary += "".join(f"  \n<small class='mem-warning'>{html.escape(translated(n, lang))}</small>"
                       for n in est.warnings)
    share = 100 * est.trainable_params / max(est.total_params, 1)
    params = t("train.params_value", lang, trainable=est.trainable_params, total=est.total_params, share=share)
    rows, buttons = [], []
    for i in range(SLOTS):
        if i < len(advice):
            s = advice[i]
            rows.append(gr.update(visible=True, value=f"**{s.estimate.total_gib:.1f} GiB** · {translated(s.description, lang)}  \n"
                                                      f"`{' '.join(s.overrides)}`"))
            buttons.append(gr.update(visible=True))
        else:
            rows.append(gr.update(visible=False))
            buttons.append(gr.update(visible=False))
    title = "" if verdict != "does not fit" else (f"**{t('mem.suggestions', lang)}**" if advice
                                                  else t("mem.no_suggestion", lang))
    return [summary, params, memory_figure(est.parts, lang, capacity=gpu_gib), title] + rows + buttons + \
        [[s.overrides for s in advice]]

