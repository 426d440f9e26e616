"""Train tab: presets, the run form (built from RunConfig), the config preview and Start."""
from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from core import chat_choices, devices, jobs, launch, presets
from core.dataset_library import list_datasets
from core.arch import list_cards
from core.config import RunConfig
from core.errors import WorkbenchError
from webui import memory_panel
from webui.form import GROUPS, METHOD_LR, Form, build_group
from webui.i18n import Translator, describe_error, plain, t

GROUP_TITLES = {"model": "train.group.model", "lora": "train.group.lora", "quant": "train.group.quant",
                "freeze": "train.group.freeze", "training": "train.group.training",
                "speed": "train.group.speed", "data": "train.group.data", "devices": "train.group.devices"}
SHOWN_NODES = 16          # node commands printed in full; the rest differ only in --node_rank
REPEAT_WINDOW_S = 30      # Start again with the same form within this: the same run, not a second one
# The config behind the Download button, rewritten on every form change: one file per browser tab.
_DOWNLOADS = Path(tempfile.mkdtemp(prefix="workbench-configs-"))
atexit.register(shutil.rmtree, _DOWNLOADS, True)


@dataclass
class TrainTab:
    form: Form
    datasets: gr.Dropdown
    ratios: gr.Textbox
    groups: dict
    message: gr.Markdown
    preview: gr.Code
    on_load: tuple = ()        # (fn, inputs, outputs) that draws what depends on the whole form

    @property
    def inputs(self) -> list:
        return self.form.inputs + [self.datasets, self.ratios]

    def fill(self, cfg: RunConfig, lang: str) -> list:
        """Values for `inputs` that show this config."""
        ratios = ", ".join(f"{s.ratio:g}" for s in cfg.datasets) if any(s.ratio for s in cfg.datasets) else ""
        paths = [s.path for s in cfg.datasets]
        return self.form.values(cfg) + [gr.update(value=paths, choices=dataset_choices(paths, lang)), ratios]


def dataset_choices(extra: list[str] | None, lang: str) -> list[tuple[str, str]]:
    """Saved datasets and the shipped demo files (label, value), then the picks `extra` holds beside them."""
    choices = [(t("train.dataset_saved", lang, name=d.name, format=d.format or "?", rows=d.rows_usable or d.rows or 0),
                d.name) for d in list_datasets()]
    for p in sorted((presets.SHIPPED / "data").glob("*")):
        choices.append((t("train.dataset_demo", lang, name=p.name), str(p)))
    values = {v for _, v in choices}
    choices += [(Path(v).name, v) for v in extra or [] if v not in values]
    return choices


def model_choices() -> list[tuple[str, str]]:
    """The models of this workspace (the embedded one, the library's bases, fully trained models and
    merged exports, to train further), then the shipped cards' hub ids."""
    local = [(b.label, b.value) for b in chat_choices.bases()]
    known = {v for _, v in local}
    return local + [(m, m) for m in dict.fromkeys(c["hub_id"] or c["name"] for c in list_cards()) if m not in known]


