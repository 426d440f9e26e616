"""Data tab: upload or fetch data, see the detected format, the validation report, the samples as
the model will see them (trained tokens marked) and their token lengths; save to the library."""
from __future__ import annotations

from html import escape
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from core import dataset_library as dl
from core import models
from core.config import EMBEDDED_MODEL, DataOptions, field_meta
from core.data import FORMAT_NAMES, check_files
from core.errors import WorkbenchError
from core.formats import FORMATS, mapping_fields
from core.llamafactory import import_llamafactory
from core.preview import length_stats, preview, preview_html
from webui.i18n import Translator, failed, plain, t
from webui.messages_zh import translated
from webui.train_tab import model_choices

SLOTS = 6               # column-mapping dropdowns; each format uses at most this many column fields
# The field names core raises with when saving, to the labels shown.
SAVE_FIELDS = {"name": "data.name", "files": "data.upload", "names": "data.upload", "format": "data.format",
               "columns": "data.mapping", "model": "data.model"}
_tokenizers: dict[str, object] = {}


def tokenizer_for(model: str):
    """Tokenizers are cached per model: previews redraw on every change."""
    if model not in _tokenizers:
        _tokenizers[model] = models.load_tokenizer(models.resolve(model))
    return _tokenizers[model]


def column_fields(fmt: str) -> list[dict]:
    return [f for f in mapping_fields(fmt) if f["kind"] == "column"][:SLOTS] if fmt in FORMATS else []


def mapping_from(fmt: str, values: list) -> dict | None:
    mapping = {f["field"]: v for f, v in zip(column_fields(fmt), values) if v and v != f["default"]}
    return mapping or None


def library_table(lang: str) -> pd.DataFrame:
    rows = [[d.name, d.format or "", d.rows_usable, d.tokens or "", d.created.replace("T", " ")[:16],
             ", ".join(d.files)] for d in dl.list_datasets()]
    return pd.DataFrame(rows, columns=t("data.lib_cols", lang).split("|"))


KEEP = object()


def listing(lang: str, pick=KEEP) -> tuple:
    """The saved datasets' table and picker; `pick` sets the picker (None: nothing picked), and a
    pick no longer saved is dropped."""
    names = [d.name for d in dl.list_datasets()]
    if pick is KEEP:
        return library_table(lang), gr.update(choices=names)
    return library_table(lang), gr.update(choices=names, value=pick if pick in names else None)


def histogram(stats, lang: str) -> go.Figure:
    fig = go.Figure(go.Histogram(x=stats.lengths, nbinsx=40, marker={"color": "rgb(99,110,250)"},
                                 name=t("data.tokens", lang)))
    fig.add_vline(x=stats.max_len, line={"color": "#d9534f", "dash": "dash"},
                  annotation_text=t("data.max_len_line", lang, n=stats.max_len), annotation_position="top")
    fig.update_layout(height=280, margin={"l": 40, "r": 20, "t": 30, "b": 40}, template="plotly_white",
                      xaxis_title=t("data.tokens", lang), yaxis_title=t("data.rows", lang), showlegend=False)
    return fig


def build(tr: Translator, lang_state: gr.State, lang: str = "en"):
    c = SimpleNamespace()
    _layout_sources(c, tr, lang)
    _layout_options(c, tr, lang)
    _layout_report(c, tr, lang)
    _layout_library(c, tr, lang)
    inputs = [c.upload, c.fmt, c.model, c.max_len, c.train_on, c.n_samples, lang_state, *c.slots]
    outputs = [c.detected, c.problems, c.sample_view, c.hist, c.lengths, *c.slots]
    c.upload.change(check, inputs, outputs)
    for comp in (c.fmt, c.model, c.max_len, c.train_on, c.n_samples, *c.slots):
        comp.input(check, inputs, outputs)
    c.upload.upload(on_upload_name, c.upload, c.name)
    c.model.focus(lambda: gr.update(choices=model_choices()), None, c.model, show_progress="hidden")
    lib_outputs = [c.message, c.lib, c.lib_pick]
    c.save.click(do_save, [c.upload, c.name, c.fmt, c.model, lang_state, *c.slots], lib_outputs)
    c.rename.click(do_rename, [c.lib_pick, c.new_name, lang_state], lib_outputs)
    c.delete.click(do_delete, [c.lib_pick, c.confirm, lang_state], lib_outputs + [c.confirm])
    c.hub_go.click(do_hub, [c.hub_id, c.hub_subset, c.hub_split, lang_state], lib_outputs)
    c.lf_go.click(do_lf, [c.lf_folder, lang_state], lib_outputs)
    return c.lib_pick, c.use, c.lib, c.message


