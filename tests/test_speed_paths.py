"""The fast paths of the trainer: padding-free batches, the fused loss, length grouping, bf16 on
capable CPUs, and real-token counting. Each must give the loss of the plain path."""
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import ROOT
from core import fused_loss
from core.batching import FlattenCollator, LengthGroupedSampler, PadCollator
from core.config import RunConfig
from core.encode import IGNORE
from core.hardware import cpu_has_fast_bf16
from core.train import choose_precision, run

DATA = ROOT / "presets" / "data"


def samples(vocab: int, lengths=(7, 19, 4, 13, 25, 9), seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * (n // 3) + ids[n // 3:]})
    return out


def load(tiny_model, lora: bool = False):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa")
    if lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    return model.train()


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    loss = model(**batch, **kwargs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(a, b, atol=1e-5, rtol=1e-4):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert torch.allclose(loss_a, loss_b, atol=atol, rtol=rtol), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=atol, rtol=rtol), name


def test_padding_free_batch_gives_the_padded_loss_and_gradients(tiny_model):
    model = load(tiny_model)
    batch = samples(model.config.vocab_size)
    padded, flat = PadCollator(pad_id=0)(batch), FlattenCollator()(batch)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    assert_same(loss_and_grads(model, padded), loss_and_grads(model, flat))


@pytest.mark.parametrize("lora", [False, True], ids=["full-tied-embeddings", "lora"])
@pytest.mark.parametrize("flat", [False, True], ids=["padded", "padding-free"])
def test_fused_loss_gives_the_standard_loss_and_gradients(tiny_model, lora, flat):
    batch = samples(400)
    inputs = FlattenCollator()(batch) if flat else PadCollator(pad_id=0)(batch)
    standard = loss_and_grads(load(tiny_model, lora), inputs)
    model = load(tiny_model, lora)
    assert model.config.tie_word_embeddings
    assert fused_loss.enable(model) == "chunked"
    assert model(**inputs).logits is None, "the fused path must not build logits"
    assert_same(standard, loss_and_grads(model, inputs))


def test_fused_loss_divides_by_the_trainers_item_count_for_gradient_accumulation(tiny_model):
    inputs = PadCollator(pad_id=0)(samples(400))
    items = torch.tensor(123)
    standard = loss_and_grads(load(tiny_model, True), inputs, num_items_in_batch=items)
    model = load(tiny_model, True)
    fused_loss.enable(model)
    fused = loss_and_grads(model, inputs, num_items_in_batch=items)
    assert_same(standard, fused)
    plain_mean = loss_and_grads(model, inputs)[0]
    assert not torch.allclose(plain_mean, fused[0]), "the item count must change the normalisation"


def test_fused_loss_under_bf16_autocast_stays_within_bf16_noise(tiny_model):
    inputs = FlattenCollator()(samples(400))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        standard = loss_and_grads(load(tiny_model, True), inputs)
        model = load(tiny_model, True)
        fused_loss.enable(model)
        fused = loss_and_grads(model, inputs)
    assert_same(standard, fused, atol=2e-2, rtol=2e-2)


class LargestLogits(TorchDispatchMode):
    """Remembers the largest new tensor (not a view of an input) any op produced whose last
    dimension is the vocabulary: the logits, whole or a chunk."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        seen = {a.untyped_storage().data_ptr() for a in inputs}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab \
                    and t.untyped_storage().data_ptr() not in seen:
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_loss_never_holds_more_than_a_chunk_of_logits():
    torch.manual_seed(0)
    tokens, hidden_size, vocab, rows = 300, 16, 1000, 8
    hidden = torch.randn(1, tokens, hidden_size, requires_grad=True)
    head = torch.nn.Linear(hidden_size, vocab, bias=True)
    targets = torch.randint(0, vocab, (1, tokens))
    targets[0, ::3] = IGNORE

    def run_loss(fn):
        hidden.grad = None
        head.zero_grad()
        with LargestLogits(vocab) as seen:
            loss = fn()
            loss.backward()
        return seen.largest, (loss.detach(), {"h": hidden.grad.clone(), "w": head.weight.grad.clone(),
                                              "b": head.bias.grad.clone()})

    full, standard = run_loss(lambda: torch.nn.functional.cross_entropy(head(hidden)[0], targets[0],
                                                                        ignore_index=IGNORE))
    chunk, chunked = run_loss(lambda: fused_loss.linear_cross_entropy(hidden, head, targets,
                                                                      chunk_elements=rows * vocab))
    assert full == tokens * vocab and chunk == rows * vocab
    assert_same(standard, chunked)


def test_fused_loss_stays_off_where_the_head_is_not_a_plain_linear(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    assert "plain Linear" in fused_loss.why_unsupported(model)
    assert fused_loss.enable(model) is None
    assert model(**PadCollator(pad_id=0)(samples(400))).logits is not None


def cfg_with(**train) -> RunConfig:
    return RunConfig.from_dict({"model": "x", "train": train})


def test_auto_precision_is_bf16_on_cpus_with_native_bf16_and_fp32_elsewhere():
    f32, bf16 = torch.float32, torch.bfloat16
    lora = choose_precision(cfg_with(dtype="auto"), "cpu", cpu_bf16=True)
    assert (lora.weights, lora.autocast, lora.compute) == (bf16, "bf16", bf16)
    full = choose_precision(RunConfig.from_dict({"model": "x", "method": "full"}), "cpu", cpu_bf16=True)
    assert (full.weights, full.autocast) == (f32, "bf16"), "full training keeps fp32 master weights"
    plain = choose_precision(cfg_with(dtype="auto"), "cpu", cpu_bf16=False)
    assert (plain.weights, plain.autocast) == (f32, None)
    assert choose_precision(cfg_with(dtype="fp32"), "cpu", cpu_bf16=True).autocast is None
    explicit = choose_precision(cfg_with(dtype="bf16"), "cpu", cpu_bf16=False)
    assert (explicit.weights, explicit.autocast) == (f32, "bf16")


@pytest.mark.parametrize("flags,fast", [
    ("fpu sse avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),
    ("fpu avx512f amx_bf16 amx_tile amx_int8", True),
    ("fpu sse avx2 avx512f avx512bw avx512_vnni", False),
    ("", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(flags, fast):
    cpuinfo = f"processor\t: 0\nvendor_id\t: Example\nflags\t\t: {flags}\nbogomips\t: 5000\n"
    assert cpu_has_fast_bf16(cpuinfo) is fast


def test_length_grouped_sampler_groups_like_lengths_and_shuffles_the_batches():
    torch.manual_seed(0)
    lengths = torch.randint(5, 500, (403,)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(403))
    batches = [order[k:k + 4] for k in range(0, 403, 4)]
    assert max(lengths) in [lengths[i] for i in batches[0]], "the longest batch comes first"
    assert len(batches[-1]) == 3, "the one short batch stays last, so later batches keep their size"
    padded = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)
    shuffled = torch.randperm(403).tolist()
    assert padded(batches) < 0.7 * padded([shuffled[k:k + 4] for k in range(0, 403, 4)])
    firsts = [max(lengths[i] for i in b) for b in batches[1:101]]
    assert firsts != sorted(firsts, reverse=True), "batches are shuffled, not longest first"
    assert list(sampler) == order, "the order depends on the seed and the epoch only (resume sees it again)"
    sampler.set_epoch(1)
    assert list(sampler) != order, "each epoch draws a new order"


def test_padded_batches_reach_the_model_grouped_by_length(tiny_model, tmp_path):
    from transformers import TrainingArguments

    from core.trainer import WorkbenchTrainer

    items = samples(400, lengths=[5, 60, 7, 58, 6, 61, 8, 59, 30, 31, 29, 32])
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True,
                             report_to="none", remove_unused_columns=False, seed=3)
    trainer = WorkbenchTrainer(model=load(tiny_model), args=args, train_dataset=items,
                               data_collator=PadCollator(pad_id=0), length_grouped=True)
    batches = list(trainer.get_train_dataloader())
    assert sorted(int(b["attention_mask"].sum(1).max()) for b in batches) == [8, 32, 61]
    assert int(batches[0]["attention_mask"].sum(1).max()) == 61, "the longest batch comes first"
    assert sum(int((b["attention_mask"] == 0).sum()) for b in batches) == 18, "6 padding tokens per batch"


def config(tiny_model, out, **train) -> RunConfig:
    base = {"model": str(tiny_model), "datasets": [str(DATA / "identity.jsonl"), str(DATA / "general.json")],
            "output_dir": str(out), "data": {"max_seq_len": 256},
            "train": {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-3, "dtype": "fp32", **train}}
    packing = base["train"].pop("packing", False)
    base["data"]["packing"] = packing
    return RunConfig.from_dict(base)


def real_tokens_of(cfg: RunConfig) -> int:
    from core import data as datamod
    from core.models import load_tokenizer, resolve

    return datamod.build(cfg, load_tokenizer(resolve(cfg.model))).tokens


@pytest.mark.parametrize("mode", [{"padding_free": False}, {"padding_free": True}, {"packing": True}],
                         ids=["padded", "padding-free", "packed"])
def test_tokens_seen_count_real_tokens_only_in_every_batching_mode(tiny_model, tmp_path, workspace, mode):
    cfg = config(tiny_model, tmp_path / "r", max_steps=0, epochs=1, **mode)
    run_dir = run(cfg)
    rows = [r for r in run_dir.read_metrics() if "loss" in r]
    assert rows[-1]["tokens_seen"] == real_tokens_of(cfg)
    assert all(r["tokens_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("options,batching,loss_path", [
    ({"padding_free": True, "fused_loss": False}, "padding-free", "standard"),
    ({"padding_free": False, "fused_loss": True}, "padded, grouped by length", "chunked"),
    ({"padding_free": True, "fused_loss": True, "grad_accum": 2}, "padding-free", "chunked"),
    ({"padding_free": True, "fused_loss": True, "dtype": "auto"}, "padding-free", "chunked"),
    ({"packing": True, "padding_free": False, "fused_loss": True, "gradient_checkpointing": True}, "packed",
     "chunked"),
], ids=["padding-free", "fused-grouped", "both-accum", "both-auto-dtype", "packed-fused-ckpt"])
def test_trainer_runs_with_each_fast_path(tiny_model, tmp_path, workspace, options, batching, loss_path):
    run_dir = run(config(tiny_model, tmp_path / "r", **options))
    status = run_dir.read_status()
    assert status["state"] == "completed"
    assert (status["batching"], status["loss_path"]) == (batching, loss_path)
    losses = [r["loss"] for r in run_dir.read_metrics() if "loss" in r]
    assert len(losses) == 3 and all(l == l for l in losses)


@pytest.mark.parametrize("method", ["qlora", "full"])
def test_fused_loss_trains_qlora_and_full(tiny_model, tmp_path, workspace, method):
    run_dir = run(RunConfig.from_dict({**config(tiny_model, tmp_path / "r", max_steps=2, fused_loss=True,
                                                padding_free=True).to_dict(), "method": method}))
    status = run_dir.read_status()
    assert status["state"] == "completed" and status["loss_path"] == "chunked"


def test_fused_loss_leaves_the_trainer_loss_curve_unchanged(tiny_model, tmp_path, workspace):
    """Through the real Trainer with gradient accumulation: same data, same steps, same losses."""
    curves = []
    for fused in (False, True):
        run_dir = run(config(tiny_model, tmp_path / f"r{fused}", max_steps=4, grad_accum=2, padding_free=True,
                             fused_loss=fused))
        curves.append([r["loss"] for r in run_dir.read_metrics() if "loss" in r])
    assert len(curves[0]) == 4
    assert curves[0][:2] == pytest.approx(curves[1][:2], rel=1e-5)
    # Adam turns round-off in near-zero gradients into whole steps, so later steps drift a little.
    assert curves[0] == pytest.approx(curves[1], rel=2e-3)
    meta = json.loads((run_dir.adapter / "workbench.json").read_text())
    assert meta["metrics"]["steps"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a CUDA GPU")
def test_liger_kernels_asked_for_without_a_gpu_say_so_and_the_run_trains_with_pytorchs(tiny_model, tmp_path,
                                                                                          workspace):
    run_dir = run(config(tiny_model, tmp_path / "r", max_steps=2, fused_loss=True, liger_kernels=True))
    status = run_dir.read_status()
    assert status["state"] == "completed"
    assert (status["loss_path"], status["kernels"]) == ("chunked", "pytorch")
    assert "Liger kernels off: they run on CUDA GPUs only" in run_dir.log.read_text()
