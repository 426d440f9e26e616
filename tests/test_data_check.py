"""The validation report, bad input, the loss-mask preview and token lengths; LLaMA-Factory's
public demo files (tests/fixtures/llamafactory) as real-world input."""
import json
from pathlib import Path

import pytest

from core.data import check_file, check_files
from core.encode import IGNORE, encode_sample
from core.errors import DataError
from core.models import ResolvedModel, load_tokenizer
from core.preview import length_stats, preview, preview_html

FIXTURES = Path(__file__).parent / "fixtures" / "llamafactory"


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(ResolvedModel(str(tiny_model), "local", "tiny"))


def jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def problems(report):
    return {p.line: p for p in report.problems}


# --- formats ---------------------------------------------------------------------------------

def test_chat_messages(tmp_path):
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"},
             {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"},
             {"role": "assistant", "content": "A2"}]
    report = check_file(jsonl(tmp_path / "chat.jsonl", [{"messages": turns}]))
    assert report.format == "messages" and report.rows_usable == 1
    assert report.features == {"tools": 0, "system": 1, "multi_turn": 1, "tool_results": 0}


def test_sharegpt_with_tools_is_detected_and_shown(tmp_path):
    row = {"conversations": [{"from": "human", "value": "weather?"}, {"from": "function_call", "value": "{}"},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}],
           "tools": '[{"name": "weather"}]'}
    report = check_file(jsonl(tmp_path / "tools.jsonl", [row]))
    assert report.format == "sharegpt" and "with tools" in report.label
    assert report.features["tools"] == 1 and report.features["tool_results"] == 1
    assert report.to_dict()["label"] == report.label


@pytest.mark.parametrize("row,form", [
    ({"instruction": "Q", "input": "", "chosen": "good", "rejected": "bad"}, "alpaca"),
    ({"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "good"},
      "rejected": {"from": "gpt", "value": "bad"}}, "sharegpt"),
    ({"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "good"}],
      "rejected": [{"role": "assistant", "content": "bad"}]}, "messages"),
])
def test_preference_pairs_are_detected_with_their_form(tmp_path, row, form):
    report = check_file(jsonl(tmp_path / "pairs.jsonl", [row]))
    assert report.format == "preference" and report.variant == form and form in report.label
    assert report.samples[0]["messages"][-1] == {"role": "assistant", "content": "good"}


def test_text_file_blocks_and_lines(tmp_path):
    blocks = tmp_path / "blocks.txt"
    blocks.write_text("Doc one, line one.\nline two.\n\nDoc two.\n")
    lines = tmp_path / "lines.txt"
    lines.write_text("Doc one.\nDoc two.\nDoc three.\n")
    assert [s["text"] for s in check_file(blocks).samples] == ["Doc one, line one.\nline two.", "Doc two."]
    assert check_file(lines).rows_usable == 3 and check_file(lines).lines == [1, 2, 3]


