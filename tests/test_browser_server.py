"""The app started afresh: served beyond this machine (--host 0.0.0.0), with a login and typed
paths kept to the workspace; restarted on a workspace that holds an adapter already."""
import pytest

from browser import browser, open_page, open_tab, serve
from conftest import ROOT, run_cli

pytestmark = pytest.mark.browser


def test_a_server_others_reach_asks_for_a_login_and_keeps_typed_paths_home(tmp_path, tiny_model):
    workspace = tmp_path / "workspace"
    with serve(workspace, "--host", "0.0.0.0", "--auth", "ada:s3cret") as (url, _):
        with browser() as b:
            page = open_page(b, url)
            page.get_by_label("username").fill("ada")
            page.get_by_label("password").fill("wrong")
            page.get_by_role("button", name="Login").click()
            page.get_by_text("Incorrect Credentials").wait_for()
            page.get_by_label("username").fill("ada")
            page.get_by_label("password").fill("s3cret")
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("#mem-summary >> text=GiB")       # the demo's model is the workspace's own
            open_tab(page, "Train")
            page.locator("#field-model input").fill(str(tiny_model))
            page.locator("#field-model input").press("Enter")
            page.wait_for_selector("#mem-summary >> text=outside the folders this server lets its visitors name")
            page.locator("#start").click()
            page.wait_for_selector("#train-message >> text=outside the folders")
            assert "--allow-path" in page.locator("#train-message").inner_text()
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


def test_a_restarted_server_shows_the_detail_of_the_adapter_it_picks(tmp_path, tiny_model):
    workspace = tmp_path / "workspace"
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model}\nname: before\ndatasets: [{ROOT / 'presets/data/identity.jsonl'}]\n"
                      f"train: {{max_steps: 2}}\n")
    assert run_cli("--workspace", workspace, "train", "--config", config).returncode == 0
    with serve(workspace) as (url, _):
        with browser() as b:
            page = open_page(b, url)
            page.wait_for_selector("#mem-summary >> text=GiB")
            open_tab(page, "Library")
            assert page.locator("#lib-pick input").first.input_value().startswith("before")
            page.wait_for_selector("#lib-curve .js-plotly-plot")
            page.wait_for_selector("#lib-memory >> text=measured")
