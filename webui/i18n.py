"""Every user-visible string of the UI, English and 简体中文 side by side.

Field labels and hints of the run form are not here: they live with the RunConfig fields
(core/config.py), so the form, `--help` and validation messages read the same words.
"""
from __future__ import annotations

import html
import re

import gradio as gr

from core.config import field_meta
from core.errors import WorkbenchError
from webui.messages_zh import translated

LANGS = {"English": "en", "简体中文": "zh"}

STRINGS: dict[str, tuple[str, str]] = {
    "title": ("LoRA Workbench", "LoRA 工作台"),
    "header": ("## LoRA Workbench\nFine-tune a language model with LoRA, QLoRA or full training. "
               "Workspace: `{home}`",
               "## LoRA 工作台\n用 LoRA、QLoRA 或全量训练微调语言模型。工作区：`{home}`"),
    "language": ("Language", "界面语言"),
    # tabs
    "tab.data": ("Data", "数据"),
    "tab.train": ("Train", "训练"),
    "tab.runs": ("Runs", "运行"),
    "tab.library": ("Library", "适配器库"),
    "tab.chat": ("Chat", "对话"),
    # train tab
    "train.preset": ("Preset", "预设"),
    "train.preset_hint": ("Fills the form with a tested starting point.", "用经过验证的起点填充表单。"),
    "train.save_preset": ("Save as preset", "保存为预设"),
    "train.preset_name": ("Preset name", "预设名称"),
    "train.load_yaml": ("Load YAML", "加载 YAML"),
    "train.download_yaml": ("Download YAML", "下载 YAML"),
    "train.group.model": ("Model and method", "模型与方法"),
    "train.group.lora": ("LoRA", "LoRA"),
    "train.group.quant": ("QLoRA quantization", "QLoRA 量化"),
    "train.group.freeze": ("Freeze tuning", "冻结微调"),
    "train.group.training": ("Training", "训练参数"),
    "train.group.speed": ("Speed and memory", "速度与显存"),
    "train.group.data": ("Data", "数据"),
    "train.group.devices": ("GPUs and machines", "GPU 与多机"),
    "train.datasets": ("Datasets", "数据集"),
    "train.dataset_saved": ("{name} ({format}, {rows} rows)", "{name}（{format}，{rows} 行）"),
    "train.dataset_demo": ("{name} (demo)", "{name}（示例）"),
    "train.datasets_hint": ("Saved datasets and the demo files. Pick one or several.",
                            "已保存的数据集和演示文件。可选一个或多个。"),
    "train.ratios": ("Mix ratios", "混合比例"),
    "train.ratios_hint": ("One number per dataset, e.g. 0.9, 0.1 (90% domain + 10% general). Empty: every row once.",
                          "每个数据集一个数，如 0.9, 0.1（90% 领域 + 10% 通用）。留空：每行使用一次。"),
    "train.start": ("Start", "开始训练"),
    "train.preview": ("Config and command", "配置与命令"),
    "train.params_value": ("Trainable parameters: **{trainable:,}** of {total:,} ({share:.2f}%)",
                           "可训练参数：**{trainable:,}** / {total:,}（{share:.2f}%）"),
    "train.started": ("Run **{id}** queued (position {pos}). Follow it on the Runs tab.",
                      "运行 **{id}** 已排队（第 {pos} 位）。在“运行”页查看进度。"),
    "train.invalid": ("Cannot start: {error}", "无法开始：{error}"),
    "train.preset_saved": ("Saved preset **{name}**.", "已保存预设 **{name}**。"),
    "train.yaml_loaded": ("Loaded {file}.", "已加载 {file}。"),
    "train.cmd_single": ("Run it headless on this machine:", "在本机无界面运行："),
    "train.cmd_nodes": ("Run it on {n} machines: one command on each, with config.yaml and the data at the same "
                        "paths; node 0 ({host}) hosts the rendezvous on port {port}.",
                        "在 {n} 台机器上运行：每台运行一条命令，config.yaml 与数据放在相同路径；"
                        "节点 0（{host}）在端口 {port} 上主持会合。"),
    "train.cmd_node": ("node {rank}:", "节点 {rank}："),
    "train.cmd_more": ("... and the same with --node_rank {first} to {last}",
                       "……其余节点同上，--node_rank 取 {first} 到 {last}"),
    # memory panel
    "mem.title": ("GPU memory", "显存估算"),
    "mem.gpu": ("GPU", "GPU"),
    "mem.gpus": ("Number of GPUs", "GPU 数量"),
    "mem.total": ("Needs about **{total:.1f} GiB** per GPU on {gpu}: {verdict}.",
                  "每张 GPU 约需 **{total:.1f} GiB**（{gpu}）：{verdict}。"),
    "mem.fits": ("fits", "放得下"),
    "mem.tight": ("tight", "较紧张"),
    "mem.does not fit": ("does not fit", "放不下"),
    "mem.suggestions": ("Cheapest changes that make it fit", "让它放得下的最省事改动"),
    "mem.apply": ("Apply", "应用"),
    "mem.no_suggestion": ("No single change makes it fit; try a smaller model or more GPUs.",
                          "单项改动无法放下；请换更小的模型或使用更多 GPU。"),
    "mem.unknown": ("No estimate: {error}", "无法估算：{error}"),
    "mem.part.weights": ("weights", "权重"),
    "mem.part.adapters": ("adapters", "适配器"),
    "mem.part.gradients": ("gradients", "梯度"),
    "mem.part.optimizer": ("optimizer states", "优化器状态"),
    "mem.part.activations": ("activations", "激活"),
    "mem.part.logits": ("logits and loss", "logits 与损失"),
    "mem.part.cuda_context": ("CUDA context", "CUDA 上下文"),
    "mem.part.allocator_slack": ("allocator slack", "分配器余量"),
    # runs tab
    "runs.list": ("Runs", "运行列表"),
    "runs.memory": ("Memory: estimated {estimated} per GPU, measured peak {measured}",
                    "内存：估算每张 GPU {estimated}，实测峰值 {measured}"),
    "item_field": ("{item} {n}, {field}", "{item} {n} 的{field}"),
    "runs.then": ("{cause}; then {error}", "{cause}；随后：{error}"),
    "runs.setting": ("setting", "设置"),
    "runs.select": ("Run", "运行"),
    "runs.refresh": ("Refresh", "刷新"),
    "runs.stop": ("Stop", "停止"),
    "runs.resume": ("Resume", "继续"),
    "runs.rerun": ("Re-run", "重新运行"),
    "runs.clone": ("Clone into the form", "复制到表单"),
    "runs.remove": ("Remove from list", "从列表移除"),
    "runs.delete_files": ("Also delete its files (adapter, checkpoints, log)", "同时删除其文件（适配器、检查点、日志）"),
    "runs.removed_kept": ("Removed {id} from the list; its folder is kept: {path}",
                          "已从列表移除 {id}；其文件夹保留：{path}"),
    "runs.removed_deleted": ("Removed {id} and its files.", "已移除 {id} 及其文件。"),
    "runs.removed_missing": ("Removed {id} from the list.", "已从列表移除 {id}。"),
    "runs.folder_missing": ("folder deleted", "文件夹已删除"),
    "runs.folder_missing_note": ("This run's folder {path} was deleted; its log, charts and adapter are gone. "
                                 "Remove it from the list.",
                                 "此运行的文件夹 {path} 已被删除；日志、曲线和适配器都已不在。请将其从列表移除。"),
    "runs.stop_asked": ("Asked {id} to stop: it ends after its current step, with a checkpoint to resume from.",
                        "已请求 {id} 停止：它会在当前步结束后停止，并保存可继续的检查点。"),
    "runs.left_queue": ("{id} left the queue.", "{id} 已移出队列。"),
    "runs.chat": ("Chat with it", "与它对话"),
    "runs.nothing_to_chat": ("{id} is {state}: a run that completes puts its adapter in the Library, and one "
                             "that stops offers its newest checkpoint.",
                             "{id} 状态为{state}：运行完成后其适配器会进入适配器库，停止的运行提供其最新检查点。"),
    "runs.no_checkpoint": ("{id} is {state} and saved no checkpoint before it ended: there is nothing to chat "
                           "with. Re-run it.",
                           "{id} 状态为{state}，结束前没有保存检查点：没有可对话的内容。请重新运行。"),
    "runs.chat_folder_missing": ("{id} is {state} and its folder {path} was deleted, with its checkpoints: there is "
                                 "nothing to chat with.",
                                 "{id} 状态为{state}，其文件夹 {path} 连同检查点已被删除：没有可对话的内容。"),
    "runs.chat_checkpoint": ("{id} is {state}: you are chatting with its newest checkpoint, of step {step}. "
                             "Resume the run to finish its training.",
                             "{id} 状态为{state}：当前对话的是其最新检查点（第 {step} 步）。继续该运行可完成训练。"),
    "runs.adapter_deleted": ("{id} completed, but its adapter is no longer there: it was deleted from the "
                             "Library. Re-run it to train it again.",
                             "{id} 已完成，但其适配器已不在：它已从适配器库中删除。可重新运行以再次训练。"),
    "runs.up": ("Move up", "上移"),
    "runs.down": ("Move down", "下移"),
    "runs.log": ("Log", "日志"),
    "runs.compare": ("Compare runs", "对比运行"),
    "runs.compare_pick": ("Runs to overlay", "要叠加的运行"),
    "runs.differences": ("Settings that differ", "不同的设置"),
    "runs.pick_one": ("Pick a run first.", "请先选择一个运行。"),
    "runs.pick_gone": ("The run you picked, {id}, has left the list (removed here or elsewhere). Pick another.",
                       "你选中的运行 {id} 已移出列表（在此处或别处被移除）。请另选一个。"),
    "runs.no_run": ("No run yet: start one on the Train tab.", "还没有运行：请在“训练”页开始。"),
    "runs.cols": ("name|model|method|state|progress|ETA|started|duration|final loss",
                  "名称|模型|方法|状态|进度|剩余时间|开始|时长|最终损失"),
    "runs.cloned": ("The form now holds the config of {id}.", "表单已填入 {id} 的配置。"),
    "runs.done": ("{what}: {id}", "{what}：{id}"),
    "chart.loss": ("Loss", "损失"),
    "chart.lr": ("Learning rate", "学习率"),
    "chart.grad_norm": ("Grad norm", "梯度范数"),
    "chart.tokens": ("Tokens/s", "每秒 token 数"),
    "chart.memory": ("Peak memory (GiB)", "峰值内存（GiB）"),
    "chart.step": ("step", "步数"),
    "chart.train": ("train", "训练"),
    "chart.smoothed": ("smoothed", "平滑"),
    "chart.eval": ("eval", "评估"),
    "state.queued": ("queued", "排队中"),
    "state.starting": ("starting", "启动中"),
    "state.running": ("running", "训练中"),
    "state.completed": ("completed", "已完成"),
    "state.failed": ("failed", "失败"),
    "state.stopped": ("stopped", "已停止"),
    "state.stopping": ("stopping (saving a checkpoint)", "正在停止（保存检查点）"),
    # chat tab
    "chat.base": ("Base model", "基础模型"),
    "chat.base_hint": ("Loaded once and kept in memory; picking another releases it.",
                       "只加载一次并常驻内存；选择其他模型时释放。"),
    "chat.adapter_a": ("Adapter", "适配器"),
    "chat.list.library": ("{name} · {note} · library", "{name} · {note} · 库"),
    "chat.list.checkpoint": ("{name} · step {note} · checkpoint", "{name} · 第 {note} 步 · 检查点"),
    "chat.list.merged": ("{name} · merged · exports", "{name} · 合并模型 · exports"),
    "chat.adapter_b": ("Compare with", "对比对象"),
    "chat.no_adapter": ("(no adapter: the base model)", "（无适配器：基础模型）"),
    "chat.side_by_side": ("Side by side", "并排对比"),
    "chat.system": ("System prompt", "系统提示词"),
    "chat.sampling": ("Sampling", "采样参数"),
    "chat.temperature": ("Temperature", "温度"),
    "chat.temperature_hint": ("0 = greedy: the same answer every time.", "0 = 贪心解码：每次答案相同。"),
    "chat.top_p": ("top-p", "top-p"),
    "chat.top_k": ("top-k", "top-k"),
    "chat.max_new": ("Max new tokens", "最大生成 token 数"),
    "chat.repetition": ("Repetition penalty", "重复惩罚"),
    "chat.column_a": ("Reply", "回复"),
    "chat.column_b": ("Second reply", "第二个回复"),
    "chat.prompt": ("Message", "消息"),
    "chat.send": ("Send", "发送"),
    "chat.stop": ("Stop", "停止"),
    "chat.clear": ("Clear", "清空"),
    "chat.stats": ("first token after {ttft:.2f} s · {rate:.1f} tokens/s · {n} tokens",
                   "首个 token 用时 {ttft:.2f} 秒 · 每秒 {rate:.1f} 个 token · 共 {n} 个"),
    # data tab
    "data.upload": ("Upload data files (JSON, JSONL, CSV, Parquet, TXT; several at once)",
                    "上传数据文件（JSON、JSONL、CSV、Parquet、TXT；可多选）"),
    "data.hub": ("From the Hugging Face Hub", "来自 Hugging Face Hub"),
    "data.hub_id": ("Dataset id (owner/name)", "数据集 ID（owner/name）"),
    "data.hub_subset": ("Subset", "子集"),
    "data.hub_split": ("Split", "划分"),
    "data.hub_go": ("Fetch and save", "获取并保存"),
    "data.lf": ("A LLaMA-Factory data folder", "LLaMA-Factory 数据文件夹"),
    "data.lf_folder": ("Folder with dataset_info.json", "含 dataset_info.json 的文件夹"),
    "data.lf_go": ("Import its datasets", "导入其中的数据集"),
    "data.lf_none": ("Enter the folder first.", "请先填写文件夹。"),
    "data.format": ("Format", "格式"),
    "data.format_hint": ("auto detects it from the columns; pick one when detection is wrong.",
                         "auto 根据列名自动识别；识别有误时请手动选择。"),
    "data.model": ("Preview with model", "预览所用模型"),
    "data.model_hint": ("Its tokenizer and chat template render the preview.", "用其分词器和对话模板渲染预览。"),
    "data.max_len": ("Max length", "最大长度"),
    "data.train_on": ("Train on", "训练目标"),
    "data.n_samples": ("Samples to preview", "预览样本数"),
    "data.mapping": ("Column mapping", "列映射"),
    "data.problems": ("Problems (file, line, what is wrong)", "问题（文件、行号、原因）"),
    "data.problem_cols": ("file|line|problem", "文件|行号|问题"),
    "data.file_ok": ("**{file}**: {label} · {read} rows read, **{usable} usable**",
                     "**{file}**：{label} · 读取 {read} 行，**可用 {usable} 行**"),
    "data.file_error": ("**{file}**: cannot be used (see the problems below)", "**{file}**：无法使用（见下方问题）"),
    "data.tokens": ("tokens", "token 数"),
    "data.rows": ("rows", "行数"),
    "data.max_len_line": ("max length {n}", "最大长度 {n}"),
    "data.length_summary": ("{share:.1f}% of the rows ({n}) are longer than {max_len} tokens and would be cut. "
                            "A max length of **{p95}** keeps 95% whole, **{p99}** keeps 99% (longest: {longest}).",
                            "{share:.1f}% 的样本（{n} 条）超过 {max_len} 个 token，会被截断。最大长度设为 **{p95}** "
                            "可完整保留 95%，**{p99}** 可保留 99%（最长：{longest}）。"),
    "data.variant": (", {variant} form", "，{variant} 形式"),
    "data.with_tools": (" with tools", "，含工具"),
    "data.length_fits": ("No row is longer than {max_len} tokens: none is cut (longest: {longest}).",
                         "没有样本超过 {max_len} 个 token，不会截断（最长：{longest}）。"),
    "data.name": ("Dataset name", "数据集名称"),
    "data.save": ("Save to library", "保存到数据集库"),
    "data.nothing": ("Upload a file first.", "请先上传文件。"),
    "data.saved": ("Saved **{name}** ({rows} usable rows).", "已保存 **{name}**（可用 {rows} 行）。"),
    "data.library": ("Saved datasets", "已保存的数据集"),
    "data.lib_cols": ("name|format|rows|tokens|created|files", "名称|格式|行数|token 数|创建时间|文件"),
    "data.pick": ("Dataset", "数据集"),
    "data.pick_first": ("Pick a saved dataset first.", "请先选择一个已保存的数据集。"),
    "data.new_name": ("New name", "新名称"),
    "data.rename": ("Rename", "重命名"),
    "data.delete": ("Delete", "删除"),
    "data.use": ("Use in Train", "用于训练"),
    "data.renamed": ("Renamed to **{name}**.", "已重命名为 **{name}**。"),
    "data.deleted": ("Deleted **{name}**.", "已删除 **{name}**。"),
    "data.html.trained": ("trained on", "参与训练"),
    "data.html.masked": ("masked (not trained)", "已屏蔽（不训练）"),
    "data.html.sample": ("Sample {n}", "样本 {n}"),
    "data.html.line": ("line {line}", "第 {line} 行"),
    "data.html.tokens": ("{tokens} tokens, {trained} trained on", "{tokens} 个 token，其中 {trained} 个参与训练"),
    "data.html.truncated": (" (truncated from {full})", "（截断自 {full}）"),
    "data.html.dropped": ("dropped: {why}", "已丢弃：{why}"),
    # library tab
    "lib.filter": ("Base model", "基础模型"),
    "lib.all_bases": ("(all base models)", "（全部基础模型）"),
    "lib.refresh": ("Refresh", "刷新"),
    "lib.list": ("Adapters", "适配器"),
    "lib.cols": ("name|base model|method|train loss|eval loss|steps|rank/alpha|targets|datasets|size|created|source",
                 "名称|基础模型|方法|训练损失|评估损失|步数|秩/alpha|目标模块|数据集|大小|创建时间|来源"),
    "lib.pick": ("Adapter", "适配器"),
    "lib.none": ("Pick an adapter first.", "请先选择一个适配器。"),
    "lib.chat": ("Chat with it", "与它对话"),
    "lib.zip": ("Prepare zip", "打包 zip"),
    "lib.zip_ready": ("Download zip", "下载 zip"),
    "lib.config": ("Config", "配置"),
    "lib.combination": ("Combination", "组合方式"),
    "lib.memory": ("**Memory** · estimated {estimated} · measured {measured} {device}",
                   "**内存** · 估算 {estimated} · 实测 {measured} {device}"),
    "lib.manage": ("Rename or delete", "重命名或删除"),
    "lib.new_name": ("New name", "新名称"),
    "lib.rename": ("Rename", "重命名"),
    "lib.confirm": ("Yes, delete its files", "确认删除其文件"),
    "lib.confirm_first": ("Tick the confirmation box first.", "请先勾选确认框。"),
    "lib.delete": ("Delete", "删除"),
    "lib.renamed": ("Renamed to **{name}**.", "已重命名为 **{name}**。"),
    "lib.deleted": ("Deleted **{name}**.", "已删除 **{name}**。"),
    "lib.import": ("Import an adapter", "导入适配器"),
    "lib.import_zip": ("PEFT adapter as .zip", "PEFT 适配器 .zip"),
    "lib.import_folder": ("…or a folder on this machine", "……或本机上的文件夹"),
    "lib.import_source": ("Adapter to import", "要导入的适配器"),
    "lib.import_base": ("Base model (if the adapter does not name it)", "基础模型（适配器未注明时）"),
    "lib.import_go": ("Import", "导入"),
    "lib.import_nothing": ("Upload a zip or name a folder.", "请上传 zip 或填写文件夹。"),
    "lib.imported": ("Imported **{name}**.", "已导入 **{name}**。"),
    "lib.merge": ("Merge into the base model and export", "合并到基础模型并导出"),
    "lib.export_name": ("Export name", "导出名称"),
    "lib.dtype": ("Precision", "精度"),
    "lib.merge_go": ("Merge and export", "合并并导出"),
    "lib.merged": ("Exported a full model to `{path}`.", "已导出完整模型到 `{path}`。"),
    "lib.exports": ("Merged models (exports/)", "合并后的模型（exports/）"),
    "lib.export_cols": ("name|size|created|adapter|base model", "名称|大小|创建时间|适配器|基础模型"),
    "lib.export_pick": ("Merged model", "合并后的模型"),
    "lib.no_export": ("Pick a merged model first.", "请先选择一个合并后的模型。"),
    "lib.mix": ("Mix adapters", "混合适配器"),
    "lib.mix_pick": ("Adapters of one base model", "同一基础模型的适配器"),
    "lib.weights": ("Weights", "权重"),
    "lib.weights_hint": ("One per adapter, e.g. 0.7, 0.3.", "每个适配器一个，如 0.7, 0.3。"),
    "lib.density": ("Density (ties, dare_ties)", "密度（ties、dare_ties）"),
    "lib.mix_go": ("Mix", "混合"),
    "lib.mixed": ("Created **{name}**.", "已创建 **{name}**。"),
    "error": ("Error: {error}", "错误：{error}"),
    "colon": (": ", "："),
    "comma": (", ", "，"),
}