def test_column_mapping_reads_other_names_and_implies_the_format(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A."}])
    with pytest.raises(DataError, match="cannot tell the format"):
        check_file(path)
    report = check_file(path, columns={"instruction": "question", "output": "answer"})
    assert report.format == "alpaca" and report.rows_usable == 1
    assert report.columns_found == ["answer", "question"] and report.mapping["output"] == "answer"


# --- problems with their line ----------------------------------------------------------------

def test_row_problems_name_their_line_and_field(tmp_path):
    rows = [{"instruction": "Q1", "output": "A1"},
            {"instruction": "Q2"},                                   # 2: missing
            {"instruction": "Q3", "output": "  "},                   # 3: empty
            {"instruction": {"a": 1}, "output": "A4"},               # 4: wrong type
            {"instruction": "Q1", "output": "A1"}]                   # 5: duplicate of 1
    report = check_file(jsonl(tmp_path / "d.jsonl", rows))
    found = problems(report)
    assert report.rows_read == 5 and report.rows_usable == 1
    assert found[2].message == "missing field 'output'" and found[2].field == "output"
    assert "is empty" in found[3].message
    assert "should be text, got an object" in found[4].message and found[4].field == "instruction"
    assert found[5].kind == "duplicate" and "duplicate of line 1" in found[5].message


def test_conversation_problems(tmp_path):
    ok = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    rows = [{"messages": ok},
            {"messages": ok[:1]},
            {"messages": [{"role": "wizard", "content": "Q"}, ok[1]]},
            {"messages": "not turns"}]
    found = problems(check_file(jsonl(tmp_path / "c.jsonl", rows)))
    assert "does not end with an assistant reply" in found[2].message
    assert "unknown role 'wizard'" in found[3].message
    assert "should be a list of turns" in found[4].message


def test_mixed_formats_are_reported_per_row(tmp_path):
    rows = [{"instruction": f"Q{i}", "output": f"A{i}"} for i in range(3)] + [{"text": "a stray document"}]
    report = check_file(jsonl(tmp_path / "mixed.jsonl", rows))
    assert report.format == "alpaca" and report.format_counts == {"alpaca": 3, "text": 1}
    [problem] = report.problems
    assert problem.line == 4 and problem.kind == "mixed_format" and "text" in problem.message


def test_a_json_list_keeps_line_numbers_for_mixed_rows(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([{"instruction": "Q", "output": "A"}, {"instruction": "Q2", "output": "A2"},
                                {"messages": [{"role": "user", "content": "hi"}]}], indent=2))
    [problem] = check_file(path).problems
    assert problem.kind == "mixed_format" and problem.line == 10


@pytest.mark.parametrize("ext,content,line", [
    ("jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n{"text": "fine too"}\n', 2),
    ("csv", b'instruction,output\nQ1,A1\n"Q\xe92",A2\nQ3,A3\n', 3),
    ("txt", b"fine\ncaf\xe9\nfine too\n", 2),
])
def test_text_that_is_not_utf8_is_reported_per_row(tmp_path, ext, content, line):
    path = tmp_path / f"latin1.{ext}"
    path.write_bytes(content)
    report = check_file(path)
    [problem] = report.problems
    assert problem.line == line and "not UTF-8 (byte 0xE9)" in problem.message and problem.kind == "unreadable"
    assert report.rows_usable == 2


def test_a_csv_cell_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    path = tmp_path / "long.csv"
    document = "word " * 40_000                                  # 200 KB, over csv's 128 KiB default
    path.write_text(f'text\n"{document}"\nshort\n')
    report = check_file(path)
    assert report.rows_usable == 2 and report.samples[0]["text"] == document


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_a_csv_saved_with_another_separator_is_read_by_its_header(tmp_path, sep):
    path = tmp_path / "d.csv"
    path.write_text(f'instruction{sep}output\nQ1, with a comma{sep}A1\n"Q{sep}2"{sep}A2\n')
    report = check_file(path)
    assert report.format == "alpaca" and report.rows_usable == 2
    assert [s["messages"][0]["content"] for s in report.samples] == ["Q1, with a comma", f"Q{sep}2"]


def test_json_that_is_not_utf8_is_a_whole_file_problem(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[\n  {"text": "ok"},\n  {"text": "caf\xe9"}\n]')
    with pytest.raises(DataError, match="not UTF-8") as info:
        check_file(path)
    assert info.value.line == 3


def test_csv_rows_with_the_wrong_cell_count(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,output\nQ1,A1\n"multi\nline",A2\nQ3,A3,extra\n')
    report = check_file(path)
    assert report.rows_usable == 2 and report.lines == [2, 3]
    assert problems(report)[5].message == "the row has 3 cells, the header has 2"


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,words", [
    ("empty.jsonl", b"", "the file is empty"),
    ("blank.json", b"  \n\n", "the file is empty"),
    ("zero.json", b"", "the file is empty"),
    ("object.json", b'{"instruction": "Q", "output": "A"}', "expected a JSON list of objects"),
    ("numbers.json", b"[1, 2, 3]", "item 1 is a number, expected an object"),
    ("nested.json", b'{"data": [{"text": "a"}]}', "expected a JSON list of objects"),
    ("photo.json", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary file, not JSON"),
    ("utf16.jsonl", '{"text": "a"}\n'.encode("utf-16"), "UTF-16"),
    ("noheader.csv", b"What is 2+2?,4\nWhat is 3+3?,6\n", "looks like data, not column names"),
    ("dupheader.csv", b"text,text\na,b\n", "repeated column names"),
    ("empty-list.json", b"[]", "holds no rows"),
    ("all-latin1.jsonl", b'{"text": "caf\xe9"}\n', "no row could be read"),
    ("broken.jsonl", b'{"text": "a"}\n{"text": \n', "not valid JSON"),
    ("data.xlsx", b"PK\x03\x04", "unsupported file type '.xlsx'"),
])
def test_bad_files_get_a_clear_error_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace("+", r"\+")) as info:
        check_file(path)
    assert name in str(info.value)


def test_a_list_under_a_key_gets_a_hint(tmp_path):
    path = tmp_path / "nested.json"
    path.write_text('{"data": [{"text": "a"}]}')
    with pytest.raises(DataError) as info:
        check_file(path)
    assert "under 'data'" in info.value.hint


def test_size_limit_from_the_argument_and_the_environment(tmp_path, monkeypatch):
    path = jsonl(tmp_path / "big.jsonl", [{"text": "x" * 1000} for _ in range(1100)])   # about 1.1 MB
    [check] = check_files([path], max_mb=1)
    assert not check.usable and "over the 1 MB limit" in check.error.message
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "0.5")
    assert "over the 0.5 MB limit" in check_files([path])[0].error.message
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "2")
    assert check_files([path])[0].usable
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "lots")
    with pytest.raises(DataError, match="WORKBENCH_MAX_UPLOAD_MB"):
        check_files([path])
    for limit in (0, -1, float("nan")):
        with pytest.raises(DataError, match="must be a positive number of megabytes"):
            check_files([path], max_mb=limit)


