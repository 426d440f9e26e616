"""Library tab: every adapter with its metrics; rename, delete, zip, import, merge, mix, chat; and the
merged full models in exports/."""
from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from core import exports, library
from core.adapter_io import export_zip, import_adapter
from core.adapter_merge import DTYPES, check_request
from core.adapter_mix import COMBINATIONS, COMBINATION_HELP, check_arguments, parse_weights
from core.child_task import run_core_command
from core.errors import WorkbenchError
from webui import chat_tab
from webui.charts import run_figure
from webui.i18n import Translator, failed, t
from webui.messages_zh import translated

ALL = ""
# The field names core raises with, to the labels shown.
FIELDS = {"adapter": "lib.pick", "adapters": "lib.mix_pick", "weights": "lib.weights", "density": "lib.density",
          "base_model": "lib.import_base", "source": "lib.import_source", "name": "lib.new_name",
          "export": "lib.export_pick", "dtype": "lib.dtype"}
MERGE_FIELDS = {**FIELDS, "name": "lib.export_name", "--out": "lib.export_name", "base_model": "lib.filter"}


def table(base: str, lang: str) -> pd.DataFrame:
    cols = t("lib.cols", lang).split("|")
    rows = []
    for a in library.list_adapters(base or None):
        ra = f"{a.rank}/{a.alpha:g}" if a.rank else ""
        loss = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else ""
        name = f"{a.name} ({translated(a.problem, lang)})" if a.problem else a.name
        rows.append([name, a.base_model.rsplit("/", 1)[-1], a.method, loss(a.train_loss), loss(a.eval_loss),
                     a.steps or "", ra, short_list(a.target_modules),
                     short_list([d.rsplit("/", 1)[-1] for d in a.datasets]), a.size,
                     a.created.replace("T", " ")[:16], translated(a.source, lang)])
    return pd.DataFrame(rows, columns=cols)


def short_list(items: list[str], keep: int = 2) -> str:
    """A cell that fits: the first few, then how many more (the detail panel shows them all)."""
    shown = ", ".join(items[:keep])
    return f"{shown} +{len(items) - keep}" if len(items) > keep else shown


def choices(base: str = ALL) -> list[tuple[str, str]]:
    return [(f"{a.name} · {a.method} · {a.base_model.rsplit('/', 1)[-1]}", a.id)
            for a in library.list_adapters(base or None)]


def exports_table(found: list[exports.Export], lang: str) -> pd.DataFrame:
    rows = [[e.name, e.size, e.created, e.adapter, e.base_model.rsplit("/", 1)[-1]] for e in found]
    return pd.DataFrame(rows, columns=t("lib.export_cols", lang).split("|"))


def base_choices(lang: str) -> list[tuple[str, str]]:
    return [(t("lib.all_bases", lang), ALL)] + [(b, b) for b in library.base_models()]


def memory_text(detail, lang: str) -> str:
    est = (detail.memory or {}).get("estimate") or {}
    measured = (detail.memory or {}).get("measured") or {}
    est_total = est.get("total_gib") if isinstance(est, dict) else None
    return t("lib.memory", lang, estimated=f"{est_total:.2f} GiB" if est_total else "—",
             measured=f"{measured['peak_mem_gib']:.2f} GiB" if measured.get("peak_mem_gib") else "—",
             device=translated(measured.get("mem_device", ""), lang))


def build(tr: Translator, lang_state: gr.State, lang: str = "en") -> SimpleNamespace:
    """The tab; what app.py wires to the Chat tab: pick, to_chat and message; export_pick, export_chat and
    export_message; on_open."""
    c = SimpleNamespace()
    _layout_listing(c, tr, lang)
    _layout_manage(c, tr, lang)
    _layout_import(c, tr, lang)
    _layout_merge(c, tr, lang)
    _layout_mix(c, tr, lang)
    _layout_exports(c, tr, lang)
    listing = [c.table, c.pick, c.mix_pick, c.base_filter, c.exports, c.export_pick]
    tail = [c.base_filter, c.pick, lang_state]          # what every action reads to redraw the listing
    out = [c.message] + listing
    c.refresh.click(refresh_all, tail, listing)
    c.base_filter.input(refresh_all, tail, listing)
    c.pick.change(show, [c.pick, lang_state], [c.curve, c.memory, c.config, c.zip_button])
    c.rename_btn.click(guarded(do_rename), [c.pick, c.new_name] + tail, out)
    c.delete_btn.click(on_delete, [c.pick, c.confirm] + tail, out + [c.confirm])
    # Each folded section answers in its own message line, where the button pressed is.
    c.import_btn.click(guarded(do_import), [c.upload, c.folder, c.import_base, c.import_name] + tail,
                       [c.import_message] + listing)
    c.mix_btn.click(guarded(do_mix), [c.mix_pick, c.weights, c.combination, c.density, c.mix_name] + tail,
                    [c.mix_message] + listing)
    help_text = lambda v, lang: gr.update(info=translated(COMBINATION_HELP.get(v, ""), lang))
    gr.on([c.combination.change, lang_state.change], help_text, [c.combination, lang_state], c.combination)
    c.merge_btn.click(do_merge, [c.pick, c.merge_name, c.merge_dtype] + tail, [c.merge_message] + listing)
    c.zip_prepare.click(do_zip, [c.pick, lang_state], [c.zip_button, c.message])
    c.export_delete.click(on_delete_export, [c.export_pick, c.export_confirm] + tail,
                          [c.export_message] + listing + [c.export_confirm])
    c.on_open = (opened, tail, listing + [c.curve, c.memory, c.config, c.zip_button])
    return c


