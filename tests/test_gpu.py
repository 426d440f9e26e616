"""The CUDA paths of the trainer: bf16, 4-bit QLoRA, the fused loss on the GPU, the device peak
recorded beside the estimate, and a CUDA out-of-memory that fails the run cleanly. Skipped where no
GPU is present (CI); benchmarks/gpu_session.sh runs them on a GPU machine."""
import gc
import importlib.util
import json

import pytest
import torch

from core import fused_loss
from core.batching import FlattenCollator
from core.train import RunFailed, run
from test_train import config      # the same small runs as the CPU tests

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

def test_a_gpu_run_trains_in_half_precision_and_records_the_device_peak_beside_the_estimate(tiny_model, tmp_path, workspace):
    run_dir = run(config(tiny_model, tmp_path / "r"))
    status = run_dir.read_status()
    assert status["state"] == "completed" and status["device"] == "cuda"
    half = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"     # never emulated bf16
    assert half in status["precision"] and status["mem_device"] == torch.cuda.get_device_name()
    memory = json.loads((run_dir.adapter / "workbench.json").read_text())["memory"]
    assert 0 < memory["peak_alloc_gib"] <= memory["peak_reserved_gib"] < memory["peak_mem_gib"]   # + context
    assert memory["estimate"]["parts"]["cuda_context"] > 0


def test_qlora_on_the_gpu_holds_the_base_in_4_bits(tiny_model, tmp_path, workspace):
    import bitsandbytes as bnb

    from core import models
    from core.train import build_model, choose_precision

    cfg = config(tiny_model, tmp_path / "q", method="qlora")
    model = build_model(cfg, models.ResolvedModel(str(tiny_model), "local", str(tiny_model)), choose_precision(cfg))
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.weight.dtype == torch.uint8 and m.weight.is_cuda for m in four_bit)
    run_dir = run(cfg)
    assert run_dir.read_status()["state"] == "completed"
    assert (run_dir.adapter / "adapter_model.safetensors").is_file()


def test_fused_loss_on_the_gpu_gives_the_standard_loss_under_bf16_autocast(tiny_model):
    from transformers import AutoModelForCausalLM

    def loss_and_grads(model, batch):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": ids, "labels": ids} for ids in
            (torch.randint(3, 400, (n,), generator=gen).tolist() for n in (7, 19, 4, 13, 25, 9))]
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in FlattenCollator()(rows).items()}   # use_cache travels too
    standard = loss_and_grads(AutoModelForCausalLM.from_pretrained(tiny_model).cuda().train(), batch)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).cuda().train()
    assert fused_loss.enable(model) is not None
    fused = loss_and_grads(model, batch)
    assert torch.allclose(standard[0], fused[0], atol=2e-2, rtol=2e-2)
    for name, grad in standard[1].items():
        assert torch.allclose(grad, fused[1][name], atol=2e-2, rtol=2e-2), name


def test_a_cuda_out_of_memory_fails_the_run_cleanly_and_says_what_to_change(tiny_model, tmp_path, workspace):
    gc.collect()
    torch.cuda.empty_cache()                   # blocks cached by earlier tests would count against the cap
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(16 * 2 ** 20 / total)     # 16 MiB: the logits of a step do not fit
    try:
        cfg = config(tiny_model, tmp_path / "oom", data={"max_seq_len": 1024},
                     train={"batch_size": 64, "padding_free": False, "fused_loss": False})
        with pytest.raises(RunFailed, match="out of memory") as failed:
            run(cfg)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    status = (tmp_path / "oom" / "status.json")
    assert json.loads(status.read_text())["state"] == "failed"
    assert "Changes that fit" in str(failed.value) or "gradient checkpointing" in str(failed.value)
    assert not (tmp_path / "oom" / "adapter").exists()


needs_liger = pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="needs liger-kernel")


@pytest.fixture(autouse=True)
def llama_modelling_restored():
    """Liger swaps classes and functions in transformers' Llama module for the whole process (a worker
    runs one run); the tests after these must get PyTorch's back."""
    from transformers.models.llama import modeling_llama

    before = dict(vars(modeling_llama))
    yield
    for name, value in before.items():
        setattr(modeling_llama, name, value)


@needs_liger
def test_liger_kernels_train_on_the_gpu_with_pytorchs_loss_curve(tiny_model, tmp_path, workspace):
    curves = {}
    for liger in (False, True):
        run_dir = run(config(tiny_model, tmp_path / f"r{liger}", train={"liger_kernels": liger}))
        status = run_dir.read_status()
        assert status["state"] == "completed"
        assert (status["kernels"], status["loss_path"]) == (("liger", "liger") if liger else ("pytorch", "chunked"))
        curves[liger] = [r["loss"] for r in run_dir.read_metrics() if "loss" in r]
    assert curves[True] == pytest.approx(curves[False], abs=0.05)


@needs_liger
def test_liger_layer_activations_equal_what_autograd_saves_on_the_gpu():
    """The estimate's Liger terms against a real bf16 LoRA forward with the kernels in place."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations.liger import apply_liger_kernel

    from core import vram
    from core.train import LIGER_KERNELS
    from test_vram import TOY, TOY_HF, autograd_saved_bytes, cfg

    totals = []
    for layers in (1, 2):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **TOY_HF)).to("cuda", torch.bfloat16)
        model.config._attn_implementation = "sdpa"
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        apply_liger_kernel(model, LIGER_KERNELS)
        ids = torch.randint(0, TOY_HF["vocab_size"], (2, 256), device="cuda")

        def forward():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(input_ids=ids, labels=ids, use_cache=False)
        totals.append(autograd_saved_bytes(model, forward))
    s = vram.setup_for(cfg(train={"liger_kernels": True}))
    assert vram.layer_saved(TOY, s, full=False) == pytest.approx(totals[1] - totals[0], rel=0.01)