def test_check_files_reports_each_file_and_never_raises_for_one(tmp_path):
    good = jsonl(tmp_path / "good.jsonl", [{"instruction": "Q", "output": "A"}])
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\x01binary")
    checks = check_files([good, bad], names=["good.jsonl", "bad.json"])
    assert [c.usable for c in checks] == [True, False]
    d = checks[1].to_dict()
    assert d["error"]["file"] == "bad.json" and d["report"] is None
    json.dumps([c.to_dict() for c in checks])


# --- preview and token lengths ---------------------------------------------------------------

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital <b>?"},
                     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Japan?"},
                     {"role": "assistant", "content": "Tokyo."}]}


def test_preview_marks_exactly_the_tokens_the_trainer_learns(tok):
    [p] = preview([CHAT], tok, n=1, max_len=512)
    enc = encode_sample(tok, CHAT, 512)
    trained = "".join(s.text for s in p.segments if s.trained)
    assert trained == tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert trained == "Paris.<|im_end|>\nTokyo.<|im_end|>\n"
    assert "".join(s.text for s in p.segments) == tok.decode(enc.input_ids)
    assert [s.trained for s in p.segments] == [False, True, False, True]
    assert p.trained_tokens == enc.trained_tokens and p.tokens == len(enc.input_ids) and not p.truncated


def test_preview_follows_train_on_and_plain_text(tok):
    [chat, text] = preview([CHAT, {"text": "The quick brown fox."}], tok, train_on="all")
    assert all(s.trained for s in chat.segments + text.segments)
    assert text.segments[-1].text.endswith("<|im_end|>")