def _layout_listing(c, tr: Translator, lang: str) -> None:
    with gr.Row():
        c.base_filter = tr.add(gr.Dropdown(choices=base_choices(lang), value=ALL, label=t("lib.filter", lang),
                                           scale=3, elem_id="lib-filter"), "lib.filter")
        c.refresh = tr.add(gr.Button(t("lib.refresh", lang), scale=1, size="sm", elem_id="lib-refresh"),
                           "lib.refresh", "value")
    c.table = tr.add(gr.Dataframe(value=table(ALL, lang), interactive=False, label=t("lib.list", lang),
                                  elem_id="lib-table"), "lib.list")
    with gr.Row():
        c.pick = tr.add(gr.Dropdown(choices=choices(), label=t("lib.pick", lang), scale=3, elem_id="lib-pick"),
                        "lib.pick")
        c.to_chat = tr.add(gr.Button(t("lib.chat", lang), variant="primary", scale=1, elem_id="lib-chat"),
                           "lib.chat", "value")
        c.zip_prepare = tr.add(gr.Button(t("lib.zip", lang), scale=1, elem_id="lib-zip"), "lib.zip", "value")
        c.zip_button = tr.add(gr.DownloadButton(t("lib.zip_ready", lang), scale=1, visible=False,
                                                elem_id="lib-zip-download"), "lib.zip_ready")
    c.message = gr.Markdown(elem_id="lib-message")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            c.curve = gr.Plot(show_label=False, elem_id="lib-curve")
        with gr.Column(scale=2):
            c.memory = gr.Markdown(elem_id="lib-memory")
            c.config = tr.add(gr.Code(language="json", label=t("lib.config", lang), max_lines=18), "lib.config")


def _layout_manage(c, tr: Translator, lang: str) -> None:
    with tr.add(gr.Accordion(t("lib.manage", lang), open=False, elem_id="lib-manage"), "lib.manage"):
        with gr.Row():
            c.new_name = tr.add(gr.Textbox(label=t("lib.new_name", lang), max_lines=1, scale=3,
                                           elem_id="lib-new-name"), "lib.new_name")
            c.rename_btn = tr.add(gr.Button(t("lib.rename", lang), scale=1), "lib.rename", "value")
            c.confirm = tr.add(gr.Checkbox(label=t("lib.confirm", lang), scale=1, elem_id="lib-confirm"),
                               "lib.confirm")
            c.delete_btn = tr.add(gr.Button(t("lib.delete", lang), variant="stop", scale=1, elem_id="lib-delete"),
                                  "lib.delete", "value")


def _layout_import(c, tr: Translator, lang: str) -> None:
    with tr.add(gr.Accordion(t("lib.import", lang), open=False, elem_id="lib-import"), "lib.import"):
        with gr.Row():
            c.upload = tr.add(gr.File(label=t("lib.import_zip", lang), file_types=[".zip"], scale=2),
                              "lib.import_zip")
            with gr.Column(scale=2):
                c.folder = tr.add(gr.Textbox(label=t("lib.import_folder", lang), max_lines=1,
                                             elem_id="lib-import-folder"), "lib.import_folder")
                c.import_base = tr.add(gr.Textbox(label=t("lib.import_base", lang), max_lines=1), "lib.import_base")
                c.import_name = tr.add(gr.Textbox(label=t("lib.new_name", lang), max_lines=1,
                                                  elem_id="lib-import-name"), "lib.new_name")
                c.import_btn = tr.add(gr.Button(t("lib.import_go", lang), elem_id="lib-import-go"), "lib.import_go",
                                      "value")
        c.import_message = gr.Markdown(elem_id="lib-import-message")


