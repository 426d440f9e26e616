"""Runs tab: every run with its state, live charts of the selected run, queue actions, compare.

It reads the database and the run files on a timer; it holds no run state of its own."""
from __future__ import annotations

import html
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from core import chat_choices, jobs, runview
from core.errors import WorkbenchError
from webui import chat_tab
from webui.charts import compare_figure, run_figure
from webui.i18n import Translator, describe_error, failed, plain, t
from webui.messages_zh import translated

POLL_S = 1.0
RUN_FIELDS = {"run": "runs.select"}          # the field names core raises with, to the labels shown


def table(lang: str) -> pd.DataFrame:
    cols = t("runs.cols", lang).split("|")
    rows = []
    for s in runview.summaries():
        state = t(f"state.{runview.shown_state(s)}", lang)
        if s["folder_missing"]:
            state += f" · {t('runs.folder_missing', lang)}"
        if s["queue_position"]:
            state += f" #{s['queue_position']}"
        total = s["total_steps"]
        progress = f"{s['step']}/{total} ({100 * s['progress']:.0f}%)" if total else ""
        started = time.strftime("%m-%d %H:%M", time.localtime(s["started"])) if s["started"] else ""
        loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else ""
        rows.append([s["name"], s["model"].rsplit("/", 1)[-1], s["method"], state, progress,
                     runview.format_duration(s["eta_s"]), started, runview.format_duration(s["duration_s"]), loss])
    return pd.DataFrame(rows, columns=cols)


def progress_html(job: jobs.Job, lang: str) -> str:
    s = runview.summary(job)
    pct = 100 * s["progress"]
    eta = f" · ETA {runview.format_duration(s['eta_s'])}" if s["eta_s"] else ""
    step = f"{s['step']}/{s['total_steps']}" if s["total_steps"] else ""
    color = {"failed": "#d9534f", "stopped": "#f0ad4e", "completed": "#5cb85c"}.get(job.state, "#4f6bed")
    failed_now = s["error"] and job.state == "failed"
    error = f"<pre class='run-error'>{html.escape(error_text(s, lang))}</pre>" if failed_now else ""
    if s["folder_missing"]:
        error += f"<div class='run-missing'>{html.escape(t('runs.folder_missing_note', lang, path=job.run_dir))}</div>"
    return (f"<div id='run-progress' data-state='{runview.shown_state(s)}' data-step='{s['step']}'>"
            f"<b>{html.escape(s['name'])}</b> · {t('state.' + runview.shown_state(s), lang)} {step}{eta}"
            f"<div style='background:#eee;border-radius:4px;height:12px;margin-top:4px'>"
            f"<div style='width:{pct:.1f}%;background:{color};height:12px;border-radius:4px'></div></div>"
            f"{memory_line(s, lang)}{error}</div>")


def error_text(s: dict, lang: str) -> str:
    """Why a run failed: a refusal by its field, file and line, in the UI's language; other failures
    (a crash, a log's root cause) as the worker wrote them."""
    refusal = WorkbenchError.from_dict(s.get("error_detail"))
    if not refusal:
        return translated(s["error"], lang)
    described = plain(describe_error(refusal, lang))
    cause, then, rest = (s["error"] or "").partition("; then ")     # a root cause the supervisor put first
    return t("runs.then", lang, cause=translated(cause, lang), error=described) if then and rest == str(refusal) \
        else described


def memory_line(s: dict, lang: str) -> str:
    """The pre-run estimate beside the measured peak, so a user learns how far to trust the estimate."""
    if not s["estimate_gib"] and not s["peak_mem_gib"]:
        return ""
    gib = lambda v: f"{v:.2f} GiB" if v else "—"
    device = html.escape(translated(s["mem_device"], lang)) if s["mem_device"] else ""
    measured = gib(s["peak_mem_gib"]) + (f" ({device})" if device else "")
    return (f"<div class='run-memory' style='font-size:12px;margin-top:4px'>"
            f"{t('runs.memory', lang, estimated=gib(s['estimate_gib']), measured=measured)}</div>")


def run_choices() -> list[tuple[str, str]]:
    return [(f"{j.name or j.id} · {j.id}", j.id) for j in jobs.list_jobs()]


def build(tr: Translator, lang_state: gr.State, lang: str = "en"):
    c = SimpleNamespace()
    _layout_runs(c, tr, lang)
    _layout_compare(c, tr, lang)
    timer = gr.Timer(POLL_S)
    seen = gr.State({})
    shown = [c.run_select, c.table, c.delete_files, c.progress, c.chart, c.log, seen]
    timer.tick(refresh, [c.run_select, lang_state, seen], shown, show_progress="hidden")
    c.run_select.input(refresh, [c.run_select, lang_state, gr.State({})], shown, show_progress="hidden")
    c.run_select.input(lambda: False, None, c.delete_files)
    c.compare_pick.change(compare, [c.compare_pick, lang_state], [c.compare_chart, c.differences])
    c.compare_pick.focus(lambda: gr.update(choices=run_choices()), None, c.compare_pick)
    return c.run_select, c.buttons, c.action_msg


