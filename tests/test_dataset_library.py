"""The dataset library: save, list, rename, delete; unsafe names; nothing left behind on bad input;
LLaMA-Factory dataset_info.json folders; hub datasets offline; training from a saved dataset."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from core import dataset_library as lib
from core import db
from core.config import RunConfig
from core.data import build
from core.errors import DataError
from core.llamafactory import check_llamafactory, import_llamafactory, read_dataset_info
from core.models import ResolvedModel, load_tokenizer
from core.workspace import datasets_dir

FIXTURES = Path(__file__).parent / "fixtures" / "llamafactory"


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(ResolvedModel(str(tiny_model), "local", "tiny"))


def jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def qa_file(tmp_path, n=4, name="qa.jsonl"):
    return jsonl(tmp_path / name, [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(n)])


def assert_nothing_saved():
    root = datasets_dir()
    assert not root.exists() or list(root.iterdir()) == []
    assert not db.db_path().exists() or db.query("SELECT * FROM datasets") == []


def test_save_writes_files_meta_and_a_database_row(tmp_path, workspace, tok):
    a = jsonl(tmp_path / "a.jsonl", [{"instruction": "Q1", "output": "A1"}, {"instruction": "Q2", "output": ""}])
    b = tmp_path / "b.csv"
    b.write_text("instruction,output\nQ3,A3\n")
    info = lib.save_dataset("my-data", [a, b], tokenizer=tok)
    folder = workspace / "datasets" / "my-data"
    assert sorted(p.name for p in folder.iterdir()) == ["a.jsonl", "b.csv", "meta.json"]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["files"] == ["a.jsonl", "b.csv"] and meta["format"] == "alpaca" and meta["source"] == "upload"
    assert (meta["rows"], meta["rows_usable"], meta["problems"]) == (3, 2, 1)
    assert meta["tokens"] > 0 and meta["created"].endswith("Z")
    [row] = db.query("SELECT * FROM datasets")
    assert row["name"] == "my-data" and row["rows"] == 3 and row["tokens"] == meta["tokens"]
    assert json.loads(row["files"]) == ["a.jsonl", "b.csv"]
    assert (info.name, info.rows_usable, info.tokens) == ("my-data", 2, meta["tokens"])


def test_list_rename_delete(tmp_path, workspace):
    lib.save_dataset("first", [qa_file(tmp_path)], columns={"instruction": "question", "output": "answer"})
    lib.save_dataset("second", [jsonl(tmp_path / "t.jsonl", [{"text": "doc"}])])
    listed = lib.list_datasets()
    assert [(d.name, d.format, d.rows) for d in listed] == [("first", "alpaca", 4), ("second", "text", 1)]
    assert listed[0].to_dict()["columns"] == {"instruction": "question", "output": "answer"}
    renamed = lib.rename_dataset("first", "domain")
    assert renamed.name == "domain" and (workspace / "datasets" / "domain" / "qa.jsonl").is_file()
    assert not (workspace / "datasets" / "first").exists()
    assert json.loads((workspace / "datasets" / "domain" / "meta.json").read_text())["name"] == "domain"
    lib.delete_dataset("second")
    assert [d.name for d in lib.list_datasets()] == ["domain"]
    assert sorted(p.name for p in (workspace / "datasets").iterdir()) == ["domain"]
    with pytest.raises(DataError, match="no saved dataset named 'second'"):
        lib.delete_dataset("second")


def test_names_are_unique_ignoring_case(tmp_path, workspace):
    lib.save_dataset("Domain", [qa_file(tmp_path)], columns={"instruction": "question", "output": "answer"})
    lib.save_dataset("other", [jsonl(tmp_path / "t.jsonl", [{"text": "doc"}])])
    with pytest.raises(DataError, match="a dataset named 'domain' already exists") as info:
        lib.save_dataset("domain", [jsonl(tmp_path / "u.jsonl", [{"text": "doc"}])])
    assert info.value.field == "name"
    with pytest.raises(DataError, match="already exists"):
        lib.rename_dataset("other", "DOMAIN")
    assert lib.rename_dataset("Domain", "domain").name == "domain"


def test_saved_mapping_is_used_by_training(tmp_path, workspace, tok):
    lib.save_dataset("qa", [qa_file(tmp_path, 6)], columns={"instruction": "question", "output": "answer"})
    cfg = RunConfig.from_dict({"model": "m", "datasets": ["qa"]})
    data = build(cfg, tok)
    assert len(data.train) == 6 and not data.dropped
    trained = tok.decode([t for t in data.train[0]["labels"] if t != -100])
    assert trained.startswith("A") and trained.endswith("<|im_end|>\n")


def test_files_of_different_formats_keep_their_own_format(tmp_path, workspace, tok):
    chat = jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Q"},
                                                          {"role": "assistant", "content": "A"}]}])
    text = jsonl(tmp_path / "text.jsonl", [{"text": "a document"}])
    info = lib.save_dataset("both", [chat, text])
    assert info.format == "auto" and info.formats == {"chat.jsonl": "messages", "text.jsonl": "text"}
    data = build(RunConfig.from_dict({"model": "m", "datasets": ["both"]}), tok)
    assert len(data.train) == 2 and not data.dropped


@pytest.mark.parametrize("upload,stored", [
    ("../../etc/passwd.jsonl", "passwd.jsonl"),
    ("..\\..\\Windows\\evil.jsonl", "evil.jsonl"),
    (".hidden.jsonl", "hidden.jsonl"),
    ("my file (final) v2!.JSONL", "my_file_final_v2.jsonl"),
    ("数据 集.jsonl", "数据_集.jsonl"),
])
def test_uploaded_file_names_are_made_safe_and_stay_inside(tmp_path, workspace, upload, stored):
    info = lib.save_dataset("safe", [jsonl(tmp_path / "x.jsonl", [{"text": "doc"}])], names=[upload])
    assert info.files == [stored]
    written = sorted(p.relative_to(workspace).as_posix() for p in workspace.rglob("*")
                     if p.is_file() and not p.name.startswith("workbench.db"))
    assert written == sorted([f"datasets/safe/{stored}", "datasets/safe/meta.json"])


def test_odd_dataset_names_are_refused_in_words_and_nothing_is_written(tmp_path, workspace):
    data = [jsonl(tmp_path / "t.jsonl", [{"text": "doc"}])]
    with pytest.raises(DataError, match=r"cannot hold ' ' or '/'; .* e.g. 'my_data_v1'") as odd:
        lib.save_dataset("../../my data/v1", data)
    assert odd.value.field == "name"
    with pytest.raises(DataError, match="must start and end with a letter or digit; .* e.g. 'v1'"):
        lib.save_dataset(".v1", data)
    with pytest.raises(DataError, match="longer than 64 characters"):
        lib.save_dataset("a" * 65, data)
    with pytest.raises(DataError, match="not a usable dataset name"):
        lib.save_dataset("../..", data)
    assert not (workspace / "datasets").exists() or not any((workspace / "datasets").iterdir())
    assert lib.save_dataset("  v1.2__b-3 ", data).name == "v1.2__b-3"
    assert lib.save_dataset("cafe\u0301", data).name == "caf\u00e9"          # a decomposed accent, as macOS types it
    lib.save_dataset("other", data)
    with pytest.raises(DataError, match="cannot hold ' '"):
        lib.rename_dataset("other", "my data")
    assert lib.clean_dataset_name("../../my data/v1") == "my_data_v1"


def test_two_uploads_with_the_same_name_keep_both(tmp_path, workspace):
    a = jsonl(tmp_path / "a.jsonl", [{"text": "one"}])
    b = jsonl(tmp_path / "b.jsonl", [{"text": "two"}])
    info = lib.save_dataset("pair", [a, b], names=["data.jsonl", "DATA.jsonl"])
    assert info.files == ["data.jsonl", "DATA-2.jsonl"] and info.rows == 2


@pytest.mark.parametrize("name,content,words", [
    ("empty.jsonl", b"", "the file is empty"),
    ("object.json", b'{"text": "a"}', "expected a JSON list of objects"),
    ("noheader.csv", b"What is 2+2?,4\n", "looks like data"),
    ("zero.json", b"", "the file is empty"),
    ("binary.json", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", "binary file"),
    ("nothing-usable.jsonl", b'{"instruction": "Q", "output": ""}\n', "no usable rows"),
    ("passwd", b"root:x:0:0::/root:/bin/sh\n", "unsupported file type"),
])
def test_bad_uploads_say_what_is_wrong_and_leave_nothing(tmp_path, workspace, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=words) as info:
        lib.save_dataset("bad", [path], names=[f"../../{name}"])
    assert info.value.file == lib.safe_filename(name)
    assert_nothing_saved()


def test_a_file_over_the_size_limit_is_refused(tmp_path, workspace, monkeypatch):
    path = jsonl(tmp_path / "big.jsonl", [{"text": "x" * 1000} for _ in range(600)])
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "0.25")
    with pytest.raises(DataError, match="over the 0.25 MB limit"):
        lib.save_dataset("big", [path])
    assert_nothing_saved()
    assert lib.save_dataset("big", [path], max_mb=1).rows == 600


def test_an_upload_failing_half_way_leaves_no_dataset(tmp_path, workspace, monkeypatch):
    files = [jsonl(tmp_path / f"{k}.jsonl", [{"text": f"doc {k}"}]) for k in range(3)]
    real_copy, copied = shutil.copyfile, []

    def copy_then_fail(src, dst):
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(real_copy(src, dst))

    monkeypatch.setattr(shutil, "copyfile", copy_then_fail)
    with pytest.raises(OSError):
        lib.save_dataset("half", files)
    assert copied and list(datasets_dir().iterdir()) == []
    assert lib.list_datasets() == []
    monkeypatch.setattr(shutil, "copyfile", real_copy)
    assert lib.save_dataset("half", files).files == ["0.jsonl", "1.jsonl", "2.jsonl"]


def test_check_dataset_reads_the_saved_files_with_their_mapping(tmp_path, workspace):
    lib.save_dataset("qa", [qa_file(tmp_path, 3)], columns={"instruction": "question", "output": "answer"})
    [check] = lib.check_dataset("qa")
    assert check.usable and check.report.rows_usable == 3 and check.report.format == "alpaca"


@pytest.mark.parametrize("repo_id", ["../../etc", "/etc", "presets", "a/b/c", ""])
def test_a_hub_dataset_id_that_names_a_folder_here_is_refused_before_anything_reads_it(workspace, repo_id):
    with pytest.raises(DataError, match="is not a Hugging Face Hub dataset id") as refused:
        lib.fetch_hub_dataset(repo_id)
    assert refused.value.field == "hub"


def test_hub_dataset_offline_is_a_plain_error(workspace):
    with pytest.raises(DataError, match="cannot reach the Hugging Face Hub") as info:
        lib.import_hub_dataset("alpaca", "llamafactory/alpaca_en", split="train")
    assert info.value.field == "hub"
    assert_nothing_saved()


# --- LLaMA-Factory dataset_info.json ---------------------------------------------------------

def test_dataset_info_entries_translate_to_formats_and_mappings():
    entries = {e.name: e for e in read_dataset_info(FIXTURES)}
    assert (entries["alpaca_en_demo"].format, entries["alpaca_en_demo"].columns["output"]) == ("alpaca", "output")
    glaive = entries["glaive_toolcall_en_demo"]
    assert glaive.format == "sharegpt" and glaive.columns["tools"] == "tools"
    assert entries["dpo_en_demo"].format == "preference" and entries["dpo_en_demo"].columns["chosen"] == "chosen"
    assert entries["wiki_demo"].format == "text" and entries["c4_demo"].columns == {"text": "text"}
    ultrachat = entries["ultrachat_200k"]
    assert ultrachat.hub == {"repo_id": "HuggingFaceH4/ultrachat_200k", "subset": None, "split": "train_sft",
                             "data_dir": None}
    assert ultrachat.columns["role"] == "role" and ultrachat.columns["assistant_tag"] == "assistant"
    assert "multimodal" in entries["mllm_demo"].error and "KTO" in entries["kto_en_demo"].error


def test_check_llamafactory_folder(workspace):
    status = {c.entry.name: c.status for c in check_llamafactory(FIXTURES)}
    assert status == {"alpaca_en_demo": "ok", "glaive_toolcall_en_demo": "ok", "mllm_demo": "error",
                      "alpaca_en": "hub", "ultrachat_200k": "hub", "dpo_en_demo": "ok", "kto_en_demo": "error",
                      "wiki_demo": "ok", "c4_demo": "ok"}
    assert_nothing_saved()


def test_import_llamafactory_saves_each_local_entry_with_its_mapping(workspace, tok):
    results = {r.entry: r for r in import_llamafactory(FIXTURES, prefix="lf-")}
    saved = sorted(r.name for r in results.values() if r.name)
    assert saved == ["lf-alpaca_en_demo", "lf-c4_demo", "lf-dpo_en_demo", "lf-glaive_toolcall_en_demo",
                     "lf-wiki_demo"]
    assert "cannot reach the Hugging Face Hub" in results["alpaca_en"].error["message"]
    assert "multimodal" in results["mllm_demo"].error["message"]
    dpo = lib.get_dataset("lf-dpo_en_demo")
    assert dpo.format == "preference" and dpo.columns["messages"] == "conversations"
    assert dpo.source == "llamafactory:dpo_en_demo"
    cfg = RunConfig.from_dict({"model": "m", "data": {"max_seq_len": 4096},
                               "datasets": ["lf-glaive_toolcall_en_demo", "lf-dpo_en_demo", "lf-wiki_demo"]})
    data = build(cfg, tok)
    assert data.rows == 9 and not data.dropped


def test_llamafactory_custom_tags_and_columns(tmp_path, workspace):
    (tmp_path / "chat.json").write_text(json.dumps([
        {"dialog": [{"speaker": "customer", "text": "Q"}, {"speaker": "agent", "text": "A"}], "sys": "Be kind."}]))
    (tmp_path / "qa.json").write_text(json.dumps([{"question": "Q", "answer": "A"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "chat": {"file_name": "chat.json", "formatting": "sharegpt",
                 "columns": {"messages": "dialog", "system": "sys"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "customer",
                          "assistant_tag": "agent"}},
        "qa": {"file_name": "qa.json", "columns": {"prompt": "question", "response": "answer"}},
        "escape": {"file_name": "../outside.json"},
        "script": {"script_url": "belle_multiturn", "formatting": "sharegpt"}}))
    checks = {c.entry.name: c for c in check_llamafactory(tmp_path)}
    chat = checks["chat"].checks[0].report
    assert chat.samples[0]["messages"] == [{"role": "system", "content": "Be kind."},
                                           {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert checks["qa"].status == "ok" and checks["qa"].checks[0].report.format == "alpaca"
    assert "outside the folder" in checks["escape"].entry.error
    assert "scripts are not run" in checks["script"].entry.error
    assert [r.name for r in import_llamafactory(tmp_path, names=["qa"])] == ["qa"]
    with pytest.raises(DataError, match="no entry 'nope'"):
        import_llamafactory(tmp_path, names=["nope"])


def test_a_folder_without_dataset_info_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no dataset_info.json"):
        read_dataset_info(tmp_path)


def test_cli_import_list_and_llamafactory(cli, tmp_path, workspace):
    env = {"WORKBENCH_HOME": str(workspace)}
    out = cli("data", "import", qa_file(tmp_path), "--name", "qa", "--columns", "instruction=question",
              "output=answer", env=env)
    assert out.returncode == 0, out.stderr
    again = cli("data", "import", qa_file(tmp_path), "--name", "QA", env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    lf = cli("data", "import-llamafactory", FIXTURES, "--only", "c4_demo", "wiki_demo", env=env)
    assert lf.returncode == 0 and "c4_demo: saved as c4_demo" in lf.stdout
    listed = json.loads(cli("data", "list", "--json", env=env).stdout)
    assert [(d["name"], d["format"], d["rows"]) for d in listed] == [("qa", "alpaca", 4), ("c4_demo", "text", 3),
                                                                     ("wiki_demo", "text", 3)]


def test_a_saved_dataset_a_queued_run_trains_on_cannot_be_deleted_until_the_run_is_gone(tmp_path, workspace,
                                                                                       tiny_model):
    from core import jobs

    lib.save_dataset("in-use", [qa_file(tmp_path)], columns={"instruction": "question", "output": "answer"})
    job = jobs.submit(RunConfig.from_dict({"model": str(tiny_model), "datasets": ["in-use"],
                                          "train": {"max_steps": 1}}))
    with pytest.raises(DataError, match=f"run {job.id} trains on 'in-use'"):
        lib.delete_dataset("in-use")
    assert lib.get_dataset("in-use")
    jobs.remove(job.id)
    lib.delete_dataset("in-use")
    assert lib.list_datasets() == []


def test_use_in_train_puts_a_saved_dataset_in_the_form_and_refuses_one_deleted_since(workspace):
    from webui.app import use_dataset

    lib.save_dataset("mine", [ROOT / "presets" / "data" / "identity.jsonl"])
    message, _, _, tabs, datasets = use_dataset("mine", [], "en")
    assert message == "" and tabs.selected == "train" and datasets["value"] == ["mine"]
    lib.delete_dataset("mine")                          # in another tab, after this one drew its list
    message, _, pick, tabs, datasets = use_dataset("mine", ["mine"], "en")
    assert "no saved dataset named 'mine'" in message and pick["value"] is None
    assert tabs == datasets == {"__type__": "update"}