def _layout_sources(c, tr: Translator, lang: str) -> None:
    """Upload on the left; the Hub and a LLaMA-Factory folder, folded, on the right."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            c.upload = tr.add(gr.File(file_count="multiple", label=t("data.upload", lang), elem_id="data-upload",
                                      file_types=[".json", ".jsonl", ".csv", ".parquet", ".txt"], height=140),
                              "data.upload")
        with gr.Column(scale=2):
            with tr.add(gr.Accordion(t("data.hub", lang), open=False), "data.hub"):
                c.hub_id = tr.add(gr.Textbox(label=t("data.hub_id", lang), max_lines=1), "data.hub_id")
                with gr.Row():
                    c.hub_subset = tr.add(gr.Textbox(label=t("data.hub_subset", lang), max_lines=1),
                                          "data.hub_subset")
                    c.hub_split = tr.add(gr.Textbox(value="train", label=t("data.hub_split", lang), max_lines=1),
                                         "data.hub_split")
                c.hub_go = tr.add(gr.Button(t("data.hub_go", lang)), "data.hub_go", "value")
            with tr.add(gr.Accordion(t("data.lf", lang), open=False), "data.lf"):
                c.lf_folder = tr.add(gr.Textbox(label=t("data.lf_folder", lang), max_lines=1), "data.lf_folder")
                c.lf_go = tr.add(gr.Button(t("data.lf_go", lang)), "data.lf_go", "value")


def _layout_options(c, tr: Translator, lang: str) -> None:
    """How the files are read and shown: format, tokenizer, length, what is trained, column mapping."""
    with gr.Row():
        c.fmt = tr.add(gr.Dropdown(choices=["auto", *FORMATS], value="auto", label=t("data.format", lang),
                                   info=t("data.format_hint", lang), elem_id="data-format"), "data.format",
                       "labelinfo")
        c.model = tr.add(gr.Dropdown(choices=model_choices(), value=EMBEDDED_MODEL, allow_custom_value=True,
                                     label=t("data.model", lang), info=t("data.model_hint", lang),
                                     elem_id="data-model"), "data.model", "labelinfo")
        length, train_on = field_meta("data.max_seq_len"), field_meta("data.train_on")
        defaults = DataOptions()
        c.max_len = tr.add(gr.Number(value=defaults.max_seq_len, minimum=length["min"], maximum=length["max"],
                                     precision=0, label=t("data.max_len", lang)), "data.max_len")
        c.train_on = tr.add(gr.Dropdown(choices=train_on["choices"], value=defaults.train_on,
                                        label=t("data.train_on", lang)), "data.train_on")
        c.n_samples = tr.add(gr.Slider(1, 20, value=3, step=1, label=t("data.n_samples", lang)), "data.n_samples")
    with tr.add(gr.Accordion(t("data.mapping", lang), open=False, elem_id="data-mapping"), "data.mapping"):
        with gr.Row():
            c.slots = [gr.Dropdown(choices=[], allow_custom_value=True, visible=False, elem_id=f"map-{i}")
                       for i in range(SLOTS)]


def _layout_report(c, tr: Translator, lang: str) -> None:
    c.detected = gr.Markdown(elem_id="data-detected")
    c.problems = tr.add(gr.Dataframe(value=problem_frame([], lang), interactive=False,
                                     label=t("data.problems", lang), elem_id="data-problems", wrap=True,
                                     max_height=260, visible=False), "data.problems")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            c.sample_view = gr.HTML(elem_id="data-preview")
        with gr.Column(scale=2):
            c.hist = gr.Plot(show_label=False, elem_id="data-hist")
            c.lengths = gr.Markdown(elem_id="data-lengths")
    with gr.Row():
        c.name = tr.add(gr.Textbox(label=t("data.name", lang), max_lines=1, scale=3, elem_id="data-name"),
                        "data.name")
        c.save = tr.add(gr.Button(t("data.save", lang), variant="primary", scale=1, elem_id="data-save"),
                        "data.save", "value")
    c.message = gr.Markdown(elem_id="data-message")


def _layout_library(c, tr: Translator, lang: str) -> None:
    with tr.add(gr.Accordion(t("data.library", lang), open=True), "data.library"):
        c.lib = gr.Dataframe(value=library_table(lang), interactive=False, elem_id="data-library", show_label=False)
        with gr.Row():
            c.lib_pick = tr.add(gr.Dropdown(choices=[d.name for d in dl.list_datasets()], value=None,
                                            label=t("data.pick", lang), scale=2, elem_id="data-pick"), "data.pick")
            c.new_name = tr.add(gr.Textbox(label=t("data.new_name", lang), max_lines=1, scale=2,
                                           elem_id="data-new-name"), "data.new_name")
            c.rename = tr.add(gr.Button(t("data.rename", lang), scale=1, elem_id="data-rename"), "data.rename",
                              "value")
            c.confirm = tr.add(gr.Checkbox(label=t("lib.confirm", lang), scale=1, elem_id="data-confirm"),
                               "lib.confirm")
            c.delete = tr.add(gr.Button(t("data.delete", lang), variant="stop", scale=1, elem_id="data-delete"),
                              "data.delete", "value")
            c.use = tr.add(gr.Button(t("data.use", lang), scale=1, elem_id="data-use"), "data.use", "value")


def check(files, fmt_value, model_name, n_max, on, n, lang, *slot_values):
    if not files:
        return ["", gr.update(value=problem_frame([], lang), visible=False), "", None, ""] + \
            [gr.update(visible=False)] * SLOTS
    paths = [Path(f) for f in files]
    checks = check_files(paths, fmt_value, mapping_from(fmt_value, list(slot_values)),
                         names=[p.name for p in paths])
    return _show(checks, model_name, int(n_max or 1024), on, int(n), lang, fmt_value, list(slot_values))


def on_upload_name(files):
    """The first file's name, made into one the library accepts."""
    if not files:
        return gr.skip()
    try:
        return dl.clean_dataset_name(Path(files[0]).stem)
    except WorkbenchError:
        return ""


