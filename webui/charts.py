"""Plotly figures from the metrics a run writes."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.runview import smooth
from webui.i18n import t

PANELS = (("loss", "chart.loss"), ("learning_rate", "chart.lr"), ("grad_norm", "chart.grad_norm"),
          ("tokens_per_s", "chart.tokens"), ("peak_mem_gib", "chart.memory"))


def run_figure(rows: list[dict], lang: str = "en") -> go.Figure:
    """Training loss (raw and smoothed) with eval loss, learning rate, grad norm, tokens/s, memory."""
    fig = make_subplots(rows=2, cols=3, subplot_titles=[t(k, lang) for _, k in PANELS],
                        specs=[[{"colspan": 2}, None, {}], [{}, {}, {}]], horizontal_spacing=0.08,
                        vertical_spacing=0.16)
    cells = [(1, 1), (1, 3), (2, 1), (2, 2), (2, 3)]
    train = [r for r in rows if "loss" in r]
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    fig.add_trace(go.Scatter(x=steps, y=losses, name=t("chart.train", lang), mode="lines",
                             line={"color": "rgba(99,110,250,0.35)"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=smooth(losses), name=t("chart.smoothed", lang), mode="lines",
                             line={"color": "rgb(99,110,250)"}), row=1, col=1)
    evals = [r for r in rows if "eval_loss" in r]
    if evals:
        fig.add_trace(go.Scatter(x=[r["step"] for r in evals], y=[r["eval_loss"] for r in evals],
                                 name=t("chart.eval", lang), mode="lines+markers",
                                 line={"color": "rgb(239,85,59)"}), row=1, col=1)
    for (key, _), (r, c) in zip(PANELS[1:], cells[1:]):
        pts = [x for x in train if x.get(key) is not None]
        fig.add_trace(go.Scatter(x=[x["step"] for x in pts], y=[x[key] for x in pts], mode="lines",
                                 showlegend=False, line={"color": "rgb(0,160,140)"}), row=r, col=c)
    fig.update_layout(height=520, margin={"l": 40, "r": 20, "t": 40, "b": 30},
                      legend={"orientation": "h", "y": 1.12, "x": 0}, template="plotly_white")
    return fig


def compare_figure(curves: dict[str, list[dict]], lang: str = "en") -> go.Figure:
    """Smoothed training loss of several runs on one chart."""
    fig = go.Figure()
    for name, rows in curves.items():
        train = [r for r in rows if "loss" in r]
        fig.add_trace(go.Scatter(x=[r["step"] for r in train], y=smooth([r["loss"] for r in train]),
                                 mode="lines", name=name))
    fig.update_layout(height=380, margin={"l": 40, "r": 20, "t": 30, "b": 30}, template="plotly_white",
                      xaxis_title=t("chart.step", lang), yaxis_title=t("chart.loss", lang),
                      legend={"orientation": "h", "y": -0.2})
    return fig


def memory_figure(parts: dict[str, float], lang: str = "en", capacity: float | None = None) -> go.Figure:
    """One stacked horizontal bar of the memory estimate's parts, with the GPU's capacity."""
    fig = go.Figure()
    for name, gib in parts.items():
        if gib <= 0:
            continue
        fig.add_trace(go.Bar(y=[""], x=[gib], name=f"{t('mem.part.' + name, lang)} {gib:.2f}", orientation="h",
                             hovertemplate=f"{t('mem.part.' + name, lang)}: {gib:.2f} GiB<extra></extra>"))
    if capacity:
        fig.add_vline(x=capacity, line={"color": "black", "dash": "dash"})
    fig.update_layout(barmode="stack", height=230, margin={"l": 10, "r": 10, "t": 10, "b": 30},
                      template="plotly_white", xaxis_title="GiB",
                      legend={"orientation": "h", "y": -0.45, "font": {"size": 11}})
    return fig
