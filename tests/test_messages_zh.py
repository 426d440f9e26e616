"""The 简体中文 UI reads core's errors in Chinese: every message core raises has its entry, each
entry carries every value, and real errors come out translated with their values."""
import ast
import json
import re
import string

import pytest

from conftest import ROOT
from core.config import RunConfig
from core.data import check_file
from core.errors import ConfigError, WorkbenchError
from webui.i18n import describe_error, failed
from webui.messages_zh import TABLE, translated

NOT_OURS = {"KeyError", "ValueError", "TypeError", "ConnectionError", "RuntimeError", "OSError"}


def template(node) -> str | None:
    """A message as written in the source: its text, with `{}` for each value; None if computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.replace("{", "{{").replace("}", "}}")
    if isinstance(node, ast.JoinedStr):
        return "".join(template(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = template(node.left), template(node.right)
        return None if left is None or right is None else left + right
    return None


def messages(node: ast.Call) -> list:
    """The message and hint arguments of an error or a row problem."""
    name = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
    if not (name.endswith("Error") and name not in NOT_OURS or name in ("RowProblem", "Problem")):
        return []
    position = 1 if name == "Problem" else 0
    args = node.args[position:position + 1] + [k.value for k in node.keywords if k.arg == "hint"]
    return [b for a in args for b in ((a.body, a.orelse) if isinstance(a, ast.IfExp) else (a,))]


# Functions that write why a run or a command failed from pieces held in variables: every text in them.
REASONS = {"_death_reason", "root_cause", "out_of_memory_message", "_watch", "refusal"}


def reasons(node) -> list:
    """A run's error given as `error=...`, and what a function that builds one assigns and returns."""
    if isinstance(node, ast.Call):
        values = [k.value for k in node.keywords if k.arg == "error"]
    elif isinstance(node, ast.FunctionDef) and node.name in REASONS:
        values = [n.value for n in ast.walk(node) if isinstance(n, (ast.Assign, ast.Return)) and n.value]
    else:
        return []
    return [b for a in values for b in ((a.body, a.orelse) if isinstance(a, ast.IfExp) else (a,))]


def templates(only_raised: bool) -> dict[str, str]:
    """Every literal message raised in core/ and webui/ (or every string written there), with where it is."""
    found = {}
    for path in sorted((ROOT / "core").glob("*.py")) + sorted((ROOT / "webui").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if only_raised:
                args = (messages(node) if isinstance(node, ast.Call) else []) + reasons(node)
            else:
                args = [node] if isinstance(node, (ast.JoinedStr, ast.Constant)) else []
            for arg in args:
                text = template(arg)
                if text is not None and text.replace("{}", "").strip():
                    found.setdefault(text, f"{path.relative_to(ROOT)}:{arg.lineno}")
    return found


def json_messages() -> set[str]:
    """What Python's json says of broken files (a value in core's "not valid JSON: ..." messages)."""
    said = set()
    for broken in ('{"a" 1}', "[1 2]", "", "{a: 1}", '"abc', "[1] x", '{"a": "\x01"}', '"\\q"'):
        try:
            json.loads(broken)
        except json.JSONDecodeError as e:
            said.add(e.msg)
    return said


def table() -> dict[str, str]:
    return json.loads(TABLE.read_text(encoding="utf-8"))


def test_every_message_raised_has_its_chinese_and_no_entry_is_stale():
    found, zh = templates(only_raised=True), table()
    assert len(found) > 200
    missing = {text: where for text, where in found.items() if text not in zh}
    assert not missing, f"add these to {TABLE.name}: {missing}"
    stale = sorted(set(zh) - set(templates(only_raised=False)) - json_messages())
    assert not stale, f"no longer written anywhere, remove from {TABLE.name}: {stale}"


@pytest.mark.parametrize("en, zh", table().items())
def test_each_entry_carries_every_value(en, zh):
    assert "{}{}" not in en            # two values side by side could not be told apart
    count = sum(1 for _, name, _, _ in string.Formatter().parse(en) if name is not None)
    used = {name for _, name, _, _ in string.Formatter().parse(zh) if name is not None}
    assert used == {str(i) for i in range(count)}
    assert any(ch >= "\u2e80" for ch in zh)          # Chinese words or punctuation
    values = [f"<{i}>" for i in range(count)]
    assert translated(en.format(*values), "zh") == zh.replace("!n}", "}").format(*values)


def test_a_config_error_reads_in_chinese_with_its_value_and_field():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"train": {"max_steps": "many"}})
    assert describe_error(e.value, "en").endswith("expected a whole number, got 'many'")
    zh = describe_error(e.value, "zh")
    assert zh.endswith("应为整数，实际为 'many'") and "`train.max_steps`" in zh