def test_preview_shows_truncation_and_a_dropped_reply(tok):
    long = {"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "short"}]}
    [p] = preview([long], tok, max_len=32)
    assert p.truncated and p.tokens == 32 and p.full_tokens > 32
    assert p.trained_tokens == 0 and p.error == "the reply lies beyond the max length"
    with pytest.raises(Exception, match="beyond the max length"):
        encode_sample(tok, long, 32)


def test_preview_html_escapes_and_marks_trained_text(tok):
    from webui.i18n import t

    previews = preview([CHAT], tok, lines=[7])
    html = preview_html(previews)
    assert "Capital &lt;b&gt;?" in html and "<b>" not in html
    assert '<span class="wb-trained"' in html and '<span class="wb-masked"' in html
    p = previews[0]
    assert f"Sample 1 · line 7 · {p.tokens} tokens, {p.trained_tokens} trained on</div>" in html
    labels = {k: t(f"data.html.{k}", "zh") for k in ("trained", "masked", "sample", "line", "tokens")}
    assert f"样本 1 · 第 7 行 · {p.tokens} 个 token，其中 {p.trained_tokens} 个参与训练</div>" in preview_html(previews, labels)
    cut = preview([CHAT], tok, max_len=8)[0]
    cut.error = "nothing to train on"
    assert f"{cut.tokens} tokens, {cut.trained_tokens} trained on (truncated from {cut.full_tokens}) · dropped: " \
           "nothing to train on</div>" in preview_html([cut])


def test_length_stats(tok):
    samples = [{"text": "word " * k} for k in range(1, 101)]
    lengths = [len(encode_sample(tok, s, 10 ** 6).input_ids) for s in samples]
    stats = length_stats(samples, tok, max_len=64)
    assert stats.lengths == lengths and stats.rows == 100 and stats.longest == max(lengths)
    assert stats.truncated == sum(x > 64 for x in lengths) and stats.truncated_share == stats.truncated / 100
    assert stats.p95 == sorted(lengths)[94] and stats.p99 == sorted(lengths)[98]
    assert stats.suggested_95 % 64 == 0 and stats.suggested_95 - 64 < stats.p95 <= stats.suggested_95
    assert sum(x <= stats.suggested_99 for x in lengths) >= 99
    assert length_stats(samples, tok, 64, max_rows=10).rows == 10


def test_a_mapped_column_that_no_row_has_is_one_error_naming_the_files_columns(tmp_path):
    path = jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(DataError) as typo:
        check_file(path, columns={"instruction": "questoin", "output": "answer"})
    assert typo.value.field == "columns" and "'questoin' (mapped to 'instruction')" in typo.value.message
    assert typo.value.message.endswith("the file's columns are answer, question")
    assert check_file(path, columns={"instruction": "question", "output": "answer"}).usable


def test_a_suggested_max_length_is_one_the_field_takes(tok):
    from core.config import field_meta
    from core.preview import _round_up

    assert _round_up(1_250_000) == field_meta("data.max_seq_len")["max"] and _round_up(100) == 128


# --- real-world files: LLaMA-Factory's demo data ---------------------------------------------

@pytest.mark.parametrize("name,fmt,rows", [
    ("alpaca_en_demo.json", "alpaca", 7),
    ("glaive_toolcall_en_demo.json", "sharegpt", 4),
    ("dpo_en_demo.json", "preference", 2),
    ("c4_demo.jsonl", "text", 3),
    ("wiki_demo.txt", "text", 3),
])
def test_llamafactory_demo_files_load_and_are_detected(name, fmt, rows):
    report = check_file(FIXTURES / name)
    assert report.format == fmt and report.rows_usable == rows and not report.problems


def test_llamafactory_demo_details(tok):
    glaive = check_file(FIXTURES / "glaive_toolcall_en_demo.json")
    assert "with tools" in glaive.label and glaive.features["tools"] == 3
    assert glaive.samples[1]["tools"][0]["name"] == "calculate_area"
    dpo = check_file(FIXTURES / "dpo_en_demo.json")
    assert dpo.variant == "sharegpt" and dpo.samples[1]["messages"][0]["role"] == "system"
    alpaca = check_file(FIXTURES / "alpaca_en_demo.json")
    assert alpaca.samples[5]["messages"][0]["content"].endswith("Side 1 = 4\nSide 2 = 6\nSide 3 = 8")
    assert alpaca.samples[6]["messages"][-1]["content"].startswith("🚀")


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "dpo_en_demo.json",
                                  "c4_demo.jsonl", "wiki_demo.txt"])
def test_llamafactory_demo_files_preview_with_the_reply_trained(tok, name):
    report = check_file(FIXTURES / name)
    for sample, p in zip(report.samples, preview(report.samples, tok, n=10, max_len=100_000)):
        trained = "".join(s.text for s in p.segments if s.trained)
        if "text" in sample:
            assert trained.startswith(sample["text"][:40])
        else:
            replies = [m["content"] for m in sample["messages"] if m["role"] == "assistant"]
            assert all(r in trained for r in replies)
            assert sample["messages"][-2]["content"] not in trained
        assert p.error is None


def test_the_glaive_demo_trains_on_tool_calls_but_not_tool_results(tok):
    report = check_file(FIXTURES / "glaive_toolcall_en_demo.json")
    [p] = preview(report.samples[1:2], tok, max_len=100_000)
    trained = "".join(s.text for s in p.segments if s.trained)
    assert '{"name": "calculate_area", "arguments"' in trained and '{"area": 15}' not in trained


def test_cli_check_prints_the_report_and_exits_by_usability(cli, tmp_path):
    bad = jsonl(tmp_path / "bad.jsonl", [{"instruction": "Q", "output": ""}])
    ok = cli("data", "check", FIXTURES / "glaive_toolcall_en_demo.json", FIXTURES / "wiki_demo.txt")
    assert ok.returncode == 0, ok.stderr
    assert "sharegpt" in ok.stdout and "with tools" in ok.stdout and "4 rows read, 4 usable" in ok.stdout
    failed = cli("data", "check", FIXTURES / "wiki_demo.txt", bad, "--json")
    assert failed.returncode == 2
    out = json.loads(failed.stdout)
    assert out["usable"] is False and out["files"][1]["report"]["problems"][0]["line"] == 1
    mapped = cli("data", "check", jsonl(tmp_path / "qa.jsonl", [{"q": "Q?", "a": "A."}]),
                 "--columns", "instruction=q", "output=a")
    assert mapped.returncode == 0 and "alpaca" in mapped.stdout
    broken = cli("data", "check", tmp_path / "missing.json")
    assert broken.returncode == 2 and "file not found" in broken.stdout