def config_from_inputs(tab: TrainTab, values: list) -> RunConfig:
    """The form's values as a validated RunConfig (raises ConfigError naming the field)."""
    n = len(tab.form.names)
    data = tab.form.to_dict(values[:n])
    paths, ratios = values[n] or [], (values[n + 1] or "").strip()
    paths = [paths] if isinstance(paths, str) else list(paths)
    specs = [{"path": p} for p in paths]
    if ratios:
        try:
            numbers = [float(x) for x in ratios.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            raise WorkbenchError("mix ratios must be numbers separated by commas", field="datasets") from None
        if len(numbers) != len(specs):
            raise WorkbenchError(f"{len(numbers)} mix ratios for {len(specs)} datasets", field="datasets")
        for spec, r in zip(specs, numbers):
            spec["ratio"] = r
    data["datasets"] = specs
    return RunConfig.from_dict(data)


def preview_text(cfg: RunConfig, lang: str) -> str:
    return f"# config.yaml\n{cfg.to_yaml()}\n{command_text(cfg, lang)}"


def command_text(cfg: RunConfig, lang: str) -> str:
    """The command Start runs (one per node for several machines), as YAML comments."""
    lines = launch.node_commands(cfg, "config.yaml", devices.cuda_count())
    if cfg.nodes.count == 1:
        return f"# {t('train.cmd_single', lang)}\n# {lines[0]}\n"
    n = cfg.nodes
    out = [t("train.cmd_nodes", lang, n=n.count, host=n.host, port=n.port)]
    for rank, line in enumerate(lines[:SHOWN_NODES]):
        out += [t("train.cmd_node", lang, rank=rank), line]
    if n.count > SHOWN_NODES:
        out.append(t("train.cmd_more", lang, first=SHOWN_NODES, last=n.count - 1))
    return "".join(f"# {line}\n" for line in out)


def build(tr: Translator, lang_state: gr.State, lang: str = "en") -> TrainTab:
    cfg = presets.load(presets.DEFAULT_PRESET)
    form = Form()
    groups = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                preset = tr.add(gr.Dropdown(choices=list(presets.available()), value=presets.DEFAULT_PRESET,
                                            label=t("train.preset", lang), info=t("train.preset_hint", lang),
                                            elem_id="preset", scale=3), "train.preset", "labelinfo")
                preset_name = tr.add(gr.Textbox(label=t("train.preset_name", lang), scale=2, max_lines=1),
                                     "train.preset_name")
                save_preset = tr.add(gr.Button(t("train.save_preset", lang), scale=1), "train.save_preset", "value")
            for group in GROUPS:
                visible = group not in ("quant", "freeze")
                with tr.add(gr.Accordion(t(GROUP_TITLES[group], lang), open=group in ("model", "lora", "data"),
                                         visible=visible, elem_id=f"group-{group}"),
                            GROUP_TITLES[group]) as acc:
                    groups[group] = acc
                    if group == "data":
                        # Any path is accepted here and checked by RunConfig: a cloned run's datasets
                        # need not be among the choices this page was drawn with.
                        datasets = tr.add(gr.Dropdown(
                            choices=dataset_choices([s.path for s in cfg.datasets], lang),
                            value=[s.path for s in cfg.datasets], multiselect=True, allow_custom_value=True,
                            label=t("train.datasets", lang),
                            info=t("train.datasets_hint", lang), elem_id="datasets"), "train.datasets", "labelinfo")
                        ratios = tr.add(gr.Textbox(label=t("train.ratios", lang), info=t("train.ratios_hint", lang),
                                                   max_lines=1, elem_id="ratios"), "train.ratios", "labelinfo")
                    build_group(form, group, cfg, lang, tr, model_choices=model_choices(),
                                gpu_choices=devices.choices(devices.cuda_count()))
        with gr.Column(scale=2):
            start = tr.add(gr.Button(t("train.start", lang), variant="primary", elem_id="start"), "train.start",
                           "value")
            message = gr.Markdown(elem_id="train-message")
            panel = memory_panel.build(tr, lang)
            with tr.add(gr.Accordion(t("train.preview", lang), open=False, elem_id="preview-box"), "train.preview"):
                preview = gr.Code(value=preview_text(cfg, lang), language="yaml", elem_id="preview")
                with gr.Row():
                    load_yaml = tr.add(gr.UploadButton(t("train.load_yaml", lang), file_types=[".yaml", ".yml"],
                                                       elem_id="load-yaml"), "train.load_yaml")
                    download = tr.add(gr.DownloadButton(t("train.download_yaml", lang), elem_id="download-yaml"),
                                      "train.download_yaml")
    tab = TrainTab(form, datasets, ratios, groups, message, preview)
    nonce = gr.State(lambda: uuid.uuid4().hex)
    _wire_form(tab, lang_state, preset, download)
    _wire_start(tab, lang_state, start, nonce)
    _wire_files(tab, lang_state, preset, preset_name, save_preset, load_yaml)
    _wire_memory(tab, panel, lang_state)
    # Datasets saved since the page was drawn (the Train tab opens first, so no tab switch refreshes it),
    # and their labels in the language just picked.
    gr.on([datasets.focus, lang_state.change], lambda chosen, lang: gr.update(choices=dataset_choices(chosen, lang)),
          [datasets, lang_state], datasets, show_progress="hidden")
    return tab


def _wire_memory(tab: TrainTab, panel, lang_state) -> None:
    """The panel follows every change of the form, the GPU choice and the GPU count."""
    def update(gpu_gib, gpus, lang, *values):
        try:
            cfg, error = config_from_inputs(tab, list(values)), None
        except WorkbenchError as e:
            cfg, error = None, describe_error(e, lang)
        return memory_panel.render(cfg, error, float(gpu_gib), 1 if gpus is None else int(gpus), lang)

    inputs = [panel.gpu, panel.gpus, lang_state] + tab.inputs
    _follow_devices(tab, panel)
    _refresh_models(tab)
    triggers = [c.change for c in tab.inputs] + [panel.gpu.change, panel.gpus.change, lang_state.change]
    # A preset changes some fifty fields at once: one estimate for the last of them, not one for each.
    gr.on(triggers, update, inputs, panel.outputs, show_progress="hidden", trigger_mode="always_last")
    tab.on_load = (update, inputs, panel.outputs)

    def apply(index, overrides, lang, *values):
        try:
            cfg = config_from_inputs(tab, list(values)).with_overrides(overrides[index])
        except (WorkbenchError, IndexError):
            return [gr.skip()] * len(tab.inputs)
        return tab.fill(cfg, lang)

    for i, button in enumerate(panel.apply):
        button.click(apply, [gr.State(i), panel.overrides, lang_state] + tab.inputs, tab.inputs)


def _follow_devices(tab: TrainTab, panel) -> None:
    """The panel's GPU count follows the run's own device choice (every GPU of every node)."""
    spec, nodes = tab.form.components["gpus"], tab.form.components["nodes.count"]

    def count(gpus, n):
        return devices.gpus_for_estimate(str(gpus or ""), int(n or 1), devices.cuda_count())

    gr.on([spec.change, nodes.change], count, [spec, nodes], panel.gpus, show_progress="hidden")


def _refresh_models(tab: TrainTab) -> None:
    """A model merged or trained since the page was drawn is among the choices when the list opens."""
    model = tab.form.components["model"]
    model.focus(lambda: gr.update(choices=model_choices()), None, model, show_progress="hidden")


def _wire_form(tab: TrainTab, lang_state, preset, download) -> None:
    """A preset fills the form; the method shows its groups; every change (of the language too) redraws
    the preview."""
    def on_preset(name, lang):
        try:
            return tab.fill(presets.load(name), lang) + [""]
        except WorkbenchError as e:
            return [gr.skip()] * len(tab.inputs) + [t("error", lang, error=describe_error(e, lang,
                                                                                       {"preset": "train.preset"}))]

    preset.input(on_preset, [preset, lang_state], tab.inputs + [tab.message])

    method = tab.form.components["method"]
    lr = tab.form.components["train.learning_rate"]

    def on_method(m, current_lr):
        lr_value = METHOD_LR[m] if current_lr in METHOD_LR.values() else current_lr
        return (gr.update(visible=m in ("lora", "qlora")), gr.update(visible=m == "qlora"),
                gr.update(visible=m == "freeze"), lr_value)

    method.change(on_method, [method, lr], [tab.groups["lora"], tab.groups["quant"], tab.groups["freeze"], lr])

    def on_change(request: gr.Request, lang, *values):
        try:
            cfg = config_from_inputs(tab, list(values))
        except WorkbenchError as e:
            return f"# {plain(describe_error(e, lang))}\n", gr.update(value=None)
        path = _DOWNLOADS / (request.session_hash or "local") / "config.yaml"     # one file per browser tab
        path.parent.mkdir(exist_ok=True)
        path.write_text(cfg.to_yaml())
        return preview_text(cfg, lang), gr.update(value=str(path))

    gr.on([c.change for c in tab.inputs] + [lang_state.change], on_change, [lang_state] + tab.inputs,
          [tab.preview, download], show_progress="hidden", trigger_mode="always_last")


def _wire_start(tab: TrainTab, lang_state, start, nonce) -> None:
    def on_start(lang, key, last, *values):
        """Clicks queue one after another; one that repeats the tab's last start within
        REPEAT_WINDOW_S (an impatient second or third click) is answered with that run."""
        try:
            cfg = config_from_inputs(tab, list(values))
            if not cfg.datasets:
                raise WorkbenchError("pick at least one dataset", field="datasets")
            text = cfg.to_yaml()
            if last and last["config"] == text and time.time() - last["at"] < REPEAT_WINDOW_S:
                job = jobs.get(last["id"])
            else:
                job = jobs.submit(cfg, request_key=key)
        except WorkbenchError as e:
            return t("train.invalid", lang, error=describe_error(e, lang)), key, last
        pos = jobs.queue_position(job.id) or 1
        return t("train.started", lang, id=job.id, pos=pos), uuid.uuid4().hex, \
            {"config": text, "at": time.time(), "id": job.id}

    last_start = gr.State(None)
    start.click(on_start, [lang_state, nonce, last_start] + tab.inputs, [tab.message, nonce, last_start],
                concurrency_limit=1)


def _wire_files(tab: TrainTab, lang_state, preset, preset_name, save_preset, load_yaml) -> None:
    """Save the form as a preset; load a config.yaml into it."""
    def on_save(name, lang, *values):
        try:
            presets.save(name, config_from_inputs(tab, list(values)))
        except WorkbenchError as e:
            return t("error", lang, error=describe_error(e, lang, {"preset": "train.preset_name"})), gr.skip()
        return t("train.preset_saved", lang, name=presets.safe_name(name)), gr.update(choices=list(presets.available()))

    save_preset.click(on_save, [preset_name, lang_state] + tab.inputs, [tab.message, preset])

    def on_load(file, lang):
        try:
            cfg = RunConfig.load(file)
        except WorkbenchError as e:
            if e.file and Path(e.file) == Path(file):      # the name it was uploaded with, not gradio's copy
                e.file = Path(file).name
            return [gr.skip()] * len(tab.inputs) + [t("error", lang, error=describe_error(e, lang))]
        return tab.fill(cfg, lang) + [t("train.yaml_loaded", lang, file=Path(file).name)]

    load_yaml.upload(on_load, [load_yaml, lang_state], tab.inputs + [tab.message])