def test_a_data_error_names_its_file_and_line_in_chinese(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"\n')
    with pytest.raises(WorkbenchError) as e:
        check_file(bad)
    text = failed(e.value, "zh")
    assert text.startswith("错误：") and f"`{bad}:2`" in text
    assert not any(word in text.split(":2`")[1] for word in ("not valid", "line")), text


def test_hints_values_that_are_messages_and_unknown_text():
    e = WorkbenchError("no preset named 'x'", hint="upload the files instead")
    assert failed(e, "zh") == "错误：没有名为 'x' 的预设（请改为上传文件）"
    assert translated("no usable rows (e.g. line 3: missing field 'output')", "zh") == \
        "没有可用的行（例如第 3 行：缺少字段 'output'）"
    assert translated("something core never says", "zh") == "something core never says"
    assert translated("no run 'a'", "en") == "no run 'a'"


def test_a_broken_json_file_and_an_unknown_key_read_wholly_in_chinese(tmp_path):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"lora": {"rnak": 8}})
    assert describe_error(e.value, "zh") == "`lora.rnak`：未知的键（是不是想写 'lora.rank'？）"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "q" "output": "a"}]')
    with pytest.raises(WorkbenchError) as e:
        check_file(bad)
    assert failed(e.value, "zh") == f"错误：`{bad}:1`：不是有效的 JSON：缺少 ','"


def test_the_memory_panels_changes_read_in_chinese():
    """Every change the panel can offer, alone or combined, in the 简体中文 UI."""
    from core import vram
    from core.arch import load_arch

    arch = load_arch("Llama-3.1-8B")
    seen = set()
    for method, extra in (("lora", {}), ("full", {}), ("qlora", {"quant": {"upcast_unquantized": True}})):
        run = RunConfig.from_dict({"model": "Llama-3.1-8B", "method": method, "data": {"max_seq_len": 4096},
                                   "train": {"batch_size": 8, "grad_accum": 2, "fused_loss": False,
                                             "gradient_checkpointing": False}, **extra})
        for gpu in (80, 40, 24, 16, 12):
            for s in vram.suggestions(run, gpu, arch=arch):
                for part in s.description.split("; "):
                    seen.add(part.split(" ")[0])
                    zh = translated(part, "zh")
                    assert zh != part and any("\u4e00" <= ch <= "\u9fff" for ch in zh), part
                assert "; " not in translated(s.description, "zh")
    assert len(seen) >= 6, seen


def test_the_out_of_memory_advice_reads_in_chinese(monkeypatch):
    """Its list of changes (a combined one among them) is translated change by change; the settings
    to type stay as written."""
    from core import train, vram

    cfg = RunConfig.from_dict({"model": "Llama-3.1-8B", "method": "lora", "data": {"max_seq_len": 4096},
                               "train": {"batch_size": 8, "fused_loss": False, "gradient_checkpointing": False}})
    monkeypatch.setattr(vram, "detected_gpus", lambda: [vram.Gpu("GPU 0: NVIDIA H100", 80, 79.19)])
    msg = train.out_of_memory_message(cfg)
    zh = translated(msg, "zh")
    assert msg.count("\n- about ") == 3 and any("; " in line for line in msg.splitlines()), msg
    assert zh.startswith("GPU 0: NVIDIA H100（79 GiB）显存不足。可放入显存的调整：\n- 约 "), zh
    assert "train.fused_loss=true" in zh and "train.batch_size=" in zh, zh
    english = re.findall(r"\b(?:about|with|memory|the|batch|loss|gradient|steps)\b", re.sub(r"\S*=\S*", "", zh))
    assert not english, (english, zh)