def _layout_runs(c, tr: Translator, lang: str) -> None:
    """The table, the pick and its actions, then the picked run's progress, chart and log."""
    c.table = tr.add(gr.Dataframe(value=table(lang), interactive=False, label=t("runs.list", lang),
                                  elem_id="runs-table", wrap=True), "runs.list")
    with gr.Row():
        # No value at build: the first tick picks the newest run of that moment, not of the server's start.
        c.run_select = tr.add(gr.Dropdown(choices=run_choices(), value=None, label=t("runs.select", lang), scale=4,
                                          elem_id="run-select"), "runs.select")
    with gr.Row():
        c.buttons = {key: tr.add(gr.Button(t(f"runs.{key}", lang), size="sm", min_width=90, elem_id=f"run-{key}"),
                                 f"runs.{key}", "value")
                     for key in ("stop", "resume", "rerun", "clone", "chat", "remove", "up", "down")}
    c.delete_files = tr.add(gr.Checkbox(False, label=t("runs.delete_files", lang), elem_id="run-delete-files"),
                            "runs.delete_files")
    c.buttons["delete_files"] = c.delete_files
    c.action_msg = gr.Markdown(elem_id="runs-message")
    c.progress = gr.HTML(elem_id="run-progress-box")
    c.chart = gr.Plot(elem_id="run-chart", show_label=False)
    c.log = tr.add(gr.Textbox(label=t("runs.log", lang), lines=10, max_lines=10, autoscroll=True, elem_id="run-log"),
                   "runs.log")


def _layout_compare(c, tr: Translator, lang: str) -> None:
    with tr.add(gr.Accordion(t("runs.compare", lang), open=False), "runs.compare"):
        c.compare_pick = tr.add(gr.Dropdown(choices=run_choices(), multiselect=True,
                                            label=t("runs.compare_pick", lang), elem_id="compare-pick"),
                                "runs.compare_pick")
        c.compare_chart = gr.Plot(show_label=False)
        c.differences = tr.add(gr.Dataframe(interactive=False, label=t("runs.differences", lang)),
                               "runs.differences")


def refresh(selected, lang, seen_state):
    """Redraw what changed since the last tick: the table always, the chart only on new metrics.
    With nothing picked the newest run is. The pick is set only when the picked run has left the
    list: it is then emptied (and the delete box cleared) until the user picks again, so that no
    button acts on a run the user did not pick. A tick sent before the user picked another run must
    not undo that pick."""
    choices = run_choices()
    ids = [v for _, v in choices]
    # Choices are sent only when they changed: each update would undo what the user types to filter.
    listed = [list(c) for c in choices]
    pick, clear = (gr.skip() if seen_state.get("choices") == listed else gr.update(choices=choices)), gr.skip()
    gone = seen_state.get("gone") if ids else None
    if selected not in ids and not (selected is None and gone):    # emptied once, then left alone
        gone = selected or gone
        selected, clear = (None if gone else ids[0] if ids else None), False
        pick = gr.update(choices=choices, value=selected)
    outputs = [pick, table(lang), clear]
    if selected is None:
        note = t("runs.pick_gone", lang, id=gone) if gone and ids else t("runs.no_run", lang)
        return outputs + [note, gr.skip(), "", {"choices": listed, "gone": gone}]
    job = jobs.get(selected)
    run = job.dir
    stamp = (selected, lang, _mtime(run.metrics), job.state)
    fig = gr.skip() if seen_state.get("chart") == stamp else run_figure(run.read_metrics(), lang)
    return outputs + [progress_html(job, lang), fig, run.log_tail(40), {"chart": stamp, "choices": listed}]


def nothing_picked(lang: str) -> str:
    return t("runs.pick_one" if jobs.list_jobs() else "runs.no_run", lang)


def compare(ids, lang):
    if not ids:
        return None, pd.DataFrame()
    jobs_by_id = {i: jobs.get(i) for i in ids}
    names = runview.run_labels(jobs_by_id)
    curves = {names[i]: j.dir.read_metrics() for i, j in jobs_by_id.items()}
    diffs = runview.differing_settings({names[i]: j.dir.read_config() for i, j in jobs_by_id.items()})
    frame = pd.DataFrame([[k, *map(str, v)] for k, v in diffs.items()],
                         columns=[t("runs.setting", lang), *curves.keys()])
    return compare_figure(curves, lang), frame


