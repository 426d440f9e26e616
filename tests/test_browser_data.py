"""The Data tab in a real browser: upload, detected format, validation report, loss-mask preview,
length histogram, save to the library and use in the Train form."""
import subprocess
import sys

import pytest

from browser import browser, open_page, open_tab, pick, serve, shot
from conftest import ROOT

pytestmark = pytest.mark.browser

FIXTURES = ROOT / "tests" / "fixtures" / "llamafactory"


WORKSPACE = {}


@pytest.fixture(scope="module")
def page(tmp_path_factory, embedded_model):
    workspace = WORKSPACE["path"] = tmp_path_factory.mktemp("ui-data") / "workspace"
    with serve(workspace) as (url, _):
        with browser() as b:
            page = open_page(b, url)
            page.wait_for_selector("#start")
            open_tab(page, "Data")
            yield page


def test_upload_shows_format_report_preview_and_lengths(page, tmp_path):
    bad = tmp_path / "mixed.jsonl"
    bad.write_text('{"instruction": "Say hi", "output": "Hi!"}\n'
                   '{"instruction": "Say bye", "output": ""}\n'
                   '{"messages": [{"role": "user", "content": "Q"}]}\n')
    assert not page.locator("#data-problems").is_visible()      # no file, no problems table
    page.locator("#data-upload input[type=file]").set_input_files([str(FIXTURES / "alpaca_en_demo.json"), str(bad)])
    page.wait_for_selector("#data-preview .wb-trained")
    detected = page.locator("#data-detected").inner_text()
    assert "alpaca_en_demo.json" in detected and "Alpaca" in detected and "usable" in detected
    problems = page.locator("#data-problems").inner_text()
    assert "mixed.jsonl" in problems and "empty" in problems and "line" in problems
    masked = page.locator("#data-preview .wb-sample .wb-masked").first.inner_text()
    trained = page.locator("#data-preview .wb-sample .wb-trained").first.inner_text()
    assert "<|im_start|>user" in masked and "<|im_start|>" not in trained
    page.wait_for_function("() => { const p = document.querySelector('#data-hist .js-plotly-plot');"
                           " return p && p.data && p.data[0].x.length > 0; }")
    assert "none is cut (longest: " in page.locator("#data-lengths").inner_text()      # 442 tokens of 1,024
    page.locator("#data-model input").click()               # the preview may use any model the form trains
    page.get_by_role("option", name="Qwen/Qwen2.5-0.5B", exact=True).wait_for()
    page.keyboard.press("Escape")
    shot(page, "tab-data")


def test_save_to_library_and_use_in_train(page):
    name = page.locator("#data-name textarea, #data-name input").first
    assert name.input_value() == "alpaca_en_demo"               # from the first upload's file name
    name.fill("alpaca demo")
    page.locator("#data-save").click()
    page.wait_for_selector("#data-message >> text=cannot hold ' '")
    assert "e.g. 'alpaca_demo'" in page.locator("#data-message").inner_text()
    name.fill("alpaca-demo")
    page.locator("#data-save").click()
    page.wait_for_selector("#data-message >> text=Saved")
    assert "alpaca-demo" in page.locator("#data-library").inner_text()
    page.locator("#data-pick input").click()
    page.get_by_role("option", name="alpaca-demo").click()
    page.locator("#data-use").click()
    page.wait_for_function("() => document.querySelector('#datasets').innerText.includes('alpaca-demo')")


def test_rename_then_delete_asks_first_and_leaves_the_others(page):
    open_tab(page, "Data")
    page.locator("#data-name textarea, #data-name input").first.fill("second")
    page.locator("#data-save").click()
    page.wait_for_selector("#data-message >> text=second")
    pick(page, "data-pick", "alpaca-demo")
    page.locator("#data-new-name textarea, #data-new-name input").first.fill("renamed")
    page.locator("#data-rename").click()
    page.wait_for_selector("#data-message >> text=Renamed")
    assert page.locator("#data-pick input").first.input_value() == "renamed"
    page.locator("#data-delete").click()
    page.wait_for_selector("#data-message >> text=Tick the confirmation box first")
    page.locator("#data-confirm input").check()
    page.locator("#data-delete").click()
    page.wait_for_selector("#data-message >> text=Deleted")
    assert page.locator("#data-pick input").first.input_value() == ""
    assert not page.locator("#data-confirm input").is_checked()
    page.locator("#data-delete").click()
    page.wait_for_selector("#data-message >> text=Pick a saved dataset first")
    table = page.locator("#data-library").inner_text()
    assert "second" in table and "renamed" not in table


def test_the_train_forms_dataset_list_shows_a_dataset_saved_elsewhere(page):
    open_tab(page, "Train")
    subprocess.run([sys.executable, "-m", "core", "--workspace", str(WORKSPACE["path"]), "data", "import",
                    "--name", "from-cli", str(FIXTURES / "alpaca_en_demo.json")], cwd=ROOT, check=True,
                   capture_output=True)
    page.locator("#datasets input").first.click()
    page.get_by_role("option", name="from-cli").first.wait_for()