def t(key: str, lang: str = "en", **fmt) -> str:
    en, zh = STRINGS[key]
    text = zh if lang == "zh" else en
    return text.format(**fmt) if fmt else text


def failed(e: WorkbenchError, lang: str, labels: dict[str, str] | None = None) -> str:
    """An error for a tab's message box: the box to blame by its label (`labels` maps the field names
    core raises with to the tab's label keys; others are left out, the box being the one just used),
    the file and line, then what is wrong. The Train form shows config keys, see describe_error."""
    key = (labels or {}).get(e.field or "")
    return t("error", lang, error=_joined(f"**{t(key, lang)}**" if key else "", e, lang))


def _where(e: WorkbenchError) -> str:
    return f"`{e.file}:{e.line}`" if e.file and e.line else (f"`{e.file}`" if e.file else "")


def explained(e: WorkbenchError, lang: str) -> str:
    """What is wrong and what to do, in the UI's language, for Markdown: a '<' in a value (a file's
    own words, a path) is text, not a tag the page would drop."""
    text = html.escape(translated(e.message, lang), quote=False)
    if not e.hint:
        return text
    hint = html.escape(translated(e.hint, lang), quote=False)
    return f"{text}（{hint}）" if lang == "zh" else f"{text} ({hint})"


def plain(markdown: str) -> str:
    """An error's Markdown as plain text, for a code view or an HTML box."""
    return html.unescape(markdown.replace("**", "").replace("`", ""))