def do_save(files, new, fmt_value, model_name, lang, *slot_values):
    if not files:
        return t("data.nothing", lang), gr.skip(), gr.skip()
    try:
        tok = tokenizer_for(model_name)
        info = dl.save_dataset(new, files, names=[Path(f).name for f in files], format=fmt_value,
                               columns=mapping_from(fmt_value, list(slot_values)), tokenizer=tok)
    except WorkbenchError as e:
        return failed(e, lang, SAVE_FIELDS), gr.skip(), gr.skip()
    return (t("data.saved", lang, name=info.name, rows=info.rows_usable), *listing(lang, info.name))


def do_rename(pick, text, lang):
    if not pick:
        return (t("data.pick_first", lang), *listing(lang))
    try:
        info = dl.rename_dataset(pick, text)
    except WorkbenchError as e:
        return (failed(e, lang, {"name": "data.new_name"}), *listing(lang))
    return (t("data.renamed", lang, name=info.name), *listing(lang, info.name))


def do_delete(pick, sure, lang):
    """The box is cleared and nothing is picked afterwards: a second click deletes nothing else."""
    if not pick or not sure:
        return (t("lib.confirm_first" if pick else "data.pick_first", lang), *listing(lang), gr.skip())
    try:
        dl.delete_dataset(pick)
    except WorkbenchError as e:
        return (failed(e, lang, {"name": "data.pick"}), *listing(lang), False)
    return (t("data.deleted", lang, name=pick), *listing(lang, None), False)


def do_hub(repo, subset, split, lang):
    repo = repo.strip()
    try:
        if not repo:
            raise WorkbenchError("enter the id of a Hugging Face Hub dataset, e.g. tatsu-lab/alpaca", field="hub")
        info = dl.import_hub_dataset(dl.clean_dataset_name(repo.replace("/", "-")), repo,
                                     subset.strip() or None, split.strip() or "train")
    except WorkbenchError as e:
        return failed(e, lang, {"hub": "data.hub_id"}), gr.skip(), gr.skip()
    return (t("data.saved", lang, name=info.name, rows=info.rows_usable), *listing(lang, info.name))


