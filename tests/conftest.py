import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Tests never need the network; converted models are cached across test sessions.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WORKBENCH_MODELS", str(ROOT / ".cache" / "models"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace; workers a failed test leaves training in it are ended with it."""
    from core.procs import kill_all

    home = tmp_path / "workspace"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    yield home
    kill_all(str(home))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tiny import build_model

    return build_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def embedded_model():
    from core.models import embedded_model_dir

    return embedded_model_dir()


def run_cli(*args, env=None, timeout=900, cwd=ROOT) -> subprocess.CompletedProcess:
    """Run `python -m core ...` as a user would, in its own process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """A browser test that fails leaves a screenshot of its page in test-artifacts/FAILED-<test>.png."""
    rep = yield
    page = getattr(item, "funcargs", {}).get("page")
    if rep.when == "call" and rep.failed and hasattr(page, "screenshot"):
        from browser import shot
        try:
            rep.sections.append(("screenshot", str(shot(page, f"FAILED-{item.name}"))))
        except Exception as e:          # a page that crashed has no screenshot; the failure stands alone
            rep.sections.append(("screenshot", f"none: {e}"))
    return rep


def until(pred, timeout=120, sup=None, every=0.2):
    """Wait for pred() (ticking a Supervisor when given one); fail the test after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        if sup is not None:
            sup.tick()
        if pred():
            return True
        time.sleep(every)
    raise AssertionError("condition not reached in time")
