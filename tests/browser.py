"""Serve the real app on a free port and drive it with headless Chromium (Debian's package)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from core.procs import kill_all

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(workspace: Path, *extra: str, env: dict | None = None):
    """`python app.py` as `make run` starts it, on a free port; yields the URL and the process."""
    port = free_port()
    log = open(workspace.parent / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--workspace", str(workspace), *extra],
                            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log.flush()
                    raise RuntimeError("the app did not start:\n" + Path(log.name).read_text()[-3000:])
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        kill_all(str(workspace))        # workers the app queued outlive it by design
        log.close()


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError("Debian's chromium is missing: run `make test` (it installs it) or apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(b, url: str, timeout_ms: int = 60_000):
    """A desktop-sized tab on the app, waiting at most `timeout_ms` for each element by default."""
    page = b.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    return page


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a gradio Dropdown by its visible text."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=False).first.click()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
