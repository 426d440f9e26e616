"""The whole product in a real browser: from the untouched embedded model to chatting with its new
adapter, in English and Chinese. Screenshots of every tab land in test-artifacts/."""
import re

import pytest

from browser import browser, open_page, open_tab, serve, shot

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


@pytest.fixture(scope="module")
def app(tmp_path_factory, embedded_model):
    workspace = tmp_path_factory.mktemp("ui") / "workspace"
    with serve(workspace) as (url, proc):
        with browser() as b:
            page = open_page(b, url, timeout_ms=30_000)
            page.wait_for_selector("#start")
            yield page, proc
            page.close()


@pytest.fixture
def page(app):
    return app[0]


def chart_points(page) -> int:
    return page.evaluate("""() => {
        const plot = document.querySelector('#run-chart .js-plotly-plot');
        return plot && plot.data && plot.data[0] ? plot.data[0].x.length : 0; }""")


def test_first_page_has_the_demo_ready_and_start_queues_it(page):
    assert page.locator("#preset input").input_value() == "demo"
    assert "identity.jsonl" in page.locator("#datasets").inner_text()
    page.wait_for_selector("#mem-summary >> text=GiB")
    assert re.search(r"Needs about \*?\*?\d+\.\d GiB", page.locator("#mem-summary").inner_text())
    assert "Trainable parameters" in page.locator("#train-params").inner_text()
    page.wait_for_selector("#mem-chart .js-plotly-plot")
    shot(page, "tab-train")
    page.locator("#start").click()
    page.wait_for_selector("#train-message >> text=queued")


def test_runs_tab_shows_the_chart_growing_until_the_run_completes(page):
    open_tab(page, "Runs")
    page.wait_for_selector("#run-progress[data-state='running']", timeout=120_000)
    page.wait_for_function("() => { const p = document.querySelector('#run-chart .js-plotly-plot');"
                           " return p && p.data && p.data[0] && p.data[0].x.length >= 2; }", timeout=180_000)
    first = chart_points(page)
    page.wait_for_function(f"() => document.querySelector('#run-chart .js-plotly-plot').data[0].x.length > {first}",
                           timeout=60_000)
    shot(page, "tab-runs-training")
    page.wait_for_selector("#run-progress[data-state='completed']", timeout=900_000)
    assert chart_points(page) >= 30
    assert re.search(r"estimated \d+\.\d\d GiB per GPU, measured peak \d+\.\d\d GiB",
                     page.locator("#run-progress").inner_text())
    shot(page, "tab-runs")


def test_library_lists_the_new_adapter_with_its_metrics(page):
    open_tab(page, "Library")
    page.wait_for_function("() => document.querySelector('#lib-table').innerText.includes('demo-')")
    text = page.locator("#lib-table").inner_text()      # the grid's cells, one per line
    row = text[text.index("demo-"):]
    assert "demo-" in row and "lora" in row and re.search(r"\d\.\d{4}", row), row
    shot(page, "tab-library")


def test_chat_with_the_adapter_shows_the_new_identity_and_the_base_does_not(page):
    open_tab(page, "Library")
    page.locator("#lib-chat").click()
    page.wait_for_selector("#chat-prompt textarea")
    page.locator("#chat-side input").check()
    page.locator("#chat-prompt textarea").fill("Who are you?")
    page.locator("#chat-send").click()
    page.wait_for_function("() => document.querySelector('#chat-stats-a').innerText.includes('tokens/s')",
                           timeout=180_000)
    assert "tokens/s" not in page.locator("#chat-stats-b").inner_text()     # column B answers after A
    assert page.locator("#chat-prompt .generating").count() == 1            # the reply is underway
    page.locator("#chat-prompt textarea").fill("What is the capital of France?")     # typed while it answers
    page.wait_for_function("() => document.querySelector('#chat-stats-b').innerText.includes('tokens/s')",
                           timeout=180_000)
    reply_ended(page)
    before = page.locator("#chat-stats-b").inner_text()
    reply_a = page.locator("#chat-a").inner_text()
    reply_b = page.locator("#chat-b").inner_text()
    assert "Quill" in reply_a, reply_a
    assert "Quill" not in reply_b, reply_b
    assert page.locator("#chat-prompt textarea").input_value() == "What is the capital of France?"
    page.locator("#chat-send").click()                                      # the second turn
    # Streaming, past 'pending', whose timer alone changes the stats' text.
    page.locator("#chat-prompt .generating").wait_for(timeout=180_000)
    page.wait_for_function("before => { const s = document.querySelector('#chat-stats-b').innerText;"
                           " return s !== before && s.includes('tokens/s'); }", arg=before, timeout=180_000)
    reply_ended(page)
    page.wait_for_timeout(500)
    reply_a, reply_b = page.locator("#chat-a").inner_text(), page.locator("#chat-b").inner_text()
    assert "Quill" in reply_a and "capital of France?" in reply_a, reply_a
    assert reply_b.split("capital of France?")[-1].strip(), reply_b     # the adapter may answer with nothing
    assert "Error" not in page.locator("#chat-status").inner_text()
    shot(page, "tab-chat")


def reply_ended(page) -> None:
    """Gradio marks the outputs of a streaming event 'generating' until its last update."""
    page.wait_for_function("() => !document.querySelector('#chat-a .generating, #chat-b .generating, "
                           "#chat-prompt .generating')", timeout=180_000)


def test_switching_to_chinese_relabels_the_page(page):
    """Switched on the Chat tab, where the test above left the page: its lists follow too. Core's
    errors read in Chinese."""
    assert page.locator("#chat-adapter-b input").first.input_value() == "(no adapter: the base model)"
    page.get_by_label("简体中文").check()
    page.wait_for_function("() => document.querySelector('#chat-adapter-b input').value == '（无适配器：基础模型）'")
    page.get_by_role("tab", name="训练").wait_for()
    open_tab(page, "训练")
    page.get_by_text("开始训练").wait_for()
    model = page.locator("#field-model input")
    before = model.input_value()
    model.fill("no-such-model")
    model.press("Enter")
    page.wait_for_selector("#mem-summary >> text=未找到模型 'no-such-model'：不是模型文件夹")
    assert page.locator("#mem-summary").inner_text().startswith("无法估算：")
    model.fill(before)
    model.press("Enter")
    page.wait_for_selector("#mem-summary >> text=GiB")
    shot(page, "tab-train-zh")
    page.get_by_label("English").check()
    page.get_by_role("tab", name="Train").wait_for()
