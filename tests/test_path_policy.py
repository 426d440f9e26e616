"""Typed paths on a server that others reach: kept to the workspace and the folders allowed."""
import json
import os

import pytest

from conftest import ROOT
from core import jobs, path_policy
from core.config import RunConfig
from core.errors import ConfigError, WorkbenchError

DATA = ROOT / "presets" / "data" / "identity.jsonl"


@pytest.fixture
def restricted(workspace):
    workspace.mkdir(parents=True, exist_ok=True)
    path_policy.restrict([workspace])
    yield workspace
    path_policy.unrestrict()


def refused(fn, *args, field):
    with pytest.raises(ConfigError, match="outside the folders this server lets its visitors name") as e:
        fn(*args)
    assert e.value.field == field
    assert "--allow-path" in str(e.value)


def test_unrestricted_by_default(tiny_model):
    from core.arch import load_arch

    assert path_policy.roots() is None
    assert load_arch(str(tiny_model)).hidden_size > 0


def test_a_model_outside_is_refused_whether_it_exists_or_not(restricted, tiny_model, monkeypatch):
    from core import models
    from core.arch import load_arch

    monkeypatch.chdir(ROOT)                 # where the app runs: relative paths start there

    refused(load_arch, str(tiny_model), field="model")
    refused(models.resolve, str(tiny_model), field="model")
    refused(models.resolve, "/no/such/model", field="model")           # the same answer: nothing is told
    refused(models.check_trainable, str(tiny_model / "config.json"), field="model")
    path_policy.check("Qwen/Qwen2.5-0.5B-Instruct", "model")             # a hub id names no file here
    refused(path_policy.check, "~", "model", field="model")
    refused(path_policy.check, "./core", "model", field="model")           # relative to the app's folder
    refused(path_policy.check, "core", "model", field="model")             # there, and outside
    refused(path_policy.check, str(restricted) + "/\x00x", "model", field="model")   # no path at all


def test_a_folder_the_operator_allows_is_usable(workspace, tiny_model):
    from core.arch import load_arch

    path_policy.restrict([workspace, tiny_model.parent])
    try:
        assert load_arch(str(tiny_model)).hidden_size > 0
    finally:
        path_policy.unrestrict()


def test_datasets_inside_are_read_and_outside_are_refused(restricted, tmp_path):
    from core.data import resolve_files

    inside = restricted / "mine.jsonl"
    inside.write_text(DATA.read_text())
    assert resolve_files(str(inside))[0][0] == inside
    refused(resolve_files, str(DATA), field="datasets")
    link = restricted / "link.jsonl"
    link.symlink_to(tmp_path / "secret.jsonl")
    (tmp_path / "secret.jsonl").write_text(DATA.read_text())
    refused(resolve_files, str(link), field="datasets")                  # a link cannot lead outside
    refused(resolve_files, str(restricted / ".." / "secret.jsonl"), field="datasets")
    with pytest.raises(WorkbenchError, match="no saved dataset of that name"):
        resolve_files("not-saved")                                       # a name, not a path


def test_imports_and_adapter_folders_outside_are_refused(restricted, tmp_path):
    from core import library
    from core.adapter_io import import_adapter
    from core.llamafactory import import_llamafactory

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
    refused(import_adapter, str(folder), field="source")
    refused(library.adapter_dir, str(folder), field="adapter")
    (tmp_path / "dataset_info.json").write_text("{}")
    refused(import_llamafactory, str(tmp_path), field="folder")
    assert not (restricted / "adapters").exists() or not os.listdir(restricted / "adapters")


def test_a_run_on_a_model_outside_is_not_queued(restricted, tiny_model):
    cfg = RunConfig.from_dict({"model": str(tiny_model), "datasets": [str(DATA)], "train": {"max_steps": 1}})
    refused(jobs.submit, cfg, field="model")
    assert jobs.list_jobs() == []


def test_a_merge_would_load_a_base_outside_is_refused(workspace, tiny_model):
    from core import chat_choices, library
    from core.adapter_merge import check_request
    from core.config import EMBEDDED_MODEL
    from core.train import run

    run(RunConfig.from_dict({"model": str(tiny_model), "datasets": [str(DATA)], "name": "m",
                             "output_dir": str(workspace / "runs" / "m"), "train": {"max_steps": 1}}))
    assert check_request("m", "merged")[1] == "merged"
    path_policy.restrict([workspace])
    try:
        refused(check_request, "m", "merged", field="base_model")
        offered = [b.value for b in chat_choices.bases()]        # lists leave out what picking would refuse
        assert EMBEDDED_MODEL in offered and str(tiny_model) not in offered
    finally:
        path_policy.unrestrict()
    assert library.get("m").base_model == str(tiny_model)


@pytest.mark.parametrize("argv,restricts", [
    ([], False), (["--host", "localhost"], False), (["--host", "0.0.0.0"], True), (["--share"], True),
    (["--restrict-paths"], True),
])
def test_the_server_restricts_typed_paths_only_when_others_can_reach_it(workspace, monkeypatch, argv, restricts):
    import app
    from core.presets import SHIPPED

    monkeypatch.setenv("WORKBENCH_ALLOW_PATHS", "/srv/models:/mnt/data")
    try:
        folders = app.restrict_paths(app.parse_args(argv + ["--allow-path", "/srv/data"]))
        assert (folders is not None) == restricts == (path_policy.roots() is not None)
        if restricts:
            assert folders[:2] == [str(workspace), str(SHIPPED)]
            assert folders[-3:] == ["/srv/models", "/mnt/data", "/srv/data"]
    finally:
        path_policy.unrestrict()