def describe_error(e: WorkbenchError, lang: str, labels: dict[str, str] | None = None) -> str:
    """The field by its label and key, the file (and line) when one is to blame, then what is wrong.
    `labels` names the boxes beside the form (the preset's name) by their label keys."""
    return _joined(_named(e, lang, labels), e, lang)


def _joined(named: str, e: WorkbenchError, lang: str) -> str:
    """The field, the file and line, then what is wrong."""
    head = t("comma", lang).join(x for x in (named, _where(e)) if x)
    text = explained(e, lang)
    return f"{head}{t('colon', lang)}{text}" if head else text


def _named(e: WorkbenchError, lang: str, labels: dict[str, str] | None) -> str:
    """The field to blame: a box by its label, or a config key with its label when it has one."""
    if not e.field:
        return ""
    key = (labels or {}).get(e.field)
    if key:
        return f"**{t(key, lang)}**"
    label = _label(e.field, lang)
    if not label or label == e.field:
        return f"`{e.field}`"
    return f"**{label}**（`{e.field}`）" if lang == "zh" else f"**{label}** (`{e.field}`)"


def _label(field: str, lang: str) -> str | None:
    """A field's label; 'datasets.1' is the second of the datasets, 'datasets.1.ratio' its mix ratio."""
    item = re.fullmatch(r"(.+)\.(\d+)(?:\.(.+))?", field)
    try:
        if item and item.group(3):
            return t("item_field", lang, field=field_label(f"{item.group(1)}.{item.group(3)}", lang),
                     item=field_label(item.group(1), lang), n=int(item.group(2)) + 1)
        if item:
            return f"{field_label(item.group(1), lang)} {int(item.group(2)) + 1}"
        return field_label(field, lang)
    except (KeyError, TypeError):
        return None


