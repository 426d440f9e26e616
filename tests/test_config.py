import pytest

from core.config import RunConfig, field_meta
from core.errors import ConfigError


def test_yaml_round_trip_keeps_every_field():
    cfg = RunConfig.from_dict({
        "model": "some/model", "method": "qlora",
        "datasets": [{"path": "a.jsonl", "ratio": 0.9}, {"path": "b.json", "ratio": 0.1}],
        "lora": {"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "dora": True},
        "train": {"learning_rate": 1e-4, "max_steps": 30, "optimizer": "adamw8bit"},
        "data": {"packing": True, "eval_split": 0.1},
    })
    again = RunConfig.from_yaml(cfg.to_yaml())
    assert again == cfg
    assert again.lora.target_modules == "q_proj,v_proj"
    assert again.datasets[1].ratio == 0.1


def test_overrides_use_dotted_keys_and_yaml_values():
    cfg = RunConfig.from_yaml("model: m\n", overrides=["lora.rank=4", "train.learning_rate=3e-4",
                                                       "data.packing=true", "datasets=[x.jsonl]"])
    assert cfg.lora.rank == 4 and cfg.train.learning_rate == 3e-4 and cfg.data.packing
    assert [d.path for d in cfg.datasets] == ["x.jsonl"]


@pytest.mark.parametrize("text,field,line,words", [
    ("model: m\nlora:\n  rnak: 8\n", "lora.rnak", 3, "did you mean 'lora.rank'"),
    ("model: m\ntrain:\n  batch_size: many\n", "train.batch_size", 3, "whole number"),
    ("model: m\nlora:\n  rank: 0\n", "lora.rank", 3, "at least 1"),
    ("model: m\ntrain:\n  learning_rate: -0.001\n", "train.learning_rate", 3, "greater than 0"),
    ("model: m\nmethod: magic\n", "method", 2, "not one of"),
    ("model: m\ndata:\n  packing: maybe\n", "data.packing", 3, "true or false"),
])
def test_bad_values_name_the_field_and_the_line(text, field, line, words):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(text, file="run.yaml")
    err = info.value
    assert err.field == field and err.line == line and err.file == "run.yaml"
    assert words in str(err)
    assert f"run.yaml:{line}" in str(err)


def test_broken_yaml_points_at_its_line():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml("model: m\nlora: [1, 2\n", file="x.yaml")
    assert info.value.line is not None and "YAML" in str(info.value)


@pytest.mark.parametrize("text", ["", "# lora:\n#   rank: 8\n"])
def test_a_config_file_without_settings_is_refused_not_read_as_the_defaults(tmp_path, text, cli, workspace):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="holds no settings") as info:
        RunConfig.load(path)
    assert info.value.file == str(path)
    r = cli("train", "--config", path)
    assert r.returncode == 2 and f"{path}: the config file holds no settings" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (workspace / "runs").exists()


def test_fields_carry_help_in_both_languages_and_bounds():
    meta = field_meta("lora.rank")
    assert meta["help"] and meta["help_zh"] and meta["min"] == 1
    assert "AdamW" in field_meta("train.optimizer")["help"]


def test_an_override_error_names_the_command_line_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ntrain:\n  batch_size: 2\n  epochs: 0\n")
    for override, words in (("train.batch_size=abc", "whole number"), ("train.batch_size=0", "too small"),
                            ("train.batch_sise=2", "did you mean")):
        with pytest.raises(ConfigError, match=words) as e:
            RunConfig.load(path, overrides=[override, "train.epochs=1"])
        assert e.value.line is None and str(e.value).startswith("command line, field 'train.batch_s")
    with pytest.raises(ConfigError) as e:             # the file's own mistake still names the file and line
        RunConfig.load(path, overrides=["train.batch_size=4"])
    assert e.value.file == str(path) and e.value.line == 4 and e.value.field == "train.epochs"


def test_every_option_has_a_place_in_the_train_form():
    """The form is built from GROUPS: an option left out of it could be set only in YAML."""
    import dataclasses
    import typing

    from webui.form import GROUPS

    def leaves(cls, prefix=""):
        for f in dataclasses.fields(cls):
            kind = typing.get_type_hints(cls)[f.name]
            yield from leaves(kind, f"{prefix}{f.name}.") if dataclasses.is_dataclass(kind) else [prefix + f.name]

    in_form = {name for names in GROUPS.values() for name in names}
    drawn_by_the_tab = {"datasets", "output_dir"}        # the dataset picker; the run folder follows the name
    assert set(leaves(RunConfig)) - drawn_by_the_tab == in_form


