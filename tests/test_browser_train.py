"""The Train and Runs tabs in a real browser on the tiny model: memory panel and its fixes, a bad
field answered in words, Start pressed twice makes one run, clone back into the form."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from browser import browser, open_page, open_tab, pick, serve, shot
from conftest import ROOT, run_cli

pytestmark = pytest.mark.browser


WORKSPACE = {}


@pytest.fixture(scope="module")
def page(tmp_path_factory, embedded_model):
    workspace = WORKSPACE["path"] = tmp_path_factory.mktemp("ui-train") / "workspace"
    tmp = WORKSPACE["tmp"] = tmp_path_factory.mktemp("ui-train-tmp")
    with serve(workspace, env={"TMPDIR": str(tmp)}) as (url, _):
        with browser() as b:
            page = open_page(b, url)
            page.wait_for_selector("#mem-summary >> text=GiB")
            yield page


def set_field(page, elem_id, value):
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Enter")


def test_memory_panel_explains_and_fixes_a_run_that_does_not_fit(page):
    assert "Trainable parameters" in page.locator("#train-params").inner_text()
    pick(page, "preset", "qlora-8b-16gb")
    pick(page, "mem-gpu", "12 GB")
    page.wait_for_function("() => document.querySelector('#mem-summary').innerText.includes('does not fit')")
    assert page.locator("#mem-chart .js-plotly-plot").count() == 1
    page.locator("#mem-apply-0").click()
    page.wait_for_function("() => /: (fits|tight)/.test(document.querySelector('#mem-summary').innerText)")
    shot(page, "train-memory-fixed")


def test_a_bad_field_is_refused_with_its_name(page):
    """Each step waits for the form to show the last one, so the preset cannot land after the rank."""
    pick(page, "preset", "demo")
    page.wait_for_function("() => document.querySelector('#field-name input, #field-name textarea').value == 'demo'")
    set_field(page, "field-lora-rank", 0)
    page.wait_for_selector("#mem-summary >> text=too small")
    page.locator("#start").click()
    message = page.locator("#train-message")
    message.get_by_text("Rank", exact=True).wait_for()
    assert "lora.rank" in message.inner_text() and "too small" in message.inner_text()
    set_field(page, "field-lora-rank", 8)


def test_a_yaml_with_a_typo_is_refused_by_its_own_name_and_line(page, tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: m\nlora:\n  rnak: 8\n")
    page.locator("#preview-box").get_by_text("Config and command").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#load-yaml").click()
    chooser.value.set_files(str(typo))
    page.locator("#train-message").get_by_text("unknown key").wait_for()
    text = page.locator("#train-message").inner_text()
    assert "typo.yaml:3" in text and "/typo.yaml" not in text and "did you mean 'lora.rank'" in text
    page.locator("#preview-box").get_by_text("Config and command").click()


def test_download_gives_the_config_of_the_form_from_one_file_per_tab(page):
    page.locator("#preview-box").get_by_text("Config and command").click()
    for rank in (12, 24):
        set_field(page, "field-lora-rank", rank)
        page.wait_for_function(f"() => document.querySelector('#preview').innerText.includes('rank: {rank}')")
    with page.expect_download() as download:
        page.locator("#download-yaml").click()
    assert "rank: 24" in Path(download.value.path()).read_text()
    assert len(list(WORKSPACE["tmp"].glob("workbench-configs-*/*/config.yaml"))) == 1
    set_field(page, "field-lora-rank", 8)
    page.locator("#preview-box").get_by_text("Config and command").click()


def test_start_pressed_twice_queues_one_run_that_completes(page, tiny_model):
    pick(page, "preset", "demo")
    page.locator("#field-model input").fill(str(tiny_model))
    page.locator("#field-model input").press("Enter")
    open_training = page.locator("#group-training")
    open_training.get_by_text("Training").first.click()
    set_field(page, "field-train-max_steps", 3)
    set_field(page, "field-name", "twice")
    page.wait_for_timeout(1000)
    page.locator("#start").dblclick()
    page.wait_for_timeout(700)
    page.locator("#start").click()                  # a third, impatient click while the first is answered
    page.wait_for_selector("#train-message >> text=queued")
    open_tab(page, "Runs")
    page.wait_for_selector("#run-progress[data-state='completed']", timeout=180_000)
    assert page.locator("#runs-table tbody tr").count() == 1
    page.locator("#run-clone").click()
    page.wait_for_selector("#train-message >> text=The form now holds")
    page.wait_for_timeout(1500)
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    assert page.locator("#field-name input, #field-name textarea").first.input_value() == "twice"


def test_a_run_queued_elsewhere_clones_into_the_form_without_errors(page, tiny_model, tmp_path):
    """Its datasets are files this page never listed: one in another folder, one named relative to the app's."""
    data = tmp_path / "mine.jsonl"
    data.write_text((ROOT / "presets" / "data" / "identity.jsonl").read_text())
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {tiny_model}\nname: elsewhere\ndatasets: [{data}, presets/data/identity.jsonl]\n"
                      f"train:\n  max_steps: 1\n")
    subprocess.run([sys.executable, "-m", "core", "--workspace", str(WORKSPACE["path"]), "runs", "submit",
                    "--config", str(config)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                   check=True, capture_output=True)
    open_tab(page, "Runs")
    pick(page, "run-select", "elsewhere")
    page.wait_for_timeout(2500)                     # ticks of the Runs view come and go; the pick stays
    assert "elsewhere" in page.locator("#run-select input").first.input_value()
    page.locator("#run-clone").click()
    page.wait_for_selector("#train-message >> text=The form now holds")
    page.wait_for_timeout(1500)
    assert page.locator(".toast-body").count() == 0, page.locator(".toast-body").all_inner_texts()
    assert "mine.jsonl" in page.locator("#datasets").inner_text()


def test_what_the_form_cannot_train_is_refused_in_words(page, tiny_model, tmp_path):
    """The form as the last test left it: its Training group open."""
    open_tab(page, "Train")
    set_field(page, "field-train-batch_size", 2.5)
    page.locator("#start").click()
    page.wait_for_selector("#train-message >> text=whole number")
    assert "train.batch_size" in page.locator("#train-message").inner_text()
    set_field(page, "field-train-batch_size", 4)
    page.locator("#field-model input").fill(str(tiny_model / "config.json"))
    page.locator("#field-model input").press("Enter")
    page.wait_for_function("() => document.querySelector('#mem-summary').innerText.includes('GiB')")
    page.locator("#start").click()
    page.wait_for_selector("#train-message >> text=configuration file")
    partial = tmp_path / "config.json"
    partial.write_text('{"model_type": "llama"}')
    page.locator("#field-model input").fill(str(partial))
    page.locator("#field-model input").press("Enter")
    page.wait_for_selector("#mem-summary >> text=the estimate may be far off")
    set_field(page, "mem-gpus", 0)
    page.wait_for_function("() => document.querySelector('#mem-summary').innerText.includes('at least 1')")
    assert page.locator(".toast-body").count() == 0              # no generic error toast from gradio
    set_field(page, "mem-gpus", 1)


def test_deleting_an_adapter_twice_deletes_nothing_else(page):
    """After a delete nothing is picked and the box is cleared, so a second click cannot reach the
    next adapter in the list."""
    adapter = next((WORKSPACE["path"] / "runs").glob("twice-*/adapter"))
    open_tab(page, "Library")
    page.locator("#lib-import").get_by_text("Import an adapter").click()
    page.locator("#lib-import-folder textarea, #lib-import-folder input").first.fill(str(adapter))
    page.locator("#lib-import-name textarea, #lib-import-name input").first.fill("other")
    page.locator("#lib-import-go").click()
    page.wait_for_selector("#lib-import-message >> text=Imported")
    pick(page, "lib-pick", "twice")
    page.locator("#lib-manage").get_by_text("Rename or delete").click()
    page.locator("#lib-confirm input").check()
    page.locator("#lib-delete").click()
    page.wait_for_selector("#lib-message >> text=Deleted")
    assert "twice" in page.locator("#lib-message").inner_text()
    assert page.locator("#lib-pick input").first.input_value() == ""
    assert not page.locator("#lib-confirm input").is_checked()
    page.locator("#lib-delete").click()
    page.wait_for_selector("#lib-message >> text=Pick an adapter first")
    assert "other" in page.locator("#lib-table").inner_text()


def test_merge_exports_from_a_child_process_and_a_refusal_reads_as_the_cli_says_it(page):
    """The Library tab is open on 'other' after the test above."""
    pick(page, "lib-pick", "other")
    page.locator("#lib-merge").get_by_text("Merge into the base model and export").click()
    page.locator("#lib-merge-name textarea, #lib-merge-name input").first.fill("merged-ui")
    page.locator("#lib-merge-go").click()
    page.wait_for_selector("#lib-merge-message >> text=Exported a full model", timeout=120_000)
    assert (WORKSPACE["path"] / "exports" / "merged-ui" / "config.json").is_file()
    page.locator("#lib-merge-go").click()
    page.wait_for_selector("#lib-merge-message >> text=already exists", timeout=120_000)
    assert "Traceback" not in page.locator("#lib-merge-message").inner_text()


def test_a_finished_run_opens_in_chat_and_a_merged_export_is_a_base(page, tiny_model):
    """'twice' lost its adapter to the delete above; 'elsewhere' still has its own. The merged export
    is offered to chat with and to train. After a reload the chat starts on the newest adapter, on
    the base it was trained on."""
    open_tab(page, "Runs")
    pick(page, "run-select", "twice")
    page.wait_for_selector("#run-progress >> text=twice")
    page.locator("#run-chat").click()
    page.wait_for_selector("#runs-message >> text=it was deleted from the Library")
    pick(page, "run-select", "elsewhere")
    page.wait_for_selector("#run-progress[data-state='completed'] >> text=elsewhere", timeout=180_000)
    page.locator("#run-chat").click()
    page.wait_for_selector("#chat-prompt textarea")
    assert page.locator("#chat-adapter-a input").first.input_value().startswith("elsewhere")
    assert page.locator("#chat-base input").first.input_value() == str(tiny_model)
    pick(page, "chat-base", "merged-ui")
    page.wait_for_function("() => document.querySelector('#chat-adapter-a input').value.startsWith('(no adapter')")
    page.locator("#chat-prompt textarea").fill("Hello")
    page.locator("#chat-send").click()
    page.wait_for_function("() => document.querySelector('#chat-stats-a').innerText.includes('tokens/s')",
                           timeout=120_000)
    assert "Error" not in page.locator("#chat-status").inner_text()
    open_tab(page, "Train")                                 # the export is a model to train further, too
    pick(page, "field-model", "merged-ui")
    page.locator("#preview-box").get_by_text("Config and command").click()
    page.wait_for_selector(f"#preview >> text=model: {WORKSPACE['path'] / 'exports' / 'merged-ui'}")
    page.locator("#preview-box").get_by_text("Config and command").click()
    page.reload()
    page.wait_for_selector("#mem-summary >> text=GiB")
    open_tab(page, "Chat")
    page.wait_for_function("() => !document.querySelector('#chat-adapter-a input').value.startsWith('(no adapter')")
    assert page.locator("#chat-base input").first.input_value() == str(tiny_model)


def test_a_merged_model_is_listed_opened_in_chat_and_deleted_in_the_library(page):
    export = WORKSPACE["path"] / "exports" / "merged-ui"
    open_tab(page, "Library")
    page.locator("#lib-exports").get_by_text("Merged models").click()
    table = page.locator("#lib-exports-table")
    page.wait_for_function("() => document.querySelector('#lib-exports-table').textContent.includes('merged-ui')")
    assert table.is_visible() and "other" in table.text_content()      # the adapter it was merged from
    pick(page, "lib-export-pick", "merged-ui")
    page.locator("#lib-export-chat").click()
    page.wait_for_function("() => document.querySelector('#chat-base input').value == 'merged-ui · merged · exports'")
    expect(page.locator("#chat-adapter-a input").first).to_have_value(re.compile(r"^\(no adapter"))
    open_tab(page, "Library")
    message = page.locator("#lib-export-message")          # in the section, where the button is
    page.locator("#lib-export-delete").click()
    message.get_by_text("Tick the confirmation box first").wait_for()
    assert export.is_dir()
    page.locator("#lib-export-confirm input").check()
    page.locator("#lib-export-delete").click()
    message.get_by_text("Deleted exports/merged-ui").wait_for()
    assert not export.exists()
    expect(table).not_to_contain_text("merged-ui")        # the message, table and boxes redraw apart
    expect(page.locator("#lib-export-confirm input")).not_to_be_checked()
    expect(page.locator("#lib-export-pick input").first).to_have_value("")
    page.locator("#lib-export-chat").click()
    message.get_by_text("Pick a merged model first").wait_for()


def test_a_merged_model_deleted_elsewhere_is_named_gone_not_a_page_error(page):
    """The tab redraws its list on opening; the pick of a model deleted meanwhile stays, and says so."""
    res = run_cli("--workspace", WORKSPACE["path"], "merge", "--adapter", "other", "--out", "merged-cli")
    assert res.returncode == 0, res.stderr
    page.locator("#lib-refresh").click()
    page.wait_for_function("() => document.querySelector('#lib-exports-table').textContent.includes('merged-cli')")
    pick(page, "lib-export-pick", "merged-cli")
    res = run_cli("--workspace", WORKSPACE["path"], "library", "delete-export", "merged-cli", "--yes")
    assert res.returncode == 0, res.stderr
    open_tab(page, "Runs")
    open_tab(page, "Library")
    page.wait_for_function("() => !document.querySelector('#lib-exports-table').textContent.includes('merged-cli')")
    page.locator("#lib-export-chat").click()
    page.locator("#lib-export-message").get_by_text("no merged model 'merged-cli'").wait_for()
    assert "Merged model" in page.locator("#lib-export-message").inner_text()
    assert page.locator(".toast-body").count() == 0


def test_runs_leave_the_list_and_a_folder_deleted_by_hand_is_flagged(page):
    """'elsewhere', queued from the command line two tests ago, has run by now."""
    import shutil
    runs = WORKSPACE["path"] / "runs"
    open_tab(page, "Runs")
    box = page.locator("#run-select input").first
    box.click()
    box.fill("elsew")
    page.wait_for_timeout(2500)                         # the list refreshes every second
    assert box.input_value() == "elsew"
    page.get_by_role("option", name="elsewhere", exact=False).first.click()
    page.wait_for_selector("#run-progress[data-state='completed'] >> text=elsewhere", timeout=180_000)
    shutil.rmtree(next(runs.glob("elsewhere-*")))
    page.wait_for_function("() => document.querySelector('#runs-table').textContent.includes('folder deleted')")
    page.wait_for_selector("#run-progress-box >> text=was deleted")
    page.locator("#run-rerun").click()
    page.wait_for_selector("#runs-message >> text=remove the run from the list")
    page.locator("#run-remove").click()
    page.wait_for_selector("#runs-message >> text=Removed elsewhere")
    page.wait_for_selector("#run-progress-box >> text=has left the list")    # the pick emptied: then pick
    pick(page, "run-select", "twice")
    page.wait_for_selector("#run-progress >> text=twice")
    page.wait_for_timeout(1500)              # the pick clears the box; let that land before ticking it
    page.locator("#run-delete-files input").check()
    page.locator("#run-remove").click()
    page.wait_for_selector("#runs-message >> text=and its files")
    assert not list(runs.glob("twice-*")) and not page.locator("#run-delete-files input").is_checked()
    page.wait_for_function("() => !document.querySelector('#runs-table').textContent.includes('twice')")


def test_stop_and_resume_from_the_runs_tab(page, tiny_model):
    """A run long enough to be stopped mid-way; its checkpoint answers in the Chat tab; Resume carries
    it on to its last step."""
    open_tab(page, "Train")
    pick(page, "preset", "demo")
    page.wait_for_function("() => document.querySelector('#field-name input, #field-name textarea').value == 'demo'")
    page.locator("#field-model input").fill(str(tiny_model))
    page.locator("#field-model input").press("Enter")
    if not page.locator("#field-train-max_steps input").first.is_visible():
        page.locator("#group-training").get_by_text("Training").first.click()
    set_field(page, "field-train-max_steps", 120)
    set_field(page, "field-name", "stopper")
    page.wait_for_timeout(1000)
    page.locator("#start").click()
    page.wait_for_selector("#train-message >> text=queued")
    open_tab(page, "Runs")
    pick(page, "run-select", "stopper")
    page.wait_for_selector("#run-progress[data-state='running'] >> text=stopper", timeout=120_000)
    page.locator("#run-stop").click()
    page.wait_for_selector("#runs-message >> text=to stop")
    page.wait_for_selector("#run-progress[data-state='stopped'] >> text=stopper", timeout=120_000)
    stopped_at = int(page.locator("#run-progress").get_attribute("data-step"))
    assert 0 < stopped_at < 120
    page.locator("#run-chat").click()                   # a stopped run chats with its newest checkpoint
    page.wait_for_selector("#chat-prompt textarea")
    page.wait_for_function(f"() => document.querySelector('#chat-status').textContent"
                           f".includes('newest checkpoint, of step {stopped_at}')")      # said where one looks
    assert page.locator("#chat-adapter-a input").first.input_value() == f"stopper · step {stopped_at} · checkpoint"
    assert page.locator("#chat-base input").first.input_value() == str(tiny_model)
    page.locator("#chat-prompt textarea").fill("Hello")
    page.locator("#chat-send").click()
    page.wait_for_function("() => document.querySelector('#chat-stats-a').innerText.includes('tokens/s')",
                           timeout=120_000)
    assert "Error" not in page.locator("#chat-status").inner_text()
    open_tab(page, "Runs")
    page.locator("#run-resume").click()
    page.wait_for_selector("#run-progress[data-state='completed'] >> text=stopper", timeout=300_000)
    assert page.locator("#run-progress").get_attribute("data-step") == "120"
    open_tab(page, "Chat")               # the resumed run's checkpoint is no longer listed, but stays picked
    before = page.locator("#chat-a").inner_text()
    page.locator("#chat-prompt textarea").fill("Again")
    page.locator("#chat-send").click()
    page.wait_for_function("before => { const s = document.querySelector('#chat-a').innerText;"
                           " return s !== before && s.includes('Again'); }", arg=before, timeout=60_000)
    page.wait_for_function("() => !document.querySelector('#chat-a .generating')", timeout=120_000)
    assert "Error" not in page.locator("#chat-status").inner_text() and page.locator(".toast-body").count() == 0
    assert page.locator("#chat-adapter-a input").first.input_value() == f"stopper · step {stopped_at} · checkpoint"