def do_lf(folder, lang):
    if not (folder or "").strip():
        return t("data.lf_none", lang), gr.skip(), gr.skip()
    try:
        results = import_llamafactory(folder.strip())
    except WorkbenchError as e:
        return failed(e, lang), gr.skip(), gr.skip()
    why = lambda r: escape(translated(r.error["message"], lang), quote=False)
    lines = [f"- **{r.entry}** → {r.name}" if r.name else f"- **{r.entry}**: {why(r)}" for r in results]
    return ("\n".join(lines), *listing(lang))


def format_label(report, lang: str) -> str:
    """The detected format in words, as core's FileReport.label says it, in the UI's language."""
    text = translated(FORMAT_NAMES.get(report.format, str(report.format)), lang)
    if getattr(report, "variant", None):
        text += t("data.variant", lang, variant=report.variant)
    if (getattr(report, "features", None) or {}).get("tools"):
        text += t("data.with_tools", lang)
    return text


def _show(checks, model_name, max_len, train_on, n, lang, fmt_value, slot_values):
    """The report, preview and histogram of every readable file together."""
    lines, rows, samples, sample_lines = [], [], [], []
    report_fmt, columns_found = None, []
    for c in checks:
        if c.error:
            rows.append([c.file, c.error.line or "", translated(str(c.error.message), lang)])
            lines.append("- " + t("data.file_error", lang, file=c.file))
            continue
        r = c.report
        report_fmt = report_fmt or r.format
        columns_found = columns_found or list(getattr(r, "columns_found", []) or [])
        lines.append("- " + t("data.file_ok", lang, file=c.file, label=format_label(r, lang), read=r.rows_read,
                       usable=r.rows_usable))
        rows += [[c.file, p.line, translated(p.message, lang)] for p in r.problems]
        samples += r.samples
        sample_lines += r.lines
    frame = gr.update(value=problem_frame(rows, lang), visible=bool(rows))
    slots = _slot_updates(fmt_value if fmt_value != "auto" else report_fmt, columns_found, slot_values, lang)
    if not samples:
        return ["\n".join(lines), frame, "", None, ""] + slots
    try:
        tok = tokenizer_for(model_name)
    except WorkbenchError as e:
        box = f"<div class='data-preview-error'>{escape(plain(failed(e, lang, {'model': 'data.model'})))}</div>"
        return ["\n".join(lines), frame, box, None, ""] + slots
    previews = preview(samples, tok, n=n, train_on=train_on, max_len=max_len, lines=sample_lines)
    for item in previews:                   # why a sample is dropped, in the UI's language
        item.error = translated(item.error, lang)
    html = preview_html(previews, {k: t(f"data.html.{k}", lang) for k in
                                   ("trained", "masked", "sample", "line", "tokens", "truncated", "dropped")})
    stats = length_stats(samples, tok, max_len, train_on=train_on, max_rows=5000)
    summary = t("data.length_summary" if stats.truncated else "data.length_fits", lang,
                share=100 * stats.truncated_share, n=stats.truncated, max_len=max_len,
                p95=stats.suggested_95, p99=stats.suggested_99, longest=stats.longest)
    return ["\n".join(lines), frame, html, histogram(stats, lang), summary] + slots


def problem_frame(rows: list, lang: str) -> pd.DataFrame:
    """Named columns even when empty, which gradio would otherwise head 1, 2, 3."""
    return pd.DataFrame(rows, columns=t("data.problem_cols", lang).split("|"))


def _slot_updates(fmt, columns_found, current, lang) -> list:
    fields = column_fields(fmt) if fmt else []
    out = []
    for i in range(SLOTS):
        if i < len(fields):
            f = fields[i]
            value = current[i] if i < len(current) and current[i] else f["default"]
            required = " *" if f["required"] else ""
            out.append(gr.update(visible=True, label=f"{f['field']}{required}", value=value,
                                 choices=list(dict.fromkeys([f["default"], *columns_found]))))
        else:
            out.append(gr.update(visible=False))
    return out
