"""The adapter library on the tiny model: real training, real peft, real SQLite, real files."""
import hashlib
import json
import shutil
import sqlite3
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from core import library
from core.adapter_io import export_zip, import_adapter
from core.adapter_merge import merge
from core.adapter_mix import mix
from core.errors import ConfigError, ModelError, WorkbenchError

DATA = ROOT / "presets" / "data"
PROMPT = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """Two LoRA runs on different data and a full-tuning run, trained once for the module."""
    from core.config import RunConfig
    from core.train import run

    root = tmp_path_factory.mktemp("runs")
    specs = {"identity": ("lora", "identity.jsonl", 1), "general": ("lora", "general.json", 2),
             "fulltune": ("full", "general.json", 3)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(root / "ws"))
        for name, (method, data, seed) in specs.items():
            run(RunConfig.from_dict({
                "model": str(tiny_model), "method": method, "datasets": [str(DATA / data)],
                "output_dir": str(root / name), "lora": {"rank": 4, "alpha": 8},
                "data": {"eval_split": 0.1},
                "train": {"max_steps": 8 if method == "lora" else 1, "batch_size": 4, "learning_rate": 1e-2,
                          "seed": seed, "eval_steps": 4}}))
    return root


@pytest.fixture
def ws(workspace, trained):
    """A workspace whose runs/ holds the trained runs."""
    for name in ("identity", "general", "fulltune"):
        shutil.copytree(trained / name, workspace / "runs" / name)
    return workspace


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    from tiny import build_model

    return build_model(tmp_path_factory.mktemp("other-model"), hidden=48)