def wire_actions(run_select, buttons, action_msg, lang_state, train_tab, tabs):
    """Queue actions; Clone fills the Train form and switches to it."""
    def act(fn, label):
        def handler(run_id, lang):
            if not run_id:
                return nothing_picked(lang)
            try:
                result = fn(run_id)
            except WorkbenchError as e:
                return failed(e, lang, RUN_FIELDS)
            shown = result.id if isinstance(result, jobs.Job) else run_id
            return t("runs.done", lang, what=t(f"runs.{label}", lang), id=shown)
        return handler

    for key, fn in (("resume", jobs.resume), ("up", lambda i: jobs.move(i, -1)), ("down", lambda i: jobs.move(i, 1))):
        buttons[key].click(act(fn, key), [run_select, lang_state], action_msg)

    def stop(run_id, lang):
        """A queued run leaves the queue at once; a running one finishes its step first."""
        if not run_id:
            return nothing_picked(lang)
        try:
            job = jobs.stop(run_id)
        except WorkbenchError as e:
            return failed(e, lang, RUN_FIELDS)
        return t("runs.left_queue" if job.state == "stopped" else "runs.stop_asked", lang, id=run_id)

    buttons["stop"].click(stop, [run_select, lang_state], action_msg)

    def remove(run_id, delete_files, lang):
        """Says whether the folder stayed; the box is cleared so the next removal asks again."""
        if not run_id:
            return nothing_picked(lang), False
        try:
            job = jobs.get(run_id)
            outcome = jobs.remove(run_id, delete_files=delete_files)
        except WorkbenchError as e:
            return failed(e, lang, RUN_FIELDS), False
        return t(f"runs.removed_{outcome}", lang, id=run_id, path=job.run_dir), False

    buttons["remove"].click(remove, [run_select, buttons["delete_files"], lang_state],
                            [action_msg, buttons["delete_files"]])

    def rerun(run_id, lang, key):
        """One new run per click, however fast the clicks come (as Start does)."""
        text = act(lambda i: jobs.rerun(i, request_key=key), "rerun")(run_id, lang)
        return text, uuid.uuid4().hex

    nonce = gr.State(lambda: uuid.uuid4().hex)
    buttons["rerun"].click(rerun, [run_select, lang_state, nonce], [action_msg, nonce], concurrency_limit=1)

    def clone(run_id, lang):
        """Problems are told here on the Runs tab, which stays open; a clone lands on the Train tab."""
        unchanged = [gr.skip()] * len(train_tab.inputs)
        if not run_id:
            return unchanged + [gr.skip(), nothing_picked(lang), gr.skip()]
        try:
            cfg = jobs.config_of(run_id)
        except WorkbenchError as e:
            return unchanged + [gr.skip(), failed(e, lang, RUN_FIELDS), gr.skip()]
        return train_tab.fill(cfg, lang) + [t("runs.cloned", lang, id=run_id), "", gr.Tabs(selected="train")]

    buttons["clone"].click(clone, [run_select, lang_state],
                           train_tab.inputs + [train_tab.message, action_msg, tabs])


def wire_chat(run_select, button, action_msg, lang_state, chat_picks):
    """Chat with it, see open_chat. `chat_picks`: the tabs, the chat's base, adapter A and status line."""
    button.click(open_chat, [run_select, lang_state], [action_msg] + chat_picks)


def open_chat(run_id, lang: str) -> list:
    """The run's adapter (or its full model) opens in the Chat tab; for a run that stopped or failed
    before its end, its newest checkpoint, with a note in the chat's status line. Else a message
    here, and the chat's (tabs, base, adapter A, status) unchanged."""
    unchanged = [gr.skip()] * 4
    if not run_id:
        return [nothing_picked(lang)] + unchanged
    try:
        job = jobs.get(run_id)
        target = chat_choices.of_run(job)
    except WorkbenchError as e:
        return [failed(e, lang, RUN_FIELDS)] + unchanged
    state = t(f"state.{job.state}", lang)
    if isinstance(target, chat_choices.Checkpoint):
        note = t("runs.chat_checkpoint", lang, id=run_id, step=target.step, state=state)
        return ["", *chat_tab.open_on(target, lang, note)]
    if target is None:
        key = {"completed": "runs.adapter_deleted", "stopped": "runs.no_checkpoint",
               "failed": "runs.no_checkpoint"}.get(job.state, "runs.nothing_to_chat")
        if not Path(job.run_dir).exists() and job.state in ("stopped", "failed"):
            key = "runs.chat_folder_missing"
        return [t(key, lang, id=run_id, state=state, path=job.run_dir)] + unchanged
    return ["", *chat_tab.open_on(target, lang)]


def _mtime(path) -> float:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0