def test_a_tag_like_value_stays_text_and_a_code_view_gets_no_markup():
    from webui.i18n import plain

    e = WorkbenchError("not a readable Parquet file (Could not open Parquet input source '<Buffer>')",
                       field="lora.rank")
    assert "&lt;Buffer&gt;" in failed(e, "en") and "<Buffer>" not in failed(e, "en")
    assert plain(describe_error(e, "en")) == ("Rank (lora.rank): not a readable Parquet file (Could not open "
                                              "Parquet input source '<Buffer>')")
    assert plain(describe_error(e, "zh")).startswith("秩（lora.rank）：不是可读取的 Parquet 文件")


def test_values_that_are_words_are_translated_and_quoted_names_kept():
    assert translated("-1.0 is too small: must be greater than 0.0", "zh") == "-1.0 过小：必须大于 0.0"
    assert translated("field 'messages' should be text, got a list", "zh") == "字段 'messages' 应为文本，实际为 列表"
    assert translated("missing field 'text'", "zh") == "缺少字段 'text'"          # a column named text
    assert translated("exports/mixed already exists; choose another name", "zh") == "exports/mixed 已存在；请换一个名称"
    assert translated("only a queued run can be moved; this one is failed", "zh").endswith("此运行状态为 失败")


def test_the_tabs_words_from_core_read_in_chinese():
    from types import SimpleNamespace

    from webui.data_tab import format_label
    from webui.runs_tab import memory_line

    report = SimpleNamespace(format="messages", variant=None, features={"tools": 3},
                             label="Chat messages (role / content) with tools")
    assert format_label(report, "zh") == "对话消息（role / content），含工具"
    assert format_label(report, "en") == report.label
    line = memory_line({"estimate_gib": 1.5, "peak_mem_gib": 2.0, "mem_device": "cpu (peak RSS)"}, "zh")
    assert "实测峰值 2.00 GiB (CPU 峰值常驻内存)" in line


def test_a_field_is_named_once_and_a_box_beside_the_form_by_its_label():
    assert describe_error(ConfigError("expected a mapping, got 5", field="train"), "en") == \
        "`train`: expected a mapping, got 5"
    refused = ConfigError("give the preset a name (letters, digits, - _ .)", field="preset")
    assert describe_error(refused, "zh", {"preset": "train.preset_name"}) == \
        "**预设名称**：请为预设命名（字母、数字、- _ .）"


def test_an_empty_llamafactory_folder_box_asks_for_the_folder():
    from webui.data_tab import do_lf

    assert do_lf("  ", "zh")[0] == "请先填写文件夹。"


@pytest.mark.parametrize("elem_id", ["preview", "datasets"])
def test_the_train_preview_and_dataset_list_are_redrawn_by_a_language_switch(elem_id, tmp_path, monkeypatch):
    """The language lives in a gr.State; its change is one of the box's triggers."""
    import gradio as gr

    from webui import app

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "workspace"))
    demo = app.build()
    box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    states = {i for i, b in demo.blocks.items() if isinstance(b, gr.State)}
    drawing = [d for d in demo.config["dependencies"] if box._id in d["outputs"]]
    assert any(block in states and event == "change" for d in drawing for block, event in d["targets"])


def test_the_train_dataset_list_reads_in_chinese(workspace):
    from core.dataset_library import save_dataset
    from webui.train_tab import dataset_choices

    save_dataset("mine", [ROOT / "presets" / "data" / "identity.jsonl"])
    labels = [label for label, _ in dataset_choices(None, "zh")]
    assert labels[0].startswith("mine（") and labels[0].endswith(" 行）"), labels
    assert all(label.endswith("（示例）") for label in labels[1:]) and len(labels) > 1, labels


def test_an_error_written_as_a_dict_comes_back_whole_or_not_at_all():
    e = ConfigError("too small", field="lora.rank", file="c.yaml", line=3, hint="raise it")
    back = WorkbenchError.from_dict(e.to_dict())
    assert back.to_dict() == e.to_dict()
    assert WorkbenchError.from_dict({"message": "m", "unknown": 1}) is None
    assert WorkbenchError.from_dict(None) is None and WorkbenchError.from_dict({"message": ""}) is None