def field_label(dotted: str, lang: str = "en") -> str:
    meta = field_meta(dotted)
    label = meta.get("label_zh") if lang == "zh" else meta.get("label")
    return label or dotted.rsplit(".", 1)[-1].replace("_", " ")


def field_help(dotted: str, lang: str = "en") -> str:
    meta = field_meta(dotted)
    return meta.get("help_zh") if lang == "zh" else meta.get("help", "")


class Translator:
    """Remembers which component shows which string, so the language switch can relabel them all."""

    def __init__(self):
        self.entries: list[tuple[object, str, str, dict]] = []

    def add(self, component, key: str, kind: str = "label", **fmt):
        """kind: label; field (label + hint of a RunConfig field); value (buttons, markdown);
        labelinfo (label from 'key', hint from 'key_hint')."""
        self.entries.append((component, key, kind, fmt))
        return component

    def components(self) -> list:
        return [c for c, _, _, _ in self.entries]

    def updates(self, lang: str) -> list:
        out = []
        for _, key, kind, fmt in self.entries:
            if kind == "field":
                out.append(gr.update(label=field_label(key, lang), info=field_help(key, lang)))
            elif kind == "value":
                out.append(gr.update(value=t(key, lang, **fmt)))
            elif kind == "labelinfo":
                out.append(gr.update(label=t(key, lang), info=t(f"{key}_hint", lang)))
            else:
                out.append(gr.update(label=t(key, lang, **fmt)))
        return out
