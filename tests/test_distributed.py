"""Runs on several processes: the launch commands, and real 2-process data-parallel training on the
CPU (gloo) through the same supervisor and launcher a GPU run uses."""
import os
import signal
import time
from contextlib import contextmanager

import psutil
import pytest
import torch

from conftest import ROOT, until
from core import devices, jobs, launch, procs
from core.config import RunConfig
from core.errors import ConfigError
from core.runfiles import read_metrics

DATA = ROOT / "presets" / "data" / "identity.jsonl"


def config(model="m", **top) -> RunConfig:
    return RunConfig.from_dict({"model": str(model), "datasets": [str(DATA)], **top})


def train_cfg(tiny_model, gpus, steps, grad_accum=1, name="d"):
    return config(tiny_model, name=name, gpus=gpus, train={
        "max_steps": steps, "batch_size": 2, "grad_accum": grad_accum, "learning_rate": 3e-3,
        "scheduler": "constant", "warmup_ratio": 0.0, "dtype": "fp32", "save_steps": 0})



def losses(job) -> list[float]:
    return [r["loss"] for r in read_metrics(job.dir.metrics) if "loss" in r]


# ---- the commands ---------------------------------------------------------------------------------

def test_one_device_runs_the_worker_itself():
    cmd = launch.command(config(), "c.yaml", cuda_count=0, workspace="/ws", python="py")
    assert cmd.argv == ["py", "-m", "core", "--workspace", "/ws", "train", "--config", "c.yaml"] and cmd.env == {}
    on_gpu = launch.command(config(), "c.yaml", cuda_count=4, resume=True, python="py")
    assert on_gpu.argv[-1] == "--resume" and on_gpu.env == {"CUDA_VISIBLE_DEVICES": "0"}


def test_several_gpus_of_one_machine_use_a_standalone_torchrun():
    cmd = launch.command(config(gpus="all"), "c.yaml", cuda_count=2, python="py")
    assert cmd.argv == ["py", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
                        "2", "-m", "core", "train", "--config", "c.yaml"]
    assert cmd.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    picked = launch.command(config(gpus="1, 3"), "c.yaml", cuda_count=4)
    assert picked.env == {"CUDA_VISIBLE_DEVICES": "1,3"}
    assert picked.argv[picked.argv.index("--nproc_per_node") + 1] == "2"


def test_cpu_processes_hide_the_gpus():
    cmd = launch.command(config(gpus="cpu:2"), "c.yaml", cuda_count=8)
    assert cmd.env == {"CUDA_VISIBLE_DEVICES": ""} and cmd.argv[cmd.argv.index("--nproc_per_node") + 1] == "2"
    assert cmd.shell().startswith("CUDA_VISIBLE_DEVICES= ")
    one = launch.command(config(gpus="cpu"), "c.yaml", cuda_count=8)
    assert "torch.distributed.run" not in one.argv and one.env == {"CUDA_VISIBLE_DEVICES": ""}


def test_each_node_gets_its_own_rank_and_the_same_rendezvous():
    cfg = config(gpus="all", nodes={"count": 3, "host": "10.0.0.5", "port": 29555})
    lines = launch.node_commands(cfg, "config.yaml", cuda_count=0)
    assert len(lines) == 3
    for rank, line in enumerate(lines):
        assert line == (f"torchrun --nnodes 3 --node_rank {rank} --master_addr 10.0.0.5 --master_port 29555 "
                        f"--nproc_per_node gpu -m core train --config config.yaml")
    single = launch.node_commands(config(gpus="0,1"), "config.yaml", cuda_count=0)
    assert single == ["CUDA_VISIBLE_DEVICES=0,1 torchrun --standalone --nnodes 1 --nproc_per_node 2 -m core train "
                      "--config config.yaml"]


def test_gpus_this_machine_lacks_are_refused_where_the_run_starts():
    with pytest.raises(ConfigError, match="GPU 3") as e:
        launch.command(config(gpus="0,3"), "c.yaml", cuda_count=2)
    assert e.value.field == "gpus"
    assert devices.place("0,3", 0, strict=False).procs == 2


def test_8_bit_optimizers_are_refused_under_fsdp_before_anything_starts():
    for method, gpus in (("full", "0,1"), ("freeze", "all")):
        with pytest.raises(ConfigError, match="does not work with FSDP") as e:
            launch.command(config(method=method, gpus=gpus, train={"optimizer": "adamw8bit"}), "c.yaml", cuda_count=2)
        assert e.value.field == "train.optimizer"
    for method, gpus in (("lora", "0,1"), ("full", "cpu:2"), ("full", "0")):   # DDP, DDP on CPU, one GPU
        launch.command(config(method=method, gpus=gpus, train={"optimizer": "adamw8bit"}), "c.yaml", cuda_count=2)


@pytest.mark.parametrize("spec, problem", [("0,0", "twice"), ("cpu:0", "1 to"), ("gpu", "auto, all"),
                                           ("1-3", "auto, all")])
def test_bad_device_choices_name_the_field(spec, problem):
    with pytest.raises(ConfigError, match=problem) as e:
        config(gpus=spec)
    assert e.value.field == "gpus"


def test_several_nodes_need_a_rendezvous_host():
    with pytest.raises(ConfigError) as e:
        config(nodes={"count": 2})
    assert e.value.field == "nodes.host"


