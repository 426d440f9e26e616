"""Assemble the tabs in the order of the work (Data, Train, Runs, Library, Chat) and launch."""
from __future__ import annotations

import gradio as gr

from core import jobs
from core.dataset_library import get_dataset
from core.errors import WorkbenchError
from core.workspace import home
from webui import chat_tab, data_tab, library_tab, runs_tab, train_tab
from webui.i18n import LANGS, Translator, failed, t

CSS = """
#run-progress pre.run-error {white-space: pre-wrap; color: #b00; font-size: 12px; max-height: 220px; overflow: auto}
.mask-preview .trained {background: #d7f5dd; border-bottom: 2px solid #2e9e48}
.mask-preview .masked {color: #888}
#data-preview {max-height: 640px; overflow: auto}
footer {display: none !important}
"""


def use_dataset(name, chosen, lang):
    """Data tab's Use: the picked dataset joins the Train form's, and the Train tab opens. One
    deleted since the list was drawn (in another tab) is not put into the form: the Data tab says so."""
    if name:
        try:
            get_dataset(name)
        except WorkbenchError as e:
            return (failed(e, lang, {"name": "data.pick"}), *data_tab.listing(lang, None), gr.skip(), gr.skip())
    chosen = list(chosen or [])
    if name and name not in chosen:
        chosen.append(name)
    return ("", gr.skip(), gr.skip(), gr.Tabs(selected="train"),
            gr.update(choices=train_tab.dataset_choices(chosen, lang), value=chosen))


def build(lang: str = "en") -> gr.Blocks:
    tr = Translator()
    # Gradio copies every file it serves or receives into its cache; sweep copies older than a day hourly.
    with gr.Blocks(title=t("title", lang), delete_cache=(3600, 86400)) as demo:
        lang_state = gr.State(lang)
        with gr.Row(equal_height=True):
            tr.add(gr.Markdown(t("header", lang, home=home()), elem_id="header"), "header", "value", home=home())
            language = gr.Radio(list(LANGS), value=next(k for k, v in LANGS.items() if v == lang),
                                label=t("language", lang), elem_id="language", scale=0, min_width=220)
        with gr.Tabs(selected="train") as tabs:
            with tr.add(gr.Tab(t("tab.data", lang), id="data", elem_id="tab-data"), "tab.data") as data_page:
                data_pick, data_use, data_lib, data_msg = data_tab.build(tr, lang_state, lang)
            with tr.add(gr.Tab(t("tab.train", lang), id="train", elem_id="tab-train"), "tab.train") as train_page:
                train = train_tab.build(tr, lang_state, lang)
            with tr.add(gr.Tab(t("tab.runs", lang), id="runs", elem_id="tab-runs"), "tab.runs"):
                run_select, buttons, action_msg = runs_tab.build(tr, lang_state, lang)
            with tr.add(gr.Tab(t("tab.library", lang), id="library", elem_id="tab-library"), "tab.library") as lib:
                lib_ui = library_tab.build(tr, lang_state, lang)
            with tr.add(gr.Tab(t("tab.chat", lang), id="chat", elem_id="tab-chat"), "tab.chat") as chat:
                chat_base, chat_adapter, chat_status, chat_load, chat_select = chat_tab.build(tr, lang_state,
                                                                                              lang)
        runs_tab.wire_actions(run_select, buttons, action_msg, lang_state, train, tabs)
        lib.select(*lib_ui.on_open)
        data_page.select(data_tab.listing, [lang_state, data_pick], [data_lib, data_pick])
        chat.select(*chat_select)

        chat_picks = [tabs, chat_base, chat_adapter, chat_status]
        lib_ui.to_chat.click(library_tab.open_in_chat, [lib_ui.pick, lang_state], [lib_ui.message] + chat_picks)
        lib_ui.export_chat.click(library_tab.open_export_in_chat, [lib_ui.export_pick, lang_state],
                                 [lib_ui.export_message] + chat_picks)
        runs_tab.wire_chat(run_select, buttons["chat"], action_msg, lang_state, chat_picks)

        data_use.click(use_dataset, [data_pick, train.datasets, lang_state],
                       [data_msg, data_lib, data_pick, tabs, train.datasets])
        train_page.select(lambda chosen, lang: gr.update(choices=train_tab.dataset_choices(chosen, lang)),
                          [train.datasets, lang_state], train.datasets)
        # Labels follow the language through `tr`; the chat's lists hold translated entries of their own.
        _wire_language(tr, language, lang_state).then(*chat_select)
        demo.load(*train.on_load, show_progress="hidden")
        demo.load(*chat_load, show_progress="hidden")
    return demo


def _wire_language(tr: Translator, language: gr.Radio, lang_state: gr.State):
    def switch(choice):
        lang = LANGS[choice]
        return [lang, gr.update(label=t("language", lang))] + tr.updates(lang)

    return language.change(switch, language, [lang_state, language] + tr.components())


def launch(host: str, port: int, auth=None, share: bool = False) -> None:
    jobs.Supervisor().start_background()
    build().queue(default_concurrency_limit=4).launch(server_name=host, server_port=port, auth=auth, share=share,
                                                      css=CSS, footer_links=[])
