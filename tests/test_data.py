import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import RunConfig
from core.data import build, check_file
from core.encode import IGNORE, encode_sample
from core.errors import DataError
from core.models import ResolvedModel, load_tokenizer

ALPACA = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(6)]


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(ResolvedModel(str(tiny_model), "local", "tiny"))


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("ext", ["json", "jsonl", "csv", "parquet", "txt"])
def test_each_file_type_loads(tmp_path, ext):
    path = tmp_path / f"data.{ext}"
    if ext == "json":
        path.write_text(json.dumps(ALPACA, indent=2))
    elif ext == "jsonl":
        write(path, ALPACA)
    elif ext == "csv":
        path.write_text("instruction,input,output\n" + "".join(f'"Q {i}?",,"A {i}."\n' for i in range(6)))
    elif ext == "parquet":
        pq.write_table(pa.Table.from_pylist(ALPACA), path)
    else:
        path.write_text("First document line one.\nline two.\n\nSecond document.\n")
    report = check_file(path)
    assert report.format == ("text" if ext == "txt" else "alpaca")
    assert report.rows_usable == (2 if ext == "txt" else 6) and not report.problems


def test_json_rows_keep_their_line_numbers(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ALPACA[:2] + [{"instruction": "x", "output": ""}], indent=2))
    report = check_file(path)
    assert report.rows_usable == 2
    [problem] = report.problems
    assert problem.line == 12 and "empty" in problem.message


def test_loss_mask_covers_only_assistant_replies(tok):
    sample = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                           {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Japan?"},
                           {"role": "assistant", "content": "Tokyo."}]}
    enc = encode_sample(tok, sample, max_len=512)
    trained = tok.decode([t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE])
    assert trained == "Paris.<|im_end|>\nTokyo.<|im_end|>\n"
    assert enc.labels[: len(enc.labels) // 3].count(IGNORE) == len(enc.labels) // 3


def test_train_on_all_trains_every_token(tok):
    sample = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    enc = encode_sample(tok, sample, max_len=512, train_on="all")
    assert enc.labels == enc.input_ids


def test_plain_text_trains_on_everything_and_ends_with_eos(tok):
    enc = encode_sample(tok, {"text": "The quick brown fox."}, max_len=512)
    assert enc.labels == enc.input_ids and enc.input_ids[-1] == tok.eos_token_id


def cfg_for(*paths, **data):
    return RunConfig.from_dict({"model": "m", "datasets": [str(p) for p in paths], "data": data})


def test_no_usable_rows_names_the_file(tmp_path, tok):
    path = write(tmp_path / "bad.jsonl", [{"instruction": "q", "output": ""}])
    with pytest.raises(DataError) as info:
        build(cfg_for(path), tok)
    assert "no usable rows" in str(info.value) and "bad.jsonl" in str(info.value)


def test_a_reply_cut_off_by_max_length_drops_the_row(tmp_path, tok):
    long = {"instruction": "word " * 200, "output": "short"}
    path = write(tmp_path / "d.jsonl", ALPACA + [long])
    data = build(cfg_for(path, max_seq_len=64), tok)
    assert len(data.train) == 6 and any("max length" in p.message for p in data.dropped)


def test_mix_ratios_set_each_dataset_share(tmp_path, tok):
    a = write(tmp_path / "a.jsonl", [{"instruction": f"a{i}", "output": "x"} for i in range(90)])
    b = write(tmp_path / "b.jsonl", [{"instruction": f"b{i}", "output": "y"} for i in range(30)])
    cfg = RunConfig.from_dict({"model": "m", "datasets": [{"path": str(a), "ratio": 0.5},
                                                          {"path": str(b), "ratio": 0.5}]})
    data = build(cfg, tok)
    y_id = tok("y", add_special_tokens=False)["input_ids"][0]
    from_b = sum(1 for x in data.train if y_id in [t for t in x["labels"] if t != IGNORE])
    assert len(data.train) == 120 and from_b == 60


def test_eval_split_holds_rows_out(tmp_path, tok):
    path = write(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(20)])
    data = build(cfg_for(path, eval_split=0.2), tok)
    assert len(data.eval) == 4 and len(data.train) == 16


@pytest.mark.parametrize("name,text,error", [
    ("deep.jsonl", '{"instruction": "a", "output": "b"}\n' + "[" * 100000 + "\n", "deep.jsonl:2: not valid JSON: nested too deeply"),
    ("big.json", '[{"instruction": "a", "output": "b", "n": ' + "1" * 5000 + "}]", "4300 digits"),
], ids=["deep", "long-integer"])
def test_json_python_cannot_hold_is_refused_with_file_and_line(tmp_path, name, text, error):
    from core.errors import DataError
    from core.readers import read_records

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=error):
        read_records(path)


def test_a_missing_value_in_parquet_is_missing_not_the_text_nan(tmp_path):
    import pyarrow as pa

    from core.data import check_file

    path = tmp_path / "gaps.parquet"
    pq.write_table(pa.table({"instruction": ["a", "b"], "output": [float("nan"), 2.5]}), path)    # a numeric column
    report = check_file(path)
    assert [s["messages"][-1]["content"] for s in report.samples] == ["2.5"]
    assert "output" in report.problems[0].message and report.problems[0].line == 1


def test_a_conversation_the_chat_template_refuses_is_a_row_problem(tiny_model):
    """Templates are the model's own code and may raise (e.g. 'roles must alternate'): the row is
    dropped with that reason, never a traceback."""
    from core.encode import encode_sample
    from core.formats import RowProblem

    strict = load_tokenizer(ResolvedModel(str(tiny_model), "local", "tiny"))
    strict.chat_template = ("{% for m in messages %}{% if loop.index0 % 2 == 0 and m['role'] != 'user' %}"
                            "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
                            "{{ m['content'] }}{% endfor %}")
    turns = [{"role": "assistant", "content": "first"}, {"role": "user", "content": "q"}]
    with pytest.raises(RowProblem, match="chat template refuses this conversation: roles must alternate"):
        encode_sample(strict, {"messages": turns}, 64)