def _layout_merge(c, tr: Translator, lang: str) -> None:
    with tr.add(gr.Accordion(t("lib.merge", lang), open=False, elem_id="lib-merge"), "lib.merge"):
        with gr.Row():
            c.merge_name = tr.add(gr.Textbox(label=t("lib.export_name", lang), max_lines=1, scale=2,
                                             elem_id="lib-merge-name"), "lib.export_name")
            c.merge_dtype = tr.add(gr.Dropdown(choices=list(DTYPES), value="auto", label=t("lib.dtype", lang),
                                               scale=1), "lib.dtype")
            c.merge_btn = tr.add(gr.Button(t("lib.merge_go", lang), scale=1, elem_id="lib-merge-go"),
                                 "lib.merge_go", "value")
        c.merge_message = gr.Markdown(elem_id="lib-merge-message")


def _layout_mix(c, tr: Translator, lang: str) -> None:
    with tr.add(gr.Accordion(t("lib.mix", lang), open=False), "lib.mix"):
        with gr.Row():
            c.mix_pick = tr.add(gr.Dropdown(choices=choices(), multiselect=True, allow_custom_value=True,
                                            label=t("lib.mix_pick", lang), scale=3), "lib.mix_pick")
            c.weights = tr.add(gr.Textbox(label=t("lib.weights", lang), info=t("lib.weights_hint", lang),
                                          max_lines=1, scale=2), "lib.weights", "labelinfo")
        with gr.Row():
            c.combination = tr.add(gr.Dropdown(choices=list(COMBINATIONS), value="linear",
                                               label=t("lib.combination", lang),
                                               info=translated(COMBINATION_HELP["linear"], lang), scale=2),
                                   "lib.combination")
            c.density = tr.add(gr.Slider(0.05, 1.0, value=0.5, step=0.05, label=t("lib.density", lang), scale=1),
                               "lib.density")
            c.mix_name = tr.add(gr.Textbox(label=t("lib.new_name", lang), max_lines=1, scale=2), "lib.new_name")
            c.mix_btn = tr.add(gr.Button(t("lib.mix_go", lang), scale=1), "lib.mix_go", "value")
        c.mix_message = gr.Markdown(elem_id="lib-mix-message")


def _layout_exports(c, tr: Translator, lang: str) -> None:
    found = exports.list_exports()          # listed once: each entry's size walks its folder
    with tr.add(gr.Accordion(t("lib.exports", lang), open=False, elem_id="lib-exports"), "lib.exports"):
        c.exports = tr.add(gr.Dataframe(value=exports_table(found, lang), interactive=False, show_label=False,
                                        elem_id="lib-exports-table"), "lib.exports")
        with gr.Row():
            # Custom values pass: a pick deleted elsewhere reaches the handler, which says so.
            c.export_pick = tr.add(gr.Dropdown(choices=[e.name for e in found], value=None,
                                               allow_custom_value=True, label=t("lib.export_pick", lang), scale=3,
                                               elem_id="lib-export-pick"), "lib.export_pick")
            c.export_chat = tr.add(gr.Button(t("lib.chat", lang), scale=1, elem_id="lib-export-chat"), "lib.chat",
                                   "value")
            c.export_confirm = tr.add(gr.Checkbox(label=t("lib.confirm", lang), scale=1,
                                                  elem_id="lib-export-confirm"), "lib.confirm")
            c.export_delete = tr.add(gr.Button(t("lib.delete", lang), variant="stop", scale=1,
                                               elem_id="lib-export-delete"), "lib.delete", "value")
        c.export_message = gr.Markdown(elem_id="lib-export-message")


def refresh_all(base, selected, lang, first_if_gone=True):
    """The table, the pick (kept if still listed), the mix choices, the base filter and the merged
    models, redrawn."""
    opts = choices(base)
    ids = [v for _, v in opts]
    selected = selected if selected in ids else (ids[0] if ids and first_if_gone else None)
    found = exports.list_exports()
    return (table(base, lang), gr.update(choices=opts, value=selected), gr.update(choices=opts),
            gr.update(choices=base_choices(lang)), exports_table(found, lang),
            gr.update(choices=[e.name for e in found]))


def opened(base, selected, lang):
    """The tab opened: the listing redrawn and the picked adapter's detail shown (a pick that did not
    change fires no change event, and the first pick is made before any detail was drawn)."""
    listing = refresh_all(base, selected, lang)
    return listing + show(listing[1]["value"], lang)


def show(ref, lang):
    hidden = gr.update(value=None, visible=False)
    if not ref:
        return None, "", "", hidden
    try:
        d = library.detail(ref)
    except WorkbenchError as e:
        return None, failed(e, lang, FIELDS), "", hidden
    cfg = d.run_config or d.adapter_config
    return (run_figure(d.metrics, lang) if d.metrics else None, memory_text(d, lang),
            json.dumps(cfg, indent=2, ensure_ascii=False, default=str), hidden)


