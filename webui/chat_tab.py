"""Chat tab: talk to a base model with or without an adapter, or to two choices side by side."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import gradio as gr

from core import chat_choices, library
from core.chat import GenerationOptions
from core.chat_service import ChatService
from core.config import EMBEDDED_MODEL
from core.errors import WorkbenchError
from webui.i18n import Translator, failed, t

SERVICE = ChatService()
NO_ADAPTER = ""
_stops: dict[str, threading.Event] = {}
# The field names core raises with, to the labels shown.
CHAT_FIELDS = {"model": "chat.base", "base_model": "chat.base", "max_new_tokens": "chat.max_new"}


def listing() -> tuple[list[library.AdapterInfo], list[chat_choices.Checkpoint]]:
    """The library's entries and the runs' checkpoints, read once for the lists drawn from them."""
    return library.list_adapters(), chat_choices.checkpoints()


def adapter_choices(lang: str, found=None, keep=()) -> list[tuple[str, str]]:
    """No adapter, the library's adapters, then the runs' checkpoints. `keep`: picks to keep listed
    though the listing lost them (a run resumed since): a value missing from the choices would be
    refused before any handler could say what is wrong."""
    entries, ckpts = found or listing()
    shown = ([(t("chat.no_adapter", lang), NO_ADAPTER)]
             + [(f"{a.name} · {a.base_model.rsplit('/', 1)[-1]}", a.id) for a in chat_choices.adapters(entries)]
             + [(checkpoint_label(c, lang), c.value) for c in ckpts if c.is_adapter])
    values = {v for _, v in shown}
    kept = [(v, chat_choices.checkpoint_named(v)) for v in dict.fromkeys(keep) if v and v not in values]
    return shown + [(checkpoint_label(c, lang) if c else v, v) for v, c in kept]


def checkpoint_label(c: chat_choices.Checkpoint, lang: str) -> str:
    return t("chat.list.checkpoint", lang, name=c.run_name, note=c.step)


def base_choices(lang: str, found=None) -> list[tuple[str, str]]:
    entries, ckpts = found or listing()
    return [(t(f"chat.list.{b.kind}", lang, name=b.name, note=b.note) if b.kind else b.label, b.value)
            for b in chat_choices.bases(entries, ckpts)]


def refreshed_choices(lang: str, a: str, b: str) -> tuple[dict, dict, dict]:
    """The base and both adapter lists redrawn from one listing; the picks stay."""
    found = listing()
    adapters = adapter_choices(lang, found, keep=(a, b))
    return gr.update(choices=base_choices(lang, found)), gr.update(choices=adapters), gr.update(choices=adapters)


def base_of(adapter_id: str) -> str | None:
    """The base an adapter was trained on; None for no adapter or one gone since the list was shown."""
    try:
        return chat_choices.adapter_base(adapter_id) if adapter_id else None
    except WorkbenchError:
        return None


def open_on(target, lang: str, note: str = "") -> tuple:
    """The (tabs, base, adapter A, status) updates that switch to the Chat tab on a library entry, a
    checkpoint or a merged model; `note` says there what was opened, where the visitor now looks."""
    return (gr.Tabs(selected="chat"), *picks_for(target, lang), note)


def picks_for(target, lang: str) -> tuple[dict, dict]:
    """The (base, adapter A) updates that open the chat on a library entry or a run's checkpoint; for
    none, on the newest adapter (what a visitor most likely just trained)."""
    found = listing()
    base, adapter = chat_choices.opening(target or chat_choices.newest_adapter(found[0]))
    return (gr.update(choices=base_choices(lang, found), value=base),
            gr.update(choices=adapter_choices(lang, found), value=adapter))


def build(tr: Translator, lang_state: gr.State, lang: str = "en"):
    c = SimpleNamespace()
    _layout_choices(c, tr, lang)
    _layout_conversation(c, tr, lang)
    c.side.change(lambda on: (gr.update(visible=on), gr.update(visible=on)), c.side, [c.adapter_b, c.col_b])
    c.adapter_a.input(on_adapter, [c.adapter_a, c.adapter_b], [c.base, c.adapter_b])
    c.base.input(on_base, [c.base, c.adapter_a, c.adapter_b], [c.adapter_a, c.adapter_b])
    inputs = [c.prompt, c.bot_a, c.bot_b, c.base, c.adapter_a, c.adapter_b, c.side, c.system, c.temperature,
              c.top_p, c.top_k, c.max_new, c.repetition, lang_state]
    outputs = [c.bot_a, c.bot_b, c.stats_a, c.stats_b, c.status, c.prompt]
    events = [c.send.click(respond, inputs, outputs), c.prompt.submit(respond, inputs, outputs)]
    # Stop ends the reply underway and leaves the turn to finish (column B still answers, so the two
    # columns stay in step); Clear also drops the turn underway, which would otherwise redraw them.
    c.stop.click(on_stop, None, None)
    c.clear.click(on_clear, None, [c.bot_a, c.bot_b, c.stats_a, c.stats_b], cancels=events)
    for adapter in (c.adapter_a, c.adapter_b):
        adapter.focus(lambda lang, a, b: gr.update(choices=adapter_choices(lang, keep=(a, b))),
                      [lang_state, c.adapter_a, c.adapter_b], adapter)
    c.base.focus(lambda lang: gr.update(choices=base_choices(lang)), lang_state, c.base)
    on_load = (lambda lang: picks_for(None, lang), lang_state, [c.base, c.adapter_a])
    on_select = (refreshed_choices, [lang_state, c.adapter_a, c.adapter_b], [c.base, c.adapter_a, c.adapter_b])
    return c.base, c.adapter_a, c.status, on_load, on_select


def _layout_choices(c, tr: Translator, lang: str) -> None:
    """What answers: base, adapter A, and adapter B side by side; then the system prompt and sampling."""
    with gr.Row():
        # Values are set on each page load (on_load), not at build: the newest adapter is the one of that moment.
        c.base = tr.add(gr.Dropdown(choices=base_choices(lang), value=EMBEDDED_MODEL, allow_custom_value=True,
                                    label=t("chat.base", lang), info=t("chat.base_hint", lang), scale=2,
                                    elem_id="chat-base"), "chat.base", "labelinfo")
        # Custom values pass: a pick whose entry went (resumed, deleted) reaches respond(), which says why.
        c.adapter_a = tr.add(gr.Dropdown(choices=adapter_choices(lang), value=NO_ADAPTER, allow_custom_value=True,
                                         label=t("chat.adapter_a", lang), scale=2, elem_id="chat-adapter-a"),
                             "chat.adapter_a")
        c.side = tr.add(gr.Checkbox(label=t("chat.side_by_side", lang), value=False, scale=1,
                                    elem_id="chat-side"), "chat.side_by_side")
        c.adapter_b = tr.add(gr.Dropdown(choices=adapter_choices(lang), value=NO_ADAPTER, visible=False,
                                         allow_custom_value=True,
                                         label=t("chat.adapter_b", lang), scale=2, elem_id="chat-adapter-b"),
                             "chat.adapter_b")
    c.system = tr.add(gr.Textbox(label=t("chat.system", lang), max_lines=3, elem_id="chat-system"), "chat.system")
    with tr.add(gr.Accordion(t("chat.sampling", lang), open=False), "chat.sampling"):
        with gr.Row():
            c.temperature = tr.add(gr.Slider(0, 2, value=0, step=0.05, label=t("chat.temperature", lang),
                                             info=t("chat.temperature_hint", lang)), "chat.temperature", "labelinfo")
            c.top_p = tr.add(gr.Slider(0.05, 1, value=0.95, step=0.05, label="top-p"), "chat.top_p")
            c.top_k = tr.add(gr.Slider(0, 200, value=50, step=1, label="top-k"), "chat.top_k")
            c.max_new = tr.add(gr.Slider(8, 2048, value=256, step=8, label=t("chat.max_new", lang)),
                               "chat.max_new")
            c.repetition = tr.add(gr.Slider(1.0, 2.0, value=1.0, step=0.05, label=t("chat.repetition", lang)),
                                  "chat.repetition")


def _layout_conversation(c, tr: Translator, lang: str) -> None:
    with gr.Row(equal_height=True):
        with gr.Column():
            c.bot_a = tr.add(gr.Chatbot(label=t("chat.column_a", lang), height=380, elem_id="chat-a"),
                             "chat.column_a")
            c.stats_a = gr.Markdown(elem_id="chat-stats-a")
        with gr.Column(visible=False) as c.col_b:
            c.bot_b = tr.add(gr.Chatbot(label=t("chat.column_b", lang), height=380, elem_id="chat-b"),
                             "chat.column_b")
            c.stats_b = gr.Markdown(elem_id="chat-stats-b")
    with gr.Row():
        c.prompt = tr.add(gr.Textbox(label=t("chat.prompt", lang), scale=5, max_lines=6, elem_id="chat-prompt"),
                          "chat.prompt")
        c.send = tr.add(gr.Button(t("chat.send", lang), variant="primary", scale=1, elem_id="chat-send"),
                        "chat.send", "value")
        c.stop = tr.add(gr.Button(t("chat.stop", lang), variant="stop", scale=1, elem_id="chat-stop"),
                        "chat.stop", "value")
        c.clear = tr.add(gr.Button(t("chat.clear", lang), scale=1, elem_id="chat-clear"), "chat.clear", "value")
    c.status = gr.Markdown(elem_id="chat-status")


def on_adapter(adapter_id, adapter_b):
    """Adapter A brings its base; adapter B, if trained on another, gives way to the base alone."""
    base = base_of(adapter_id)
    if base is None:                # none, or one gone since it was listed: the send says so
        return gr.skip(), gr.skip()
    return gr.update(value=base), *on_base(base, adapter_b)


def on_base(base_name, *adapter_ids):
    """A base an adapter was not trained on would not take it: that column chats with the base alone."""
    return tuple(gr.update(value=NO_ADAPTER) if a and base_of(a) != base_name else gr.skip() for a in adapter_ids)


def respond(text, hist_a, hist_b, base_name, a, b, two, sys_prompt, temp, p, k, n, rep, lang, request: gr.Request):
    """Stream the answer of column A, then of column B; Stop ends the one underway. A failure drops the
    turn from both columns (they stay in step) and leaves the question in the box to retry."""
    if not text.strip():
        yield hist_a, hist_b, gr.skip(), gr.skip(), "", gr.skip()
        return
    picks, paths = [a] + ([b] if two else []), []
    for i, pick in enumerate(picks):          # each column's adapter found before either answers
        try:
            paths.append(chat_choices.adapter_path(pick))
        except WorkbenchError as e:
            yield hist_a, hist_b, gr.skip(), gr.skip(), failed(e, lang, column_fields(i)), gr.skip()
            return
    stop_event = _stops.setdefault(request.session_hash, threading.Event())
    opts = GenerationOptions(max_new_tokens=int(n), temperature=float(temp), top_p=float(p), top_k=int(k),
                             repetition_penalty=float(rep))
    stats = ["", ""]
    histories = [list(h or []) + [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
                 for h in [hist_a, hist_b][:len(picks)]]
    yield _out(histories, hist_b, two, stats, "", prompt="")
    try:
        for i, path in enumerate(paths):
            stop_event.clear()                  # a Stop ends the column underway, not the next one
            history = histories[i]
            messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt.strip() else []) + \
                [{"role": m["role"], "content": m["content"]} for m in history[:-1]]
            for update in SERVICE.stream(base_name, path, messages, opts, stop_event):
                history[-1]["content"] = update["text"]
                stats[i] = t("chat.stats", lang, ttft=update["ttft_s"], rate=update["tokens_per_s"],
                             n=update["tokens"])
                yield _out(histories, hist_b, two, stats, "")
    except WorkbenchError as e:
        yield hist_a, hist_b, "", "", failed(e, lang, column_fields(i)), text
        return
    finally:
        _stops.pop(request.session_hash, None)      # one entry per reply underway, not per visitor ever
    yield _out(histories, hist_b, two, stats, "")


def column_fields(column: int) -> dict[str, str]:
    """An adapter that fails is named by its own column's box."""
    box = "chat.adapter_b" if column else "chat.adapter_a"
    return {**CHAT_FIELDS, "adapter": box, "run": box}


def on_stop(request: gr.Request):
    if request.session_hash in _stops:
        _stops[request.session_hash].set()


def on_clear(request: gr.Request):
    on_stop(request)
    return [], [], "", ""


def _out(histories, hist_b, two, stats, status, prompt=None):
    """The reply's outputs; the message box is cleared once, when the question is taken, and then left
    alone, so that a question typed while the reply streams is kept."""
    return (histories[0], histories[1] if two else hist_b, stats[0], stats[1], status,
            gr.skip() if prompt is None else prompt)