def foreign_adapter(base: Path, out: Path, *, rank: int = 4, rslora: bool = False, seed: int = 0) -> Path:
    """An adapter made elsewhere: plain peft, random (non-zero) LoRA weights, no workbench files."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "down_proj"],
                                      use_rslora=rslora))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    model.save_pretrained(out)
    return out


def logits(base: Path, adapter: Path | None = None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    ids = torch.tensor([[1, 20, 40, 60, 80, 100, 120, 140]])
    with torch.no_grad():
        return model.eval()(ids).logits


def greedy_ids(model, tokenizer) -> list[int]:
    enc = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0][enc["input_ids"].shape[1]:].tolist()


def rows() -> list[dict]:
    from core import db
    return db.query("SELECT * FROM adapters")


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_nothing_imported(workspace: Path) -> None:
    adapters = workspace / "adapters"
    assert not adapters.exists() or list(adapters.iterdir()) == [], list(adapters.iterdir())
    assert rows() == []


# --- listing and detail ----------------------------------------------------------------------

def test_listing_registers_trained_runs_once_with_their_metrics(ws, tiny_model):
    infos = {i.name: i for i in library.list_adapters()}
    assert set(infos) == {"identity", "general", "fulltune"}
    meta = json.loads((ws / "runs" / "identity" / "adapter" / "workbench.json").read_text())
    a = infos["identity"]
    assert (a.source, a.kind, a.method, a.run_id, a.base_model) == ("trained", "adapter", "lora", "identity",
                                                                   str(tiny_model))
    assert (a.rank, a.alpha, a.steps) == (4, 8, 8)
    assert a.train_loss == meta["metrics"]["train_loss"] and a.eval_loss == meta["metrics"]["eval_loss"] is not None
    assert {"q_proj", "v_proj", "down_proj"} <= set(a.target_modules)
    assert a.datasets == [str(DATA / "identity.jsonl")] and a.created == meta["created"]
    assert a.size_bytes == library.folder_size(Path(a.path)) > 0 and a.size.endswith("KiB")
    full = infos["fulltune"]
    assert (full.kind, full.method, full.rank, full.steps) == ("model", "full", None, 1)
    library.list_adapters()
    assert len(rows()) == 3, "registration on sight must be idempotent"


def test_filter_by_base_model(ws, tiny_model, other_model, tmp_path):
    import_adapter(foreign_adapter(other_model, tmp_path / "o"), name="for-other")
    assert library.base_models() == sorted([str(tiny_model), str(other_model)])
    assert [i.name for i in library.list_adapters(str(other_model))] == ["for-other"]
    assert {i.name for i in library.list_adapters(str(tiny_model))} == {"identity", "general", "fulltune"}


def test_detail_has_config_loss_curve_and_memory(ws):
    d = library.detail("identity")
    assert d.adapter_config["r"] == 4 and d.run_config["lora"]["rank"] == 4
    assert [r["step"] for r in d.metrics if "loss" in r] == list(range(1, 9))
    assert any("eval_loss" in r for r in d.metrics)
    assert d.memory["measured"]["peak_mem_gib"] > 0 and d.memory["estimate"]["total_gib"] > 0
    assert json.loads(json.dumps(d.to_dict()))["info"]["name"] == "identity"


def test_unknown_adapter_is_a_clear_error(ws):
    with pytest.raises(ModelError, match="no adapter 'nope' in the library"):
        library.get("nope")


# --- merge -------------------------------------------------------------------------------------

def test_merged_model_gives_the_same_greedy_tokens_as_base_plus_adapter(ws, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stages = []
    result = merge("identity", "merged", max_shard_size="20KB", progress=lambda s, f, m: stages.append((s, f)))
    out = ws / "exports" / "merged"
    assert result.path == str(out) and result.shards > 1 and (out / "model.safetensors.index.json").is_file()
    assert [s for s, _ in stages] == ["check", "load_base", "load_adapter", "merge", "save", "done"]
    assert [f for _, f in stages] == sorted(f for _, f in stages) and stages[-1][1] == 1.0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert not list(out.glob("*.bin")) and not [p for p in (ws / "exports").iterdir() if p.name.startswith(".")]
    assert_shared(out)

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapter = ws / "runs" / "identity" / "adapter"
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter)).eval()
    assert greedy_ids(merged, tokenizer) == greedy_ids(peft_model, tokenizer)
    ids = torch.tensor([[1, 20, 40, 60]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-5)
    assert (logits(tiny_model, adapter) - logits(tiny_model)).abs().max() > 1e-3, "the adapter must matter"


def test_the_chat_offers_every_model_it_can_talk_to_once(ws, tiny_model):
    from core import chat_choices
    from core.config import EMBEDDED_MODEL

    merge("identity", "merged-chat")
    half_written = ws / "exports" / ".merged-chat.tmp"
    half_written.mkdir()
    (half_written / "config.json").write_text("{}")
    values = [b.value for b in chat_choices.bases()]
    assert values[0] == EMBEDDED_MODEL and len(values) == len(set(values))
    assert library.get("identity").base_model in values
    assert str(ws / "runs" / "fulltune" / "model") in values
    assert str(ws / "exports" / "merged-chat") in values and str(half_written) not in values
    assert chat_choices.trained_in(ws / "runs" / "identity").path == str(ws / "runs" / "identity" / "adapter")
    assert chat_choices.trained_in(ws / "runs" / "fulltune").kind == "model"
    assert chat_choices.trained_in(ws / "runs" / "nope") is None
    assert chat_choices.newest_adapter().kind == "adapter"
    assert {a.name for a in chat_choices.adapters()} == {"identity", "general"}

    from webui.chat_tab import NO_ADAPTER, on_adapter
    identity = library.get("identity")
    base, b = on_adapter(identity.id, library.get("general").id)     # A brings its base; B, on it too, stays
    assert base["value"] == identity.base_model and "value" not in b
    base, b = on_adapter(identity.id, "gone-since-listed")
    assert b["value"] == NO_ADAPTER


def test_merge_refuses_bad_requests_before_writing(ws):
    merge("identity", "taken")
    with pytest.raises(ConfigError, match="exports/taken already exists"):
        merge("general", "taken")
    with pytest.raises(ConfigError, match="not a valid name"):
        merge("general", "../escape")
    with pytest.raises(ConfigError, match="^field 'name': 'x{40}…' is not a valid name"):
        merge("general", "x" * 300)
    with pytest.raises(ModelError, match="full model already"):
        merge("fulltune", "x")
    with pytest.raises(ConfigError, match="'0GB' is not a size"):
        merge("general", "zero-shards", max_shard_size="0GB")
    assert sorted(p.name for p in (ws / "exports").iterdir()) == ["taken"]


def test_merged_models_are_listed_opened_in_chat_and_deleted_by_name_only(ws, cli):
    from core import chat_choices, exports

    merge("identity", "kept")
    merge("general", "gone")
    (ws / "exports" / ".gone.tmp").mkdir()                    # a merge being written is no export yet
    (ws / "exports" / ".gone.tmp" / "config.json").write_text("{}")
    found = {e.name: e for e in exports.list_exports()}
    assert set(found) == {"kept", "gone"}
    assert found["kept"].adapter == "identity" and found["kept"].base_model == library.get("identity").base_model
    assert found["kept"].size.endswith("B") and found["kept"].created[:2] == "20"
    meta = json.loads((ws / "exports" / "kept" / "workbench.json").read_text())
    del meta["adapter_name"]                  # as merges wrote it before the name was recorded
    (ws / "exports" / "kept" / "workbench.json").write_text(json.dumps(meta))
    assert exports.get("kept").adapter == "identity"          # runs/identity/adapter: the run names it
    assert chat_choices.opening(exports.get("kept")) == (str(ws / "exports" / "kept"), "")
    outside = ws.parent / "outside-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    for name in ("../outside-model", str(outside), ".gone.tmp", "", "nope"):
        with pytest.raises(WorkbenchError, match="no merged model"):
            exports.delete(name)
    assert outside.is_dir()
    res = cli("library", "exports", "--json")
    assert res.returncode == 0 and {e["name"] for e in json.loads(res.stdout)} == {"kept", "gone"}, res.stderr
    res = cli("library", "delete-export", "gone")
    assert res.returncode == 2 and "--yes" in res.stderr and (ws / "exports" / "gone").is_dir()
    res = cli("library", "delete-export", "gone", "--yes")
    assert res.returncode == 0 and "deleted exports/gone" in res.stdout, res.stderr
    assert not (ws / "exports" / "gone").exists() and [e.name for e in exports.list_exports()] == ["kept"]
    res = cli("library", "exports")
    assert res.returncode == 0 and "kept" in res.stdout and "identity" in res.stdout


# --- mix ---------------------------------------------------------------------------------------

def test_mix_of_one_and_zero_behaves_as_the_first_and_loads_with_plain_peft(ws, tiny_model):
    info = mix(["identity", "general"], [1.0, 0.0], "identity-only")
    path = ws / "adapters" / "identity-only"
    assert info.path == str(path) and info.source == "mixed" and info.base_model == str(tiny_model)
    assert [(p["name"], p["weight"]) for p in info.parents] == [("identity", 1.0), ("general", 0.0)]
    assert "identity-only" in [i.name for i in library.list_adapters()]
    mixed, first, second = (logits(tiny_model, p) for p in
                            (path, ws / "runs/identity/adapter", ws / "runs/general/adapter"))
    assert torch.allclose(mixed, first, atol=1e-5)
    assert (mixed - second).abs().max() > 1e-3


@pytest.mark.parametrize("combination,kwargs,rank", [
    ("cat", {}, 8), ("svd", {}, 4), ("svd", {"svd_rank": 2}, 2), ("ties", {"density": 0.5}, 4),
    ("dare_ties", {"density": 0.7}, 4),
])
def test_each_combination_gives_an_adapter_plain_peft_loads(ws, tiny_model, combination, kwargs, rank):
    info = mix(["identity", "general"], [0.6, 0.4], "mixed", combination=combination, **kwargs)
    assert info.rank == rank and json.loads((Path(info.path) / "workbench.json").read_text())["combination"] \
        == combination
    out = logits(tiny_model, Path(info.path))
    assert torch.isfinite(out).all() and (out - logits(tiny_model)).abs().max() > 1e-4


def test_cat_and_svd_of_one_and_zero_are_exact_too(ws, tiny_model):
    first = logits(tiny_model, ws / "runs/identity/adapter")
    for combination in ("cat", "svd"):
        info = mix(["identity", "general"], [1.0, 0.0], combination, combination=combination)
        assert torch.allclose(logits(tiny_model, Path(info.path)), first, atol=1e-4)


def test_linear_mix_of_different_ranks_is_refused_with_the_way_out(ws, tiny_model, tmp_path):
    import_adapter(foreign_adapter(tiny_model, tmp_path / "r8", rank=8), name="rank8")
    with pytest.raises(ConfigError, match="same rank") as err:
        mix(["identity", "rank8"], [0.5, 0.5], "bad")
    assert "identity: r=4" in str(err.value) and "cat" in str(err.value) and "svd" in str(err.value)
    assert mix(["identity", "rank8"], [0.5, 0.5], "good", combination="svd").rank == 8
    assert not (ws / "adapters" / "bad").exists()


def test_mix_of_rslora_adapters_keeps_their_scale(ws, tiny_model, tmp_path):
    """peft copies use_rslora into the mix while folding the scale into its weights; the saved mix
    must not be scaled again."""
    src = foreign_adapter(tiny_model, tmp_path / "rs", rank=4, rslora=True)
    import_adapter(src, name="rs")
    info = mix(["rs"], [1.0], "rs-again")
    assert torch.allclose(logits(tiny_model, Path(info.path)), logits(tiny_model, src), atol=1e-5)


@pytest.mark.parametrize("adapters,weights,kwargs,error", [
    (["identity", "fulltune"], [1, 1], {}, "full model"),
    (["identity", "identity"], [1, 1], {}, "listed twice"),
    (["identity", "general"], [1], {}, "one weight per adapter"),
    (["identity", "general"], [1, float("nan")], {}, "finite"),
    (["identity", "general"], [1e308, 1e308], {"combination": "cat"}, "overflow"),
    (["identity", "general"], [1, 1], {"combination": "magic"}, "not one of"),
    (["identity", "general"], [1, 1], {"combination": "ties"}, "needs a density"),
    (["identity", "general"], [1, 1], {"combination": "svd", "svd_rank": 100000}, "peft cannot mix"),
])
def test_mix_refuses_bad_requests(ws, adapters, weights, kwargs, error):
    with pytest.raises(WorkbenchError, match=error):
        mix(adapters, weights, "never", **kwargs)
    assert not (ws / "adapters").exists() or not list((ws / "adapters").iterdir())


def test_mix_of_different_bases_is_refused(ws, other_model, tmp_path):
    import_adapter(foreign_adapter(other_model, tmp_path / "o"), name="for-other")
    with pytest.raises(ModelError, match="different base models"):
        mix(["identity", "for-other"], [0.5, 0.5], "never", combination="svd")


# --- import and export -------------------------------------------------------------------------

def test_import_foreign_adapter_from_folder_and_zip(workspace, tiny_model, tmp_path):
    src = foreign_adapter(tiny_model, tmp_path / "made-elsewhere")
    (src / "training_args.bin").write_bytes(b"not copied")
    info = import_adapter(src)
    assert (info.name, info.source, info.base_model, info.rank) == ("made-elsewhere", "imported", str(tiny_model), 4)
    assert sorted(p.name for p in Path(info.path).iterdir()) == \
        ["README.md", "adapter_config.json", "adapter_model.safetensors", "workbench.json"]
    assert torch.allclose(logits(tiny_model, Path(info.path)), logits(tiny_model, src))

    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in src.iterdir():
            zf.write(p, f"wrapped/{p.name}")
    zipped = import_adapter(archive, name="from-zip")
    assert zipped.path == str(workspace / "adapters" / "from-zip")
    assert torch.allclose(logits(tiny_model, Path(zipped.path)), logits(tiny_model, src))
    assert {i.name for i in library.list_adapters()} == {"made-elsewhere", "from-zip"}
    assert import_adapter(src).name == "made-elsewhere-2"
    with pytest.raises(ConfigError, match="already exists"):
        import_adapter(src, name="from-zip")


def test_an_adapter_carrying_mistyped_metadata_is_listed_shown_and_deleted(workspace, tiny_model, tmp_path):
    src = foreign_adapter(tiny_model, tmp_path / "odd")
    (src / "workbench.json").write_text(json.dumps({"datasets": 5, "metrics": "str", "parents": {"a": 1},
                                                    "created": 7}))
    info = import_adapter(src)
    assert (info.datasets, info.steps, info.parents, info.rank) == ([], None, [], 4)     # parents: a dict
    (Path(info.path) / "workbench.json").write_text(json.dumps({"metrics": [1], "datasets": ["d"]}))
    assert library.get("odd").datasets == ["d"] and [i.name for i in library.list_adapters()] == ["odd"]
    library.delete("odd")
    assert library.list_adapters() == []


def test_an_adapter_without_a_base_takes_the_one_named(workspace, tiny_model, tmp_path):
    src = foreign_adapter(tiny_model, tmp_path / "nobase")
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (src / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="does not name its base model"):
        import_adapter(src)
    assert import_adapter(src, base_model=str(tiny_model)).base_model == str(tiny_model)


def zip_with(path: Path, adapter: Path, extra: zipfile.ZipInfo, payload: bytes = b"x") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for p in adapter.iterdir():
            zf.write(p, f"a/{p.name}")
        zf.writestr(extra, payload)
    return path


def symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("a/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("case,error", [
    ("dotdot", "points outside its folder"),
    ("absolute", "points outside its folder"),
    ("symlink", "symbolic link"),
    ("pickle", "pickle"),
    ("no-config", "no adapter_config.json"),
    ("bad-json", "not valid JSON"),
    ("named-other-base", "was trained on"),
    ("shapes", "does not fit base model"),
    ("rank", "the weights hold rank 4"),
    ("not-a-zip", "not a readable zip"),
])
def test_bad_imports_are_refused_and_leave_nothing(workspace, tiny_model, other_model, tmp_path, case, error):
    src = foreign_adapter(tiny_model, tmp_path / "src")
    kwargs = {}
    if case == "dotdot":
        src = zip_with(tmp_path / "z.zip", src, zipfile.ZipInfo("a/../../../evil.txt"))
    elif case == "absolute":
        src = zip_with(tmp_path / "z.zip", src, zipfile.ZipInfo(str(tmp_path / "evil.txt")))
    elif case == "symlink":
        src = zip_with(tmp_path / "z.zip", src, symlink_member(), b"/etc/passwd")
    elif case == "pickle":
        weights = src / "adapter_model.safetensors"
        from safetensors.torch import load_file
        torch.save(load_file(weights), src / "adapter_model.bin")
        weights.unlink()
    elif case == "no-config":
        (src / "adapter_config.json").unlink()
    elif case == "bad-json":
        (src / "adapter_config.json").write_text('{"peft_type": "LORA",\n "r": }')
    elif case == "named-other-base":
        kwargs["base_model"] = str(other_model)
    elif case == "shapes":
        src = foreign_adapter(other_model, tmp_path / "wrong")
        config = json.loads((src / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = str(tiny_model)
        (src / "adapter_config.json").write_text(json.dumps(config))
    elif case == "rank":
        config = json.loads((src / "adapter_config.json").read_text())
        (src / "adapter_config.json").write_text(json.dumps({**config, "r": 999}))
    elif case == "not-a-zip":
        src = tmp_path / "fake.zip"
        src.write_text("hello")
    with pytest.raises(ModelError, match=error) as err:
        import_adapter(src, **kwargs)
    assert "Traceback" not in str(err.value)
    assert_nothing_imported(workspace)
    assert not list(tmp_path.rglob("evil.txt")) and not list(workspace.rglob("evil.txt"))


def test_an_adapter_naming_a_folder_from_elsewhere_takes_the_named_base_if_its_shapes_fit(
        workspace, tiny_model, other_model, tmp_path):
    fits = _renamed_base(foreign_adapter(tiny_model, tmp_path / "fits"), tiny_model)
    with pytest.raises(ModelError, match="not found"):
        import_adapter(fits)
    assert import_adapter(fits, base_model=str(tiny_model)).base_model == str(tiny_model)
    misfit = _renamed_base(foreign_adapter(other_model, tmp_path / "misfit"), other_model)
    with pytest.raises(ModelError, match=r"does not fit .* tensor '.*lora_[AB].weight' has shape .* size (32|64)"):
        import_adapter(misfit, base_model=str(tiny_model), name="misfit")
    assert not (workspace / "adapters" / "misfit").exists()


def _renamed_base(src: Path, base: Path) -> Path:
    """An adapter whose config points at a folder elsewhere named like `base` (another machine's path)."""
    config = json.loads((src / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = f"/elsewhere/{base.name}"
    (src / "adapter_config.json").write_text(json.dumps(config))
    return src


def test_export_zip_is_atomic_and_imports_back(ws, tiny_model):
    path = export_zip("identity")
    assert path == ws / "exports" / "identity.zip"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert "identity/adapter_config.json" in names and "identity/adapter_model.safetensors" in names
    assert [p.name for p in (ws / "exports").iterdir()] == ["identity.zip"]
    back = import_adapter(path, name="identity-copy")
    assert (back.steps, back.base_model, back.source) == (8, str(tiny_model), "imported")
    assert torch.allclose(logits(tiny_model, Path(back.path)), logits(tiny_model, ws / "runs/identity/adapter"))
    assert_shared(path, Path(back.path), ws / "runs" / "identity")


def test_an_adapter_whose_config_cannot_be_read_is_still_an_adapter_and_says_which_file(ws, tiny_model, cli):
    """Not taken for a full model (the chat would then blame the base: "has no config.json")."""
    from core import chat_choices
    from core.chat import one_shot

    (ws / "runs" / "identity" / "adapter" / "adapter_config.json").write_text("{broken")
    info = library.get("identity")
    assert info.kind == "adapter" and chat_choices.opening(info) == (str(tiny_model), info.id)
    assert info.problem == "adapter_config.json cannot be read" and not library.get("general").problem
    assert "(adapter_config.json cannot be read)" in cli("library", "list").stdout
    with pytest.raises(WorkbenchError, match="adapter_config.json") as refused:
        one_shot("identity", "Hi", max_new_tokens=2)
    assert "not valid JSON" in str(refused.value) and "has no config.json" not in str(refused.value)


def assert_shared(*paths):
    """Written with the modes the umask allows (safetensors and temp files would give 0600): others
    who may read the workspace (a serving engine, the host user of a Docker volume) can."""
    from core.workspace import FILE_MODE, FOLDER_MODE

    for path in paths:
        for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
            mode = p.stat().st_mode & 0o777
            assert mode == (FOLDER_MODE if p.is_dir() else FILE_MODE), f"{p}: {oct(mode)}"


# --- rename and delete -------------------------------------------------------------------------

def test_rename_checks_names_and_moves_imported_folders(ws, tiny_model, tmp_path):
    trained = library.rename("identity", "who-am-i")
    assert trained.name == "who-am-i" and trained.path == str(ws / "runs" / "identity" / "adapter")
    imported = import_adapter(foreign_adapter(tiny_model, tmp_path / "f"), name="foreign")
    moved = library.rename("foreign", "foreign-2")
    assert moved.id == imported.id and moved.path == str(ws / "adapters" / "foreign-2")
    assert Path(moved.path).is_dir() and not (ws / "adapters" / "foreign").exists()
    with pytest.raises(ConfigError, match="already exists"):
        library.rename("foreign-2", "who-am-i")
    for bad in ("", "../up", "a/b", ".hidden", "x" * 65, "a..b"):
        with pytest.raises(ConfigError, match="not a valid name"):
            library.rename("general", bad)
    assert {i.name for i in library.list_adapters()} == {"who-am-i", "general", "fulltune", "foreign-2"}


def test_delete_removes_the_entry_then_the_files(ws, tiny_model, tmp_path):
    imported = import_adapter(foreign_adapter(tiny_model, tmp_path / "f"), name="foreign")
    library.delete("foreign")
    library.delete("identity")
    assert not Path(imported.path).exists() and not (ws / "runs" / "identity" / "adapter").exists()
    assert (ws / "runs" / "identity" / "metrics.jsonl").is_file(), "the run's history stays"
    assert {i.name for i in library.list_adapters()} == {"general", "fulltune"}
    assert not [p for p in (ws / "adapters").iterdir()] and not list((ws / "runs" / "identity").glob(".*"))


def test_a_delete_the_database_refuses_leaves_entry_and_files_intact(ws):
    from core.db import db_path

    folder = ws / "runs" / "identity" / "adapter"
    library.list_adapters()
    before = files_of(folder)
    conn = sqlite3.connect(db_path())
    conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON adapters BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END")
    conn.commit()
    with pytest.raises(WorkbenchError, match="database refused .*disk I/O error.*nothing was removed"):
        library.delete("identity")
    assert files_of(folder) == before and library.get("identity").path == str(folder)
    assert not list(folder.parent.glob(".*"))
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    library.delete("identity")
    assert not folder.exists()


def test_trash_left_by_an_unfinished_delete_is_cleared_or_restored(ws, monkeypatch):
    monkeypatch.setattr(library, "remove_tree", lambda path: None)     # the files could not be removed
    library.delete("identity")
    trash = list((ws / "runs" / "identity").glob(".adapter.trash-*"))
    assert len(trash) == 1 and "identity" not in {i.name for i in library.list_adapters()}
    assert not trash[0].exists(), "a later listing clears the trash of a committed delete"

    folder = ws / "runs" / "general" / "adapter"
    before = files_of(folder)
    folder.rename(folder.with_name(".adapter.trash-0000"))     # a delete that failed and could not restore
    assert library.get("general").path == str(folder) and files_of(folder) == before


# --- command line ------------------------------------------------------------------------------

def test_cli_library_and_merge(ws, cli, tiny_model, other_model, tmp_path):
    src = foreign_adapter(tiny_model, tmp_path / "cli-made")
    res = cli("library", "import", src, "--name", "cli")
    assert res.returncode == 0 and "imported 'cli'" in res.stdout, res.stderr
    res = cli("library", "list", "--json")
    assert res.returncode == 0, res.stderr
    assert {a["name"] for a in json.loads(res.stdout)} == {"identity", "general", "fulltune", "cli"}
    res = cli("library", "mix", "identity", "cli", "--weights", "1", "0", "--name", "mixed", "--combination", "svd")
    assert res.returncode == 0 and res.stdout.strip() == str(ws / "adapters" / "mixed"), res.stderr
    res = cli("merge", "--adapter", "mixed", "--out", "merged-model")
    assert res.returncode == 0 and res.stdout.strip() == str(ws / "exports" / "merged-model"), res.stderr
    assert "[100%]" in res.stderr
    res = cli("library", "export-zip", "cli")
    assert res.returncode == 0 and Path(res.stdout.strip()).is_file()
    for args, words in [(("library", "delete", "cli"), "--yes"),
                        (("merge", "--adapter", "nope", "--out", "x"), "no adapter 'nope'"),
                        (("merge", "--adapter", "cli", "--out", "my/merge"), "field '--out': "),
                        (("merge", "--adapter", "cli", "--out", "y", "--max-shard-size", "abc"), "not a size"),
                        (("chat", "--adapter", src, "--prompt", "hi", "--max-new-tokens", "0"), "at least 1"),
                        (("chat", "--adapter", ws / "runs" / "identity" / "adapter", "--model", other_model,
                          "--prompt", "hi"), "does not fit")]:
        res = cli(*args)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = cli("library", "delete", "cli", "--yes")
    assert res.returncode == 0 and not (ws / "adapters" / "cli").exists()


def test_a_refused_zip_is_named_by_its_own_name_not_the_folder_it_was_unpacked_to(workspace, tiny_model, tmp_path):
    src = foreign_adapter(tiny_model, tmp_path / "src")
    (src / "adapter_config.json").unlink()
    archive = tmp_path / "noconfig.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in src.iterdir():
            zf.write(f, f"src/{f.name}")
    with pytest.raises(ModelError, match="no adapter_config.json") as err:
        import_adapter(archive)
    assert "noconfig.zip" in str(err.value) and ".import-" not in str(err.value), str(err.value)


def test_cli_output_cut_short_by_its_reader_ends_quietly(ws):
    proc = subprocess.Popen([sys.executable, "-m", "core", "library", "list"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                                  # as `| head -0` does
    err = proc.stderr.read()
    assert proc.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_mix_weights_typed_in_a_box_are_read_or_refused_by_name():
    from core.adapter_mix import parse_weights
    from core.errors import ConfigError

    assert parse_weights("0.7; 0.3,", 2) == [0.7, 0.3] and parse_weights(" ", 3) == [1.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="'abc' is not a number") as refused:
        parse_weights("0.7, abc", 2)
    assert refused.value.field == "weights"


def test_merge_and_mix_run_as_child_processes_with_progress_and_the_clis_refusals(ws):
    from core.child_task import failure_text, run_core_command

    seen = []
    path = run_core_command(["merge", "--adapter", "identity", "--out", "child"],
                            progress=lambda fraction, message: seen.append(fraction))
    assert path == str(ws / "exports" / "child") and (ws / "exports" / "child" / "config.json").is_file()
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    with pytest.raises(WorkbenchError) as refused:
        run_core_command(["merge", "--adapter", "general", "--out", "child"])
    # The child's own error, in its parts: the field is named apart, for the UI to label.
    assert refused.value.message == "exports/child already exists; choose another name"
    assert refused.value.field == "--out"          # the flag; the Library labels it as its Export name box
    run_core_command(["library", "mix", "identity", "general", "--weights", "0.5", "0.5", "--name", "halves"])
    assert library.get("halves").name == "halves"
    assert "ran out of memory" in failure_text(-9, ["[ 30%] loading the base"])


def test_chat_takes_an_adapter_by_its_library_name_as_merge_does(ws):
    from core.chat import one_shot

    folder = ws / "runs" / "identity" / "adapter"
    assert one_shot("identity", "Who are you?", max_new_tokens=6) == one_shot(folder, "Who are you?", max_new_tokens=6)
    with pytest.raises(ModelError, match="not an adapter folder, a name in the library, or a run"):
        one_shot("no-such-adapter", "hi")


def test_merging_an_adapter_deleted_since_it_was_picked_says_so_in_the_merge_section(workspace):
    from webui.library_tab import do_merge

    text, *listing = do_merge("gone-since-picked", "", "auto", "", None, "en", progress=lambda *a, **k: None)
    assert text.startswith("Error: **Adapter**: no adapter 'gone-since-picked' in the library") and len(listing) == 6


def test_rename_with_nothing_picked_asks_for_a_pick(workspace):
    from webui.library_tab import do_rename, guarded

    text, *listing = guarded(do_rename)(None, "new-name", "", None, "zh")
    assert text == "请先选择一个适配器。" and len(listing) == 6


def test_a_bad_export_name_is_blamed_on_the_export_name_box_though_the_command_calls_it_out(ws, cli):
    """The UI runs `merge --out NAME` as a child command, whose error names the flag."""
    from webui.library_tab import do_merge

    assert "field '--out': " in cli("merge", "--adapter", "identity", "--out", "../up").stderr
    assert "must not end in .zip" in cli("merge", "--adapter", "identity", "--out", "identity.zip").stderr
    text, *_ = do_merge("identity", "../up", "auto", "", None, "en", progress=lambda *a, **k: None)
    assert text.startswith("Error: **Export name**: "), text


def test_an_adapter_with_nan_weights_is_refused_by_merge_in_words(ws, cli):
    from safetensors.torch import load_file, save_file

    weights = ws / "runs" / "identity" / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, weights)
    r = cli("merge", "--adapter", "identity", "--out", "broken")
    assert r.returncode == 2 and "field 'adapter': the adapter cannot be merged: NaNs detected" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (ws / "exports" / "broken").exists()