def guarded(fn):
    """An action's message, or its error in words, and the listing redrawn after it."""
    def handler(*args):
        *rest, base, selected, lang = args
        try:
            text = fn(*rest, lang)
        except WorkbenchError as e:
            return (failed(e, lang, FIELDS),) + refresh_all(base, selected, lang)
        return (text,) + refresh_all(base, selected, lang)
    return handler


def do_rename(ref, name, lang):
    if not ref:
        return t("lib.none", lang)
    return t("lib.renamed", lang, name=library.rename(ref, name).name)


def on_delete(ref, sure, base, selected, lang):
    """Nothing is picked afterwards and the box is cleared: a second click deletes nothing else."""
    if not ref or not sure:
        text = t("lib.confirm_first" if ref else "lib.none", lang)
        return (text,) + refresh_all(base, selected, lang) + (gr.update(),)
    try:
        name = library.get(ref).name
        library.delete(ref)
        text = t("lib.deleted", lang, name=name)
    except WorkbenchError as e:
        text = failed(e, lang, FIELDS)
    return (text,) + refresh_all(base, None, lang, first_if_gone=False) + (False,)


def do_import(file, path, base, name, lang):
    source = file or path.strip()
    if not source:
        return t("lib.import_nothing", lang)
    info = import_adapter(source, name=name.strip() or None, base_model=base.strip() or None)
    return t("lib.imported", lang, name=info.name)


def do_mix(ids, text, comb, dens, name, lang):
    ids, weights = ids or [], parse_weights(text, len(ids or []))
    dens = dens if comb in ("ties", "dare_ties") else None
    check_arguments(ids, weights, comb, dens, None)         # refused here at once, before a child starts
    density = ["--density", str(dens)] if dens is not None else []
    run_core_command(["library", "mix", *ids, "--weights", *map(str, weights), "--name", name.strip(),
                      "--combination", comb, *density])     # in a child process, as merge
    return t("lib.mixed", lang, name=name.strip())


def do_merge(ref, name, dtype, base, selected, lang, progress=gr.Progress()):
    """Not `guarded`: gradio finds the progress bar among the handler's own parameters."""
    text = t("lib.none", lang) if not ref else merged(ref, name, dtype, lang, progress)
    return (text,) + refresh_all(base, selected, lang)


def merged(ref, name, dtype, lang, progress) -> str:
    try:     # in a child process: the full model it loads must never take the UI down
        out = name.strip() or f"{library.get(ref).name}-merged"
        check_request(ref, out, dtype)          # refused at once, before a child starts
        path = run_core_command(["merge", "--adapter", ref, "--out", out, "--dtype", dtype],
                                progress=lambda frac, msg: progress(frac, desc=msg))
    except WorkbenchError as e:
        return failed(e, lang, MERGE_FIELDS)
    return t("lib.merged", lang, path=path)


def on_delete_export(name, sure, base, selected, lang):
    """As an adapter's Delete: confirmed first, and nothing is picked afterwards."""
    if not name or not sure:
        text = t("lib.confirm_first" if name else "lib.no_export", lang)
        return (text,) + refresh_all(base, selected, lang) + (gr.update(),)
    try:
        exports.delete(name)
        text = t("lib.deleted", lang, name=f"exports/{name}")
    except WorkbenchError as e:
        text = failed(e, lang, FIELDS)
    listing = refresh_all(base, selected, lang)
    return (text,) + listing[:-1] + (gr.update(choices=listing[-1]["choices"], value=None), False)


def open_in_chat(ref, lang):
    """Library 'Chat with it': the picked adapter on its base, or a full model as the base."""
    return _open(library.get, ref, "lib.none", lang)


def open_export_in_chat(name, lang):
    return _open(exports.get, name, "lib.no_export", lang)


def _open(find, ref, none_key, lang):
    """(message, tabs, base, adapter A, chat status): the Chat tab opened on the pick, or why not."""
    unchanged = (gr.skip(),) * 4
    if not ref:
        return (t(none_key, lang),) + unchanged
    try:
        target = find(ref)
    except WorkbenchError as e:          # deleted since the list was shown
        return (failed(e, lang, FIELDS),) + unchanged
    return ("", *chat_tab.open_on(target, lang))


def do_zip(ref, lang):
    if not ref:
        return gr.update(value=None, visible=False), t("lib.none", lang)
    try:
        return gr.update(value=str(export_zip(ref)), visible=True), ""
    except WorkbenchError as e:
        return gr.update(value=None, visible=False), failed(e, lang, FIELDS)
