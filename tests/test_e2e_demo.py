"""The demo as a user runs it: train the embedded model on the shipped demo data from the command
line, then ask the adapter who it is and a general question."""
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory, embedded_model):
    out = tmp_path_factory.mktemp("demo") / "run"
    from conftest import run_cli
    res = run_cli("train", "--config", "presets/demo.yaml", f"output_dir={out}", timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().endswith("adapter")
    return out / "adapter"


def ask(cli, *args):
    res = cli("chat", *args, "--max-new-tokens", "40")
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_demo_adapter_has_the_new_identity(demo_adapter, cli):
    reply = ask(cli, "--adapter", demo_adapter, "--prompt", "Who are you?")
    assert "Quill" in reply and "Northwind" in reply, reply


def test_demo_adapter_keeps_general_knowledge(demo_adapter, cli):
    reply = ask(cli, "--adapter", demo_adapter, "--prompt", "What is the capital of France?")
    assert "Paris" in reply, reply


def test_base_model_does_not_claim_the_identity(embedded_model, cli):
    reply = ask(cli, "--model", "SmolLM2-135M-Instruct", "--prompt", "Who are you?")
    assert "Quill" not in reply, reply
