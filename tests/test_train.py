"""The training worker on a tiny random model: real Trainer, real peft, real subprocesses."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, until
from core.config import RunConfig
from core.runfiles import RunDir
from core.train import run

DATA = ROOT / "presets" / "data"


def config(tiny_model, out, **sections):
    base = {"model": str(tiny_model), "datasets": [str(DATA / "identity.jsonl"), str(DATA / "general.json")],
            "output_dir": str(out), "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3}}
    for key, value in sections.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return RunConfig.from_dict(base)


def test_lora_run_writes_metrics_status_and_a_peft_adapter(tiny_model, tmp_path, workspace):
    run_dir = run(config(tiny_model, tmp_path / "r", data={"eval_split": 0.1}, train={"eval_steps": 2}))
    status = run_dir.read_status()
    assert status["state"] == "completed" and status["step"] == 4 == status["total_steps"]
    assert status["estimate_gib"] > 0 and status["peak_mem_gib"] > 0
    rows = run_dir.read_metrics()
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("epoch", "learning_rate", "grad_norm", "tokens_per_s", "peak_mem_gib"):
        assert key in steps[0]
    assert any("eval_loss" in r for r in rows)
    adapter = run_dir.adapter
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    meta = json.loads((adapter / "workbench.json").read_text())
    assert meta["base_model"] == str(tiny_model) and meta["metrics"]["steps"] == 4
    assert meta["metrics"]["eval_loss"] is not None
    assert meta["memory"]["estimate"]["total_gib"] > 0 and "weights" in meta["memory"]["estimate"]["parts"]
    assert (run_dir.config).is_file() and not list(adapter.parent.glob(".adapter.tmp"))


def test_adapter_loads_in_plain_peft_with_the_engines_greedy_output(tiny_model, tmp_path, workspace):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.chat import one_shot

    run_dir = run(config(tiny_model, tmp_path / "r", train={"max_steps": 6, "learning_rate": 5e-3}))
    reply = one_shot(run_dir.adapter, "Who are you?", max_new_tokens=12)

    tok = AutoTokenizer.from_pretrained(run_dir.adapter)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, run_dir.adapter).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    plain = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert reply == plain
    base_reply = one_shot(None, "Who are you?", base=str(tiny_model), max_new_tokens=12)
    assert base_reply != reply, "the adapter should change the tiny model's greedy output"


@pytest.mark.parametrize("sections", [
    {"lora": {"rslora": True, "target_modules": "q_proj,v_proj"}},
    {"lora": {"dora": True}},
    {"train": {"gradient_checkpointing": True, "optimizer": "adamw8bit", "scheduler": "linear"}},
    {"data": {"packing": True}},
    {"data": {"train_on": "all"}, "train": {"dtype": "bf16", "optimizer": "paged_adamw8bit"}},
], ids=["rslora-targets", "dora", "ckpt-adamw8bit", "packing", "train-on-all-bf16-paged"])
def test_training_options_run(tiny_model, tmp_path, workspace, sections):
    run_dir = run(config(tiny_model, tmp_path / "r", **sections))
    assert run_dir.read_status()["state"] == "completed"
    losses = [r["loss"] for r in run_dir.read_metrics() if "loss" in r]
    assert len(losses) == 4 and all(l == l for l in losses)
    adapter = json.loads((run_dir.adapter / "adapter_config.json").read_text())
    if "target_modules" in sections.get("lora", {}):
        assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"] and adapter["use_rslora"]
    if sections.get("lora", {}).get("dora"):
        from safetensors import safe_open
        with safe_open(run_dir.adapter / "adapter_model.safetensors", "pt") as weights:
            assert adapter["use_dora"] and any("magnitude" in k for k in weights.keys())
    if sections.get("train", {}).get("dtype") == "bf16":
        assert "bf16 autocast" in run_dir.read_status()["precision"]


def test_packing_takes_fewer_steps_per_epoch(tiny_model, tmp_path, workspace):
    plain = run(config(tiny_model, tmp_path / "a", train={"max_steps": 0, "epochs": 1}))
    packed = run(config(tiny_model, tmp_path / "b", train={"max_steps": 0, "epochs": 1},
                        data={"packing": True, "max_seq_len": 512}))
    assert packed.read_status()["total_steps"] < plain.read_status()["total_steps"]


@pytest.mark.parametrize("upcast", [True, False])
def test_qlora_upcasts_the_unquantized_weights_only_when_asked(tiny_model, tmp_path, workspace, upcast):
    from core import models
    from core.train import build_model, choose_precision

    cfg = config(tiny_model, tmp_path / "q", method="qlora", quant={"upcast_unquantized": upcast},
                 train={"dtype": "auto", "max_steps": 2})
    model = build_model(cfg, models.ResolvedModel(str(tiny_model), "local", str(tiny_model)),
                        choose_precision(cfg, "cpu", cpu_bf16=True))      # bf16 base weights, as on a GPU
    unquantized = {n: p.dtype for n, p in model.named_parameters() if "embed_tokens" in n or "norm" in n}
    assert unquantized and set(unquantized.values()) == {torch.float32 if upcast else torch.bfloat16}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == \
        {n for n, _ in model.named_parameters() if "lora_" in n}
    run_dir = run(cfg)
    status = run_dir.read_status()
    assert (run_dir.adapter / "adapter_model.safetensors").is_file()
    rest = "float32" if upcast else str(choose_precision(cfg).weights).replace("torch.", "")   # this CPU's choice
    assert status["state"] == "completed" and status["precision"].startswith(f"4-bit nf4 base, {rest} rest")


def test_full_and_freeze_train_the_right_parameters(tiny_model, tmp_path, workspace):
    full = run(config(tiny_model, tmp_path / "full", method="full", train={"max_steps": 2, "learning_rate": 1e-4}))
    freeze = run(config(tiny_model, tmp_path / "frz", method="freeze", freeze={"trainable_layers": 1},
                        train={"max_steps": 2, "learning_rate": 1e-4}))
    f, z = full.read_status(), freeze.read_status()
    assert f["trainable_params"] == f["total_params"]
    assert 0 < z["trainable_params"] < f["trainable_params"]
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    tuned = AutoModelForCausalLM.from_pretrained(freeze.model)
    same = lambda name: torch.equal(base.state_dict()[name], tuned.state_dict()[name])
    assert same("model.layers.0.mlp.up_proj.weight") and not same("model.layers.1.mlp.up_proj.weight")


def test_sigterm_stops_with_a_checkpoint_and_resume_keeps_the_step_count(tiny_model, tmp_path, workspace):
    out = tmp_path / "run"
    cfg = config(tiny_model, out, train={"max_steps": 400, "batch_size": 2})
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rd = RunDir(out)
    deadline = time.time() + 120
    while time.time() < deadline and rd.read_status().get("step", 0) < 5:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    status = rd.read_status()
    assert status["state"] == "stopped"
    ckpt = rd.newest_checkpoint()
    stopped_at = int(ckpt.name.split("-")[1])
    assert stopped_at == status["step"] and 5 <= stopped_at < 400

    done = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(rd.config), "--resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert rd.read_status()["state"] == "completed" and rd.read_status()["step"] == 400
    steps = [r["step"] for r in rd.read_metrics() if "loss" in r]
    assert steps == list(range(1, 401))


def test_a_run_killed_past_its_last_checkpoint_resumes_without_repeating_steps_in_its_metrics(tiny_model, tmp_path,
                                                                                               workspace):
    import shutil

    out = tmp_path / "run"
    rd = run(config(tiny_model, out, train={"max_steps": 4, "save_steps": 2}))
    shutil.rmtree(rd.adapter)                                # as if killed after step 4, before saving it
    shutil.rmtree(rd.checkpoints / "checkpoint-4")
    rd.write_status(state="failed")
    run(RunConfig.load(rd.config), resume=True)
    assert [r["step"] for r in rd.read_metrics() if "loss" in r] == [1, 2, 3, 4]


def test_forgetting_the_steps_past_a_checkpoint_keeps_every_field_of_the_others(tmp_path):
    rd = RunDir(tmp_path / "r")
    rd.root.mkdir()
    rd.metrics.write_text('{"step": 1, "loss": 2.0, "mem_device": "GPU 0: H100"}\n{"step": 2, "loss": 1.0}\n'
                          '{"step": "by hand"}\n')
    rd.forget_metrics_after(1)
    assert rd.metrics.read_text() == '{"step": 1, "loss": 2.0, "mem_device": "GPU 0: H100"}\n{"step": "by hand"}\n'
    assert rd.read_metrics() == [{"step": 1, "loss": 2.0, "mem_device": "GPU 0: H100"}]


def test_a_second_trainer_of_a_running_run_is_refused_and_the_run_goes_on(tiny_model, tmp_path, workspace):
    from core.errors import ConfigError

    out = tmp_path / "run"
    cfg = config(tiny_model, out, train={"max_steps": 400, "batch_size": 2, "save_steps": 2})
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(path)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rd = RunDir(out)
        until(lambda: rd.newest_checkpoint() is not None, timeout=120)
        with pytest.raises(ConfigError, match=f"being trained by another process \\(pid {proc.pid}\\)"):
            run(RunConfig.load(rd.config), resume=True)
        assert rd.read_status()["state"] == "running" and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("kind", ["file", "other-files"])
def test_an_output_dir_that_is_not_a_run_folder_is_refused_and_left_as_it_was(tiny_model, tmp_path, workspace, kind):
    from core.errors import ConfigError

    out = tmp_path / "mine"
    if kind == "file":
        out.write_text("my notes")
    else:
        out.mkdir()
        (out / "config.yaml").write_text("my own config")
    with pytest.raises(ConfigError, match="is a file, not a folder" if kind == "file" else "already holds other"):
        run(config(tiny_model, out))
    assert (out.read_text() if kind == "file" else (out / "config.yaml").read_text()).startswith("my")
    assert kind == "file" or sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_bad_config_exits_2_with_the_field_and_line_and_writes_nothing(tmp_path, cli, workspace):
    path = tmp_path / "bad.yaml"
    out = tmp_path / "never"
    path.write_text(f"model: SmolLM2-135M-Instruct\noutput_dir: {out}\nlora:\n  rank: 0\n")
    res = cli("train", "--config", path)
    assert res.returncode == 2
    assert f"{path}:4" in res.stderr and "lora.rank" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


HUB_DOWN = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}     # nothing listens on port 9


@pytest.mark.parametrize("model,words,env", [
    ("/no/such/folder", "not found", {}),
    ("someone/surely-missing-model-xyz", "downloads are switched off (HF_HUB_OFFLINE)", {}),
    ("someone/surely-missing-model-xyz", "Hub (http://127.0.0.1:9) cannot be reached", HUB_DOWN),
])
def test_missing_model_is_a_clear_error(tmp_path, cli, model, words, env, workspace):
    """A hub model that cannot be fetched is told at once, not after the download client's retries."""
    path = tmp_path / "c.yaml"
    out = tmp_path / "never"
    path.write_text(f"model: {model}\noutput_dir: {out}\ndatasets: [{DATA / 'general.json'}]\n")
    res = cli("train", "--config", path, env={**env, "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_a_hub_found_down_is_asked_again_and_odd_ids_are_refused_in_words():
    import socket

    from core import models
    from core.errors import ModelError
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        assert not models.hub_reachable(endpoint)             # bound, not listening: refused
        s.listen()
        assert models.hub_reachable(endpoint)                 # back up: the failure was not kept
    with pytest.raises(ModelError, match="not a valid hub model id") as refused:
        models.resolve("someone/two--dashes")
    assert refused.value.field == "model"


def test_a_load_error_is_called_a_missing_model_only_when_the_hub_says_so():
    from huggingface_hub.errors import RepositoryNotFoundError

    from core.models import explain_load_error

    import httpx

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/a/b"))
    missing = RepositoryNotFoundError("Repository Not Found for url", response=response)
    assert "does not exist on the Hugging Face Hub" in str(explain_load_error("a/b", missing))
    other = RuntimeError("weights are 404 MiB but the disk holds 12 MiB")
    assert str(explain_load_error("a/b", other)).endswith("cannot load model 'a/b': weights are 404 MiB but the "
                                                          "disk holds 12 MiB")


def test_unparseable_dataset_names_file_and_line(tmp_path, cli, tiny_model, workspace):
    data = tmp_path / "broken.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": \n')
    path = tmp_path / "c.yaml"
    out = tmp_path / "never"
    path.write_text(f"model: {tiny_model}\noutput_dir: {out}\ndatasets: [{data}]\n")
    res = cli("train", "--config", path)
    assert res.returncode == 2 and f"{data}:2" in res.stderr and "not valid JSON" in res.stderr
    assert not out.exists()


def test_existing_run_is_never_overwritten(tiny_model, tmp_path, workspace):
    from core.errors import ConfigError
    cfg = config(tiny_model, tmp_path / "r", train={"max_steps": 1})
    run(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        run(config(tiny_model, tmp_path / "r", train={"max_steps": 1}))


@pytest.mark.parametrize("where,error", [
    ("transformers.AutoModelForCausalLM.from_pretrained",
     torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 404.00 MiB")),
    ("core.trainer.WorkbenchTrainer.train", RuntimeError("CUDA error: out of memory")),
], ids=["while-loading", "raised-by-a-kernel"])
def test_an_out_of_memory_anywhere_fails_the_run_with_advice(tiny_model, tmp_path, workspace, monkeypatch,
                                                            where, error):
    """A real CUDA out-of-memory needs a GPU (tests/test_gpu.py); here it is raised where it can occur."""
    from core.train import RunFailed

    def out_of_memory(*args, **kwargs):
        raise error
    monkeypatch.setattr(where, out_of_memory)
    out = tmp_path / "r"
    out.mkdir()                                     # a queued run's folder exists before the worker starts
    with pytest.raises(RunFailed, match="out of memory: lower the batch size"):
        run(config(tiny_model, out))
    status = RunDir(out).read_status()
    assert status["state"] == "failed" and status["error"].startswith("out of memory")
    assert not (out / "adapter").exists()


def test_a_stop_while_the_trainer_sets_up_ends_the_run_as_stopped(tiny_model, tmp_path, workspace, monkeypatch):
    import os
    import signal

    from core.trainer import WorkbenchTrainer

    build = WorkbenchTrainer.__init__

    def stop_arrives(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)        # what the queue's Stop sends the worker
        build(self, *args, **kwargs)
    monkeypatch.setattr(WorkbenchTrainer, "__init__", stop_arrives)
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        run(config(tiny_model, out))
    assert RunDir(out).read_status()["state"] == "stopped"


def test_out_of_memory_names_changes_that_fit_the_gpu_it_ran_on(monkeypatch):
    from core import train, vram

    cfg = RunConfig.from_dict({"model": "meta-llama/Llama-3.1-8B", "method": "full",
                               "train": {"batch_size": 8}, "data": {"max_seq_len": 2048}})
    monkeypatch.setattr(vram, "detected_gpus", lambda: [vram.Gpu("GPU 0: NVIDIA A10", 24, 22.3)])
    msg = train.out_of_memory_message(cfg)
    assert msg.startswith("out of memory on GPU 0: NVIDIA A10 (22 GiB)") and "method=" in msg, msg
    monkeypatch.setattr(vram, "detected_gpus", lambda: [])
    assert "gradient checkpointing" in train.out_of_memory_message(cfg)


def test_an_output_dir_that_cannot_be_written_is_bad_input(tmp_path, cli, tiny_model, workspace):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = tmp_path / "c.yaml"
    config(tiny_model, blocker / "run").save(path)
    r = cli("train", "--config", path)
    assert r.returncode == 2 and "output_dir" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_gpu_the_machine_lacks_is_refused_by_train_as_by_the_queue(tmp_path, cli, tiny_model, workspace,
                                                                     monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")         # a shell (Slurm's) may narrow the GPUs: still checked
    path = tmp_path / "c.yaml"
    config(tiny_model, tmp_path / "run").save(path)
    r = cli("train", "--config", path, "gpus=99")
    assert r.returncode == 2 and "field 'gpus': GPU 99 was asked for, but this machine has" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_setting_up_the_log_again_closes_the_file_it_had_open(tmp_path):
    import os

    from core.progress import setup_logging

    run_dir = RunDir(tmp_path / "r")
    run_dir.root.mkdir()
    open_on_log = lambda: sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(run_dir.log.resolve())
                              for fd in os.listdir("/proc/self/fd"))
    for _ in range(3):
        setup_logging(run_dir)
    assert open_on_log() == 1
    setup_logging(None)
    assert open_on_log() == 0