@pytest.mark.parametrize("text,error", [
    ("a: &a [1, 2, 3]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n", "aliases"),
    ("a: &a [*a]\n", "aliases"),
    ("a: " + "[" * 5000 + "\n", "nested too deeply"),
    ("train:\n  seed: " + "1" * 5000 + "\n", "4300 digits"),
    ("train:\n  learning_rate: .nan\n", "not a finite number"),
    ("train:\n  max_grad_norm: .inf\n", "not a finite number"),
    ("train:\n  seed: 4294967296\n", "too large"),
    ("train:\n  max_steps: 99999999999999999999\n", "too large: must be at most 10000000"),
    ("train:\n  save_steps: 99999999999\n", "too large"),
], ids=["alias-bomb", "recursive-alias", "deep", "long-integer", "nan", "inf", "seed-range", "steps", "save-steps"])
def test_hostile_yaml_is_refused_in_words_at_once(tmp_path, text, error):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error):
        RunConfig.load(path)


def test_a_users_preset_is_saved_and_loaded_but_never_under_a_shipped_name(workspace):
    from core import presets

    cfg = presets.load("demo").with_overrides(["lora.rank=4"])
    with pytest.raises(ConfigError, match="comes with the workbench") as refused:
        presets.save("demo", cfg)
    assert refused.value.field == "preset" and presets.load("demo").lora.rank != 4
    presets.save("my demo", cfg)
    assert presets.load("my-demo").lora.rank == 4 and "demo" in presets.available()


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lora:\n  rank: 8\n  alpha: 16\n  rank: 64\n")
    with pytest.raises(ConfigError, match=r"given twice \(lines 2 and 4\)") as refused:
        RunConfig.load(path)
    assert refused.value.field == "lora.rank"


def test_a_refusal_in_the_form_names_the_field_by_its_label_and_the_file_to_blame():
    from core.errors import ConfigError, DataError
    from webui.i18n import describe_error

    data = DataError("no usable rows", file="/d/identity.jsonl", field="datasets.1")
    assert describe_error(data, "en") == "**Datasets 2** (`datasets.1`), `/d/identity.jsonl`: no usable rows"
    with pytest.raises(ConfigError) as ratio:
        RunConfig.from_dict({"datasets": [{"path": "a", "ratio": 1}, {"path": "b", "ratio": -1}]})
    assert describe_error(ratio.value, "en").startswith("**Datasets 2, Mix ratio** (`datasets.1.ratio`): -1.0 is too")
    assert describe_error(ratio.value, "zh").startswith("**数据集 2 的混合比例**（`datasets.1.ratio`）：-1.0 过小")
    assert describe_error(ConfigError("too small", field="lora.rank"), "en") == "**Rank** (`lora.rank`): too small"
    typo = ConfigError("unknown key", field="lora.rnk", file="c.yaml", line=3)
    assert describe_error(typo, "en") == "`lora.rnk`, `c.yaml:3`: unknown key"


def test_a_refusal_in_the_other_tabs_names_the_box_by_its_label_never_the_internal_field_name():
    from core.errors import DataError, ModelError
    from core.jobs import JobError
    from webui import data_tab, library_tab, runs_tab
    from webui.i18n import failed

    assert failed(JobError("no run 'x'", field="run"), "en", runs_tab.RUN_FIELDS) == "Error: **Run**: no run 'x'"
    taken = ModelError("exports/m already exists", field="name")
    assert failed(taken, "en", library_tab.MERGE_FIELDS) == "Error: **Export name**: exports/m already exists"
    assert failed(taken, "zh", library_tab.FIELDS) == "错误：**新名称**：exports/m already exists"
    bad = DataError("not JSON", file="a.jsonl", line=4, field="files", hint="fix the line")
    assert failed(bad, "en", data_tab.SAVE_FIELDS) == "Error: **Upload data files (JSON, JSONL, CSV, Parquet, " \
        "TXT; several at once)**, `a.jsonl:4`: not JSON (fix the line)"
    assert failed(ModelError("gone", field="source"), "en") == "Error: gone"