def test_estimate_counts_every_gpu_of_every_node():
    assert devices.gpus_for_estimate("0,1", 2, cuda_count=0) == 4
    assert devices.gpus_for_estimate("all", 1, cuda_count=8) == 8
    assert devices.gpus_for_estimate("auto", 1, cuda_count=8) == 1
    assert devices.gpus_for_estimate("nonsense", 1, cuda_count=8) == 1


def test_torchrun_root_cause_reads_as_one_line():
    log = ("Root Cause (first observed failure):\n[0]:\n  time      : 2026-01-01_00:00:00\n  host      : n1\n"
           "  rank      : 3 (local_rank: 1)\n  exitcode  : -9 (pid: 77)\n")
    assert launch.root_cause(log) == "the worker process of rank 3 was killed by SIGKILL"
    assert launch.root_cause("all fine") is None
    resumed = log + launch.launch_marker(0) + "step 5/8 loss 1.2\nValueError: something else\n"
    assert launch.root_cause(resumed) is None


def test_preview_prints_the_command_of_every_node():
    from webui.train_tab import preview_text

    text = preview_text(config(gpus="all", nodes={"count": 2, "host": "head", "port": 29600}), "en")
    assert "--node_rank 0 --master_addr head --master_port 29600" in text
    assert "--node_rank 1 --master_addr head --master_port 29600" in text
    assert "节点" in preview_text(config(gpus="all", nodes={"count": 2, "host": "head"}), "zh")


# ---- real runs on the CPU -------------------------------------------------------------------------

def test_two_cpu_processes_train_like_one_and_write_one_adapter(tiny_model, workspace):
    steps = 12
    one = jobs.submit(train_cfg(tiny_model, "cpu", steps, grad_accum=2, name="one"))
    two = jobs.submit(train_cfg(tiny_model, "cpu:2", steps, name="two"))
    sup = jobs.Supervisor()
    until(lambda: all(jobs.get(j.id).state in ("completed", "failed") for j in (one, two)), 240, sup)
    sup.release()
    for job in (one, two):
        assert jobs.get(job.id).state == "completed", jobs.get(job.id).error
    status = two.dir.read_status()
    assert status["processes"] == 2 and status["strategy"] == "ddp"
    paths = (str(two.dir.adapter), str(two.dir.root))
    printed = [line for line in two.dir.log.read_text().splitlines() if line in paths]
    assert printed == [str(two.dir.adapter)], printed                    # one rank tells where the adapter is
    assert [r["step"] for r in read_metrics(two.dir.metrics) if "loss" in r] == list(range(1, steps + 1))
    outputs = [p.name for p in two.dir.root.iterdir() if p.name in ("adapter", "model") or p.name.endswith(".tmp")]
    assert outputs == ["adapter"] and (two.dir.adapter / "adapter_model.safetensors").is_file()
    a, b = losses(one), losses(two)
    assert sum(b[-3:]) / 3 < b[0] - 0.3, b          # it learns
    assert abs(sum(b[-3:]) - sum(a[-3:])) / sum(a[-3:]) < 0.1, (a, b)  # as far as one process with the same batch


def worker_pids(launcher_pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(launcher_pid).children()]


@contextmanager
def two_process_run_training(tiny_model):
    """A cpu:2 run past its second step under a background supervisor: (job, launcher pid, worker pids).
    Afterwards the supervisor stops and any process of the run is ended."""
    job = jobs.submit(train_cfg(tiny_model, "cpu:2", 100000))
    sup = jobs.Supervisor(poll_s=0.3).start_background()
    try:
        until(lambda: job.dir.read_status().get("step", 0) >= 2, 120)
        launcher = jobs.get(job.id).pid
        yield job, launcher, worker_pids(launcher)
    finally:
        sup.shutdown()
        procs.kill_all(job.id, "-m core")


def test_a_killed_rank_fails_the_run_within_seconds_and_leaves_no_process(tiny_model, workspace):
    with two_process_run_training(tiny_model) as (job, launcher, workers):
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        killed = time.time()
        until(lambda: jobs.get(job.id).state == "failed", 20)
        assert time.time() - killed < 20
        assert "SIGKILL" in jobs.get(job.id).error and "rank" in jobs.get(job.id).error
        assert procs.processes_with(job.id) == [] and not psutil.pid_exists(launcher)


def test_a_killed_launcher_takes_its_workers_with_it(tiny_model, workspace):
    with two_process_run_training(tiny_model) as (job, launcher, workers):
        os.kill(launcher, signal.SIGKILL)
        until(lambda: jobs.get(job.id).state == "failed", 20)
        assert len(workers) == 2
        until(lambda: not any(jobs.pid_alive(p) for p in workers), 10)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_full_fine_tuning_on_two_gpus_runs_under_fsdp(tiny_model, workspace):
    cfg = config(tiny_model, method="full", gpus="0,1", train={"max_steps": 4, "batch_size": 2, "save_steps": 0})
    job = jobs.submit(cfg)
    sup = jobs.Supervisor()
    until(lambda: jobs.get(job.id).state in ("completed", "failed"), 300, sup)
    sup.release()
    assert jobs.get(job.id).state == "completed", jobs.get(job.id).error
    assert job.dir.read_status()["strategy"] == "fsdp" and (job.dir.model / "config.json").is_file()
