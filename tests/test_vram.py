"""The GPU memory estimate: each part's formula, its inputs, the fit advice, the CLI, and the
reference measurements it must stay close to."""
import json
import statistics
from dataclasses import replace

import pytest
import torch

from conftest import ROOT
from core import vram
from core.arch import Arch, find_card, list_cards, load_arch
from core.config import RunConfig
from core.errors import ConfigError, ModelError

GIB = 1024 ** 3
CALIBRATION = ROOT.parent / "shared" / "calibration" / "h100_vram_reference.jsonl"
CALIBRATION_MODELS = {"smollm2-135m": "SmolLM2-135M", "qwen2.5-0.5b": "Qwen2.5-0.5B", "llama3.2-3b": "Llama-3.2-3B",
                      "llama3.1-8b": "Llama-3.1-8B", "llama3.2-1b": "Llama-3.2-1B", "qwen2.5-1.5b": "Qwen2.5-1.5B",
                      "qwen2.5-7b": "Qwen2.5-7B"}

# A made-up model small enough to count by hand: 2 layers, hidden 64, 4 heads of 16 (2 for keys/values).
TOY = Arch(name="toy", model_type="llama", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
           num_kv_heads=2, head_dim=16, vocab_size=1000, tie_embeddings=True)
TOY_LINEAR = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128       # q, k, v, o, gate, up, down = 36864
TOY_PARAMS = 1000 * 64 + 2 * (TOY_LINEAR + 2 * 64) + 64                 # embedding, layers, final norm
TOY_LORA8 = 2 * 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))   # r x (in + out)


def cfg(**sections) -> RunConfig:
    data = {"model": "toy", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "data": {"max_seq_len": 256}, "train": {"batch_size": 2, "padding_free": False, "fused_loss": False}}
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return RunConfig.from_dict(data)


def parts(config: RunConfig, arch: Arch = TOY, gpus: int = 1) -> dict:
    return vram.estimate(config, arch=arch, gpus=gpus).parts


# ---- each part on hand-countable numbers -----------------------------------------------------------

def test_toy_parameter_count_is_the_hand_count():
    assert TOY.total_params() == TOY_PARAMS == 138048


def test_weights_are_parameters_times_the_dtype_of_the_method():
    assert vram.weights_bytes(TOY, vram.setup_for(cfg(method="lora"))) == 2 * TOY_PARAMS
    assert vram.weights_bytes(TOY, vram.setup_for(cfg(method="full"))) == 4 * TOY_PARAMS        # fp32 master weights
    assert vram.weights_bytes(TOY, vram.setup_for(cfg(method="full", train={"dtype": "bf16"}))) == 2 * TOY_PARAMS


def test_qlora_weights_are_half_a_byte_plus_block_constants_and_fp32_for_the_rest():
    linear = 2 * TOY_LINEAR
    blocks = linear / 64
    double = linear / 2 + blocks + 4 * blocks / 256 + 1024 * 14 + (TOY_PARAMS - linear) * 4
    single = linear / 2 + 4 * blocks + (TOY_PARAMS - linear) * 4
    assert vram.weights_bytes(TOY, vram.setup_for(cfg(method="qlora"))) == pytest.approx(double)
    assert vram.weights_bytes(TOY, vram.setup_for(cfg(method="qlora", quant={"double_quant": False}))) == \
        pytest.approx(single)


def test_adapters_gradients_and_adamw_states_of_lora_are_fp32_counts():
    est = vram.estimate(cfg(method="lora"), arch=TOY)
    assert est.trainable_params == TOY_LORA8 == 16384
    s = vram.setup_for(cfg(method="lora"))
    mem = vram._persistent(TOY, s, vram.trainable_tensors(TOY, s), 4, "single", 1)
    assert mem["adapters"] == mem["grads"] == 4 * TOY_LORA8
    assert mem["states"] == 2 * 4 * TOY_LORA8


def test_lora_on_named_modules_counts_only_those():
    s = vram.setup_for(cfg(lora={"target_modules": "q_proj,v_proj"}))
    assert vram.count(vram.trainable_tensors(TOY, s)) == 2 * 8 * ((64 + 64) + (64 + 32))
    with pytest.raises(ConfigError) as e:
        vram.estimate(cfg(lora={"target_modules": "wq,wv"}), arch=TOY)
    assert e.value.field == "lora.target_modules" and "q_proj" in str(e.value)


def test_full_tuning_states_follow_the_weight_dtype():
    s32 = vram.setup_for(cfg(method="full"))
    s16 = vram.setup_for(cfg(method="full", train={"dtype": "bf16"}))
    tensors = vram.trainable_tensors(TOY, s32)
    assert vram.count(tensors) == TOY_PARAMS
    assert vram.optimizer_bytes(tensors, s32, 4)[0] == 8 * TOY_PARAMS
    assert vram.optimizer_bytes(tensors, s16, 2)[0] == 4 * TOY_PARAMS


def test_8bit_adamw_keeps_a_byte_per_state_with_a_constant_per_256_and_fp32_for_small_tensors():
    s = vram.setup_for(cfg(train={"optimizer": "adamw8bit"}))
    states, temp = vram.optimizer_bytes([(8192, 3), (100, 2)], s, 4)
    assert states == 2 * 3 * 8192 * (1 + 4 / 256) + 8 * 200 and temp == 0


def test_freeze_trains_only_the_last_layers():
    s = vram.setup_for(cfg(method="freeze", freeze={"trainable_layers": 1}))
    assert vram.count(vram.trainable_tensors(TOY, s)) == TOY_LINEAR + 2 * 64


def test_stock_loss_of_the_plain_step_holds_bf16_logits_and_three_fp32_tensors_at_its_backward():
    s = replace(vram.setup_for(cfg()), output_held=True)
    tokens = 2 * 256
    terms = vram.loss_terms(TOY, s)
    assert terms["backward"] == (2 + 3 * 4) * tokens * 1000       # logits, log_softmax, its grad, the input grad
    assert terms["held"] == 2 * tokens * 1000
    assert terms["stranded"] == 4 * tokens * 1000                 # this step's and the previous step's logits


def test_our_trainer_frees_the_output_before_the_backward_pass():
    """Trainer.compute_loss returns the loss alone: no logits held through backward or into the next forward."""
    blv = 2 * 256 * 1000
    ours, plain = vram.loss_terms(TOY, vram.setup_for(cfg())), vram.loss_terms(TOY, replace(vram.setup_for(cfg()), output_held=True))
    assert ours["held"] == 0 and ours["backward"] == 3 * 4 * blv and ours["stranded"] == 2 * blv
    assert plain["forward"] - ours["forward"] == 2 * blv
    arch = load_arch("Qwen2.5-0.5B")
    stock = cfg(model="Qwen2.5-0.5B", data={"max_seq_len": 4096}, train={"batch_size": 1, "fused_loss": False})
    gap = vram.estimate(stock, arch=arch, plain=True).total_gib - vram.estimate(stock, arch=arch).total_gib
    assert gap == pytest.approx(4 * 4096 * arch.vocab_size / GIB, abs=0.01)


def test_cuda_context_is_a_constant_part():
    assert parts(cfg())["cuda_context"] == pytest.approx((vram.CUDA_CONTEXT_GIB * GIB + vram.CUBLAS_WORKSPACES) / GIB,
                                                         abs=1e-3)


def test_parts_are_exactly_the_eight_and_add_up_to_the_total():
    est = vram.estimate(cfg(), arch=TOY)
    assert tuple(est.parts) == vram.PARTS
    assert est.total_gib == pytest.approx(sum(est.parts.values()), abs=2e-3)


# ---- activations: the formula against what autograd really saves on a real model ----------------

def autograd_saved_bytes(model, forward) -> int:
    """Bytes of the tensors autograd saves while `forward()` runs, the model's own weights left out."""
    # The storage wrappers are held (dict values), so that no id is reused while the forward runs.
    owned = {id(st): st for st in (t.untyped_storage() for t in [*model.parameters(), *model.buffers()])}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if id(st) not in owned:
            seen[id(st)] = st          # held, so that no id is reused by a later storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(st.nbytes() for st in seen.values())


def _saved_per_layer(method: str, weight_dtype, autocast: bool, arch_kw: dict) -> float:
    """Bytes autograd keeps per extra decoder layer in a real forward (CPU, bf16 autocast)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    totals = []
    for layers in (1, 2):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **arch_kw)).to(weight_dtype)
        model.config._attn_implementation = "sdpa"
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        ids = torch.randint(0, arch_kw["vocab_size"], (2, 256))

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                model(input_ids=ids, labels=ids, use_cache=False)
        totals.append(autograd_saved_bytes(model, forward))
    return totals[1] - totals[0]


TOY_HF = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, tie_word_embeddings=True, max_position_embeddings=512)


@pytest.mark.parametrize("method,dtype,weights,autocast", [("lora", "bf16", torch.bfloat16, True),
                                                           ("full", "bf16", torch.bfloat16, False),
                                                           ("full", "fp32", torch.float32, True)])
def test_layer_activations_equal_what_autograd_saves(method, dtype, weights, autocast):
    measured = _saved_per_layer(method, weights, autocast, TOY_HF)
    s = vram.setup_for(cfg(method=method, train={"dtype": dtype}))
    assert vram.layer_saved(TOY, s, full=method == "full") == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize("upcast", [True, False])
def test_qlora_layer_activations_equal_what_autograd_saves(tmp_path, upcast):
    """4-bit base, fp32 norms and embeddings after prepare_model_for_kbit_training: an fp32 residual stream;
    without the upcast a bf16 one, and 4-bit layers that return bf16."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    totals = []
    for layers in (1, 2):
        folder = tmp_path / str(layers)
        LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **TOY_HF)).save_pretrained(folder)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, quantization_config=quant,
                                                     device_map={"": "cpu"}, attn_implementation="sdpa")
        if upcast:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        ids = torch.randint(0, 1000, (2, 256))

        def forward():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(input_ids=ids, labels=ids, use_cache=False)
        totals.append(autograd_saved_bytes(model, forward))
    s = vram.setup_for(cfg(method="qlora", quant={"upcast_unquantized": upcast}))
    assert vram.layer_saved(TOY, s, full=False) == pytest.approx(totals[1] - totals[0], rel=0.01)


def test_qlora_without_the_upcast_keeps_the_unquantized_weights_and_the_residual_stream_in_bf16():
    arch = load_arch("Qwen2.5-0.5B")
    upcast = cfg(model="Qwen2.5-0.5B", method="qlora")
    half = cfg(model="Qwen2.5-0.5B", method="qlora", quant={"upcast_unquantized": False})
    unquantized = arch.total_params() - arch.num_layers * arch.layer_linear_params()
    assert vram.weights_bytes(arch, vram.setup_for(upcast)) - vram.weights_bytes(arch, vram.setup_for(half)) == \
        2 * unquantized
    assert vram.setup_for(half).residual == 2 and vram.setup_for(upcast).residual == 4
    assert parts(half, arch)["activations"] < 0.6 * parts(upcast, arch)["activations"]


def test_lora_layer_activations_by_hand():
    """bf16 LoRA on every linear layer, per token: two fp32 norm inputs (4h each), a bf16 copy of each
    adapter's input, each adapter's rank-wide output, flash attention's q, k, v, output and logsumexp,
    and the MLP's gate, activation and up outputs; plus the bf16 copies of the adapter weights."""
    h, i, q, kv, r = 64, 128, 64, 32, 8
    per_token = (2 * 4 * h + 2 * (3 * h + q + 2 * h + i) + 7 * 2 * r
                 + 2 * q + 2 * kv + 2 * kv + 2 * q + 4 * 4 + 3 * 2 * i)
    s = vram.setup_for(cfg())
    assert vram.layer_saved(TOY, s, full=False) == per_token * 512 + 2 * TOY_LORA8 // 2


def test_liger_kernels_keep_each_norms_input_and_the_mlps_gate_and_up_by_hand():
    """Liger's RMSNorm keeps its bf16 input and one fp32 scale per token instead of an fp32 copy (2 norms
    a layer); its SwiGLU keeps gate and up and recomputes the activation (one bf16 intermediate less)."""
    h, i, tokens = 64, 128, 512
    eager, liger = vram.setup_for(cfg()), vram.setup_for(cfg(train={"liger_kernels": True}))
    assert liger.liger and not eager.liger
    saved_less = 2 * (4 * h - (2 * h + 4)) + 2 * i
    assert vram.layer_saved(TOY, eager, full=False) - vram.layer_saved(TOY, liger, full=False) == saved_less * tokens
    assert vram.tail_saved(TOY, eager) - vram.tail_saved(TOY, liger) == (4 * h - (2 * h + 4)) * tokens
    assert vram.layer_working_set(TOY, eager) - vram.layer_working_set(TOY, liger) == 2 * 2 * i * tokens


def test_liger_kernels_lower_the_estimate_only_for_the_architectures_they_cover():
    on = cfg(train={"liger_kernels": True})
    assert parts(on)["activations"] < parts(cfg())["activations"]
    assert any("Liger" in n for n in vram.estimate(on, arch=TOY).notes)
    other = replace(TOY, model_type="gpt_neox")
    assert vram.estimate(on, arch=other).parts == vram.estimate(cfg(), arch=other).parts
    assert any("do not cover gpt_neox" in n for n in vram.estimate(on, arch=other).notes)


# ---- every input moves the estimate the way it should ----------------------------------------------

def test_gradient_checkpointing_lowers_activations():
    assert parts(cfg(train={"gradient_checkpointing": True}))["activations"] < parts(cfg())["activations"]


def test_qlora_lowers_weights():
    arch = load_arch("Llama-3.1-8B")
    assert parts(cfg(method="qlora"), arch)["weights"] < parts(cfg(method="lora"), arch)["weights"] / 2


def test_8bit_optimizer_lowers_optimizer_states():
    """bitsandbytes alone halves bf16 states; our Trainer keeps the embedding's in 32 bits, which for a
    small model with a large vocabulary takes back most of the saving."""
    arch = load_arch("Qwen2.5-0.5B")
    full = cfg(method="full", train={"dtype": "bf16"})
    eight_bit = full.with_overrides(["train.optimizer=adamw8bit"])
    plain = vram.estimate(eight_bit, arch=arch, plain=True).parts["optimizer"]
    assert plain < parts(full, arch)["optimizer"] / 1.9
    assert plain < parts(eight_bit, arch)["optimizer"] < parts(full, arch)["optimizer"]


def test_fused_loss_lowers_logits():
    arch = load_arch("Qwen2.5-0.5B")
    assert parts(cfg(train={"fused_loss": True}), arch)["logits"] < parts(cfg(), arch)["logits"] / 20


def test_fused_loss_is_ignored_where_it_does_not_apply():
    arch = load_arch("gemma-3-1b-pt")
    est = vram.estimate(cfg(train={"fused_loss": True}), arch=arch)
    assert est.parts == vram.estimate(cfg(), arch=arch).parts and "fused loss" in est.notes[0]


def test_longer_sequences_larger_batches_and_higher_rank_cost_more():
    arch = load_arch("Llama-3.2-1B")
    base = vram.estimate(cfg(), arch=arch).total_gib
    assert vram.estimate(cfg(data={"max_seq_len": 512}), arch=arch).total_gib > base
    assert vram.estimate(cfg(train={"batch_size": 4}), arch=arch).total_gib > base
    assert parts(cfg(lora={"rank": 64}), arch)["adapters"] > parts(cfg(), arch)["adapters"]


def test_lora_dropout_keeps_a_mask_per_adapter():
    s0, s1 = vram.setup_for(cfg()), vram.setup_for(cfg(lora={"dropout": 0.1}))
    masks = (3 * 64 + 64 + 2 * 64 + 128) * 512           # one byte per element of every adapter's input
    assert vram.layer_saved(TOY, s1, full=False) - vram.layer_saved(TOY, s0, full=False) == masks


def test_packed_rows_pay_for_the_attention_mask():
    arch = load_arch("SmolLM2-135M")
    flat = cfg(train={"padding_free": True})
    assert parts(flat, arch)["activations"] > parts(cfg(), arch)["activations"]
    assert vram.attention_path(arch, vram.setup_for(flat), 2) == "efficient-mask"
    assert vram.attention_path(arch, vram.setup_for(cfg()), 2) == "flash"


def test_our_trainer_keeps_8_bit_optimizers_embedding_states_in_32_bits():
    """transformers' Trainer registers every nn.Embedding for 32-bit states; the plain step does not."""
    arch = load_arch("Llama-3.2-1B")
    full = cfg(model="Llama-3.2-1B", method="full", train={"optimizer": "adamw8bit"})
    extra = (8 - 2 * (1 + 4 / 256)) * arch.embed_params() / GIB
    ours, plain = vram.estimate(full, arch=arch), vram.estimate(full, arch=arch, plain=True)
    assert ours.parts["optimizer"] - plain.parts["optimizer"] == pytest.approx(extra, abs=2e-3)
    lora = cfg(model="Llama-3.2-1B", train={"optimizer": "adamw8bit"})
    assert vram.estimate(lora, arch=arch).parts["optimizer"] == vram.estimate(lora, arch=arch, plain=True).parts["optimizer"]


def test_a_padding_free_batch_of_one_sample_needs_no_mask():
    """transformers builds the block mask only when a row holds several samples (find_packed_sequence_indices)."""
    arch = load_arch("SmolLM2-135M")
    one = cfg(train={"padding_free": True, "batch_size": 1})
    assert vram.attention_path(arch, vram.setup_for(one), 2) == "flash"
    assert parts(one, arch) == parts(cfg(train={"batch_size": 1}), arch)
    assert vram.setup_for(cfg(data={"packing": True}, train={"batch_size": 1})).flat      # packed rows hold several


def test_fsdp_divides_weights_gradients_and_optimizer_across_gpus():
    arch = load_arch("Llama-3.1-8B")
    full = cfg(method="full", train={"dtype": "bf16", "gradient_checkpointing": True})
    one, four = vram.estimate(full, arch=arch), vram.estimate(full, arch=arch, gpus=4)
    assert four.strategy == "fsdp" and one.strategy == "single"
    s = vram.setup_for(full)
    mem1 = vram._persistent(arch, s, vram.trainable_tensors(arch, s), 2, "single", 1)
    mem4 = vram._persistent(arch, s, vram.trainable_tensors(arch, s), 2, "fsdp", 4)
    assert mem4["states"] == pytest.approx(mem1["states"] / 4) and mem4["grads"] == pytest.approx(mem1["grads"] / 4)
    assert mem4["weights"] < mem1["weights"] / 2
    assert four.total_gib < one.total_gib / 2


def test_ddp_keeps_the_whole_model_on_every_gpu():
    arch = load_arch("Llama-3.1-8B")
    one, two = vram.estimate(cfg(), arch=arch), vram.estimate(cfg(), arch=arch, gpus=2)
    assert two.strategy == "ddp" and two.parts["weights"] == one.parts["weights"]
    assert two.parts["gradients"] > one.parts["gradients"]        # DDP's gradient buckets
    with pytest.raises(ConfigError):
        vram.estimate(cfg(), arch=arch, gpus=0)


def test_gradient_accumulation_keeps_gradients_between_micro_batches():
    arch = load_arch("Qwen2.5-0.5B")
    full = cfg(method="full", train={"dtype": "bf16"})
    assert vram.estimate(full.with_overrides(["train.grad_accum=4"]), arch=arch).total_gib > \
        vram.estimate(full, arch=arch).total_gib


def test_dtype_auto_resolves_like_choose_precision_on_a_bf16_gpu():
    assert vram.setup_for(cfg(method="lora")) == vram.setup_for(cfg(method="lora", train={"dtype": "bf16"}))
    full = vram.setup_for(cfg(method="full"))
    assert (full.weight, full.autocast) == (4, True)                # fp32 master weights, bf16 autocast
    assert (vram.setup_for(cfg(method="full", train={"dtype": "bf16"})).weight, False) == (2, False)


# ---- verdict and advice ------------------------------------------------------------------------------

def test_verdict_is_fits_tight_or_does_not_fit():
    est = vram.estimate(cfg(), arch=load_arch("Llama-3.2-1B"))
    assert est.verdict(est.total_gib / 0.5) == "fits"
    assert est.verdict(est.total_gib / 0.95) == "tight"          # within 10% of the card
    assert est.verdict(est.total_gib * 0.99) == "does not fit"


def test_suggestions_make_it_fit_and_keep_the_effective_batch():
    arch = load_arch("Llama-3.1-8B")
    big = cfg(model="Llama-3.1-8B", data={"max_seq_len": 2048}, train={"batch_size": 8, "grad_accum": 2})
    for gpu in (80, 24, 16):
        advice = vram.suggestions(big, gpu, arch=arch)
        assert advice, gpu
        for a in advice:
            changed = big.with_overrides(a.overrides)
            assert a.estimate.total_gib <= gpu
            assert vram.estimate(changed, arch=arch).total_gib == a.estimate.total_gib
            assert changed.train.batch_size * changed.train.grad_accum == 16
            assert all("=" in o and o.split("=")[0] for o in a.overrides) and a.description


def test_8_bit_optimizers_are_not_suggested_where_the_run_uses_fsdp():
    arch = load_arch("Llama-3.2-3B")
    full = cfg(model="Llama-3.2-3B", method="full", data={"max_seq_len": 2048}, train={"batch_size": 4})
    optimizers = lambda advice: {o for a in advice for o in a.overrides if o.startswith("train.optimizer")}
    assert optimizers(vram.suggestions(full, 90, gpus=1, arch=arch)) == {"train.optimizer=adamw8bit"}
    on_two = vram.suggestions(full, 80, gpus=2, arch=arch)       # full on 2 GPUs runs under FSDP
    assert on_two and optimizers(on_two) == set()


def test_suggestions_are_empty_when_it_fits_or_nothing_can_help():
    arch = load_arch("SmolLM2-135M")
    assert vram.suggestions(cfg(), 80, arch=arch) == []
    assert vram.suggestions(cfg(), 0.1, arch=arch) == []


def test_common_gpus_cover_the_usual_sizes_and_none_are_detected_on_cpu():
    assert [g.memory_gb for g in vram.COMMON_GPUS] == [8, 12, 16, 24, 40, 48, 80, 141]
    assert all(g.name and g.gib <= g.memory_gb for g in vram.COMMON_GPUS)
    if not torch.cuda.is_available():
        assert vram.detected_gpus() == []


# ---- architecture numbers ------------------------------------------------------------------------------

def test_cards_match_the_published_parameter_counts():
    cards = list_cards()
    assert len(cards) >= 25
    for card in cards:
        arch = find_card(card["name"]).arch()
        assert arch.total_params() / 1e9 == pytest.approx(card["params_b"], rel=0.015), card["name"]


def test_cards_match_the_reference_runs_parameter_counts_exactly():
    rows = [json.loads(line) for line in CALIBRATION.read_text().splitlines()] if CALIBRATION.exists() else []
    exact = {"smollm2-135m": 134_515_008, "qwen2.5-0.5b": 494_032_768, "llama3.2-3b": 3_212_749_824}
    for row in rows:
        if row["method"].startswith("full"):
            exact[row["model"]] = row["total_params"]
    for model, total in exact.items():
        assert load_arch(CALIBRATION_MODELS[model]).total_params() == total


def test_every_family_of_the_issue_has_cards():
    names = {c["name"] for c in list_cards()}
    for wanted in ("Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B", "Llama-3.1-70B", "Qwen2.5-0.5B", "Qwen2.5-72B",
                   "Qwen3-0.6B", "Qwen3-32B", "Mistral-7B-v0.3", "Phi-3.5-mini-instruct", "Phi-4", "SmolLM2-135M",
                   "SmolLM2-360M", "SmolLM2-1.7B", "gemma-3-1b-pt", "gemma-3-27b-pt"):
        assert wanted in names


def test_load_arch_reads_a_folder_a_bare_config_and_a_hub_id_offline(tiny_model, tmp_path):
    folder = load_arch(str(tiny_model))
    assert (folder.hidden_size, folder.num_layers, folder.tie_embeddings) == (32, 2, True)
    bare = tmp_path / "config.json"
    bare.write_text(json.dumps(find_card("Qwen2.5-7B").config))
    assert load_arch(str(bare)).total_params() == load_arch("Qwen2.5-7B").total_params()
    assert load_arch("Qwen/Qwen2.5-7B-Instruct").hub_id == "Qwen/Qwen2.5-7B"      # tests run offline: the card
    assert load_arch("embedded").vocab_size == 49152


def test_load_arch_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ModelError, match="no shipped card"):
        load_arch("someone/unknown-model")
    with pytest.raises(ModelError, match="not found"):
        load_arch("no-such-model")
    broken = tmp_path / "config.json"
    broken.write_text("{not json")
    with pytest.raises(ModelError) as e:
        load_arch(str(broken))
    assert e.value.file == str(broken)
    moe = tmp_path / "moe.json"
    moe.write_text(json.dumps({**find_card("Qwen2.5-7B").config, "num_experts": 8}))
    with pytest.raises(ModelError, match="mixture-of-experts"):
        load_arch(str(moe))
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"model_type": "custom", "hidden_size": 64}))
    with pytest.raises(ModelError, match="intermediate_size"):
        load_arch(str(missing))


def test_multimodal_gemma_counts_its_vision_tower():
    arch = load_arch("gemma-3-4b-pt")
    assert arch.vision is not None and 0.4e9 < arch.vision_params() < 0.45e9
    assert arch.sliding_layers == 29 and arch.sliding_window == 1024


# ---- the command line ------------------------------------------------------------------------------

def test_cli_json_has_total_and_parts(cli):
    r = cli("estimate", "--model", "Qwen2.5-0.5B", "--method", "lora", "--dtype", "bf16", "--batch-size", "4",
            "--seq-len", "512", "--lora-rank", "16", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out)[:2] == ["total_gib", "parts"] and list(out["parts"]) == list(vram.PARTS)
    assert out["total_gib"] == pytest.approx(sum(out["parts"].values()), abs=2e-3)


def test_cli_takes_a_bare_config_json_a_config_file_and_prints_advice(cli, tmp_path):
    bare = tmp_path / "config.json"
    bare.write_text(json.dumps(find_card("Llama-3.1-8B").config))
    r = cli("estimate", "--model", bare, "--method", "qlora", "--batch-size", "2", "--seq-len", "1024",
            "--grad-ckpt", "--optim", "paged_adamw8bit", "--json")
    assert r.returncode == 0, r.stderr
    by_card = cli("estimate", "--model", "Llama-3.1-8B", "--method", "qlora", "--batch-size", "2", "--seq-len", "1024",
                  "--grad-ckpt", "--optim", "paged_adamw8bit", "--json")
    assert json.loads(r.stdout)["total_gib"] == json.loads(by_card.stdout)["total_gib"]
    assert json.loads(r.stdout)["warnings"] == []
    run = tmp_path / "run.yaml"
    run.write_text("model: Llama-3.1-8B\nmethod: lora\ndata:\n  max_seq_len: 2048\ntrain:\n  batch_size: 8\n")
    r = cli("estimate", "--config", run, "--gpu-gib", "24", "train.grad_accum=2")
    assert r.returncode == 0, r.stderr
    assert "does not fit" in r.stdout and "train.batch_size=" in r.stdout and "allocator slack" in r.stdout


def test_a_config_json_that_leaves_out_the_sizes_is_estimated_with_a_warning(cli, tmp_path):
    """transformers' defaults fill what a config.json leaves out (hub configs leave out defaults), so
    a config holding only model_type is estimated as LlamaConfig's 7B; the user is told."""
    partial = tmp_path / "config.json"
    partial.write_text(json.dumps({"model_type": "llama", "hidden_size": 576}))
    r = cli("estimate", "--model", partial, "--method", "lora")
    assert r.returncode == 0, r.stderr
    assert (f"warning: {partial} gives no intermediate_size, num_hidden_layers: "
            f"the defaults of transformers' llama config are counted") in r.stdout
    gemma = {k: v for k, v in find_card("Qwen2.5-0.5B").config.items() if k not in ("num_attention_heads", "vocab_size")}
    partial.write_text(json.dumps(gemma))            # as Gemma 3's text_config leaves out heads and vocabulary
    assert json.loads(cli("estimate", "--model", partial, "--json").stdout)["warnings"] == []


def test_cli_flags_alone_estimate_the_plain_step_and_a_config_the_runs_own_settings(cli, tmp_path):
    parts = lambda *args: json.loads(cli("estimate", "--model", "Qwen2.5-0.5B", "--json", *args).stdout)["parts"]
    plain = parts()
    assert plain == parts("--no-fused-loss", "--no-padding-free", "--lora-dropout", "0")
    assert plain["logits"] > 20 * parts("--fused-loss")["logits"]
    run = tmp_path / "run.yaml"
    run.write_text("model: Qwen2.5-0.5B\n")                 # a run's defaults: fused loss, padding-free, dropout
    assert parts("--config", run) == parts("--fused-loss", "--padding-free", "--lora-dropout", "0.05")
    assert parts("--liger-kernels")["activations"] < plain["activations"]


def test_cli_bad_input_exits_2_with_a_reason(cli, tmp_path):
    r = cli("estimate", "--model", "no-such-model", "--json")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = cli("estimate", "--model", "Llama-3.1-8B", "--batch-size", "0")
    assert r.returncode == 2 and "train.batch_size" in r.stderr
    r = cli("estimate", "--model", "Llama-3.1-8B", "--gpu-gib", "-3")
    assert r.returncode == 2 and "gpu_gib" in r.stderr
    r = cli("estimate", "--config", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "missing.yaml" in r.stderr


# ---- the reference measurements (a regression guard: the estimate is derived, not fitted) -------------

@pytest.mark.skipif(not CALIBRATION.exists(), reason="reference measurements not present")
def test_estimate_stays_close_to_the_h100_reference_runs():
    from benchmarks.vram_accuracy import compare_reference

    results = compare_reference(CALIBRATION.parent)
    assert len(results) >= 15
    errors = [abs(r["error_device"]) for r in results]
    assert statistics.median(errors) <= 0.08
    assert max(errors) <= 0.15


def test_a_qlora_run_that_does_not_fit_is_offered_half_precision_unquantized_weights():
    arch = load_arch("Qwen2.5-0.5B")
    run_cfg = cfg(model="Qwen2.5-0.5B", method="qlora", data={"max_seq_len": 2048}, train={"batch_size": 4})
    half = run_cfg.with_overrides(["quant.upcast_unquantized=false"])
    gpu = (vram.estimate(half, arch=arch).total_gib + vram.estimate(run_cfg, arch=arch).total_gib) / 2
    offered = {tuple(x.overrides): x for x in vram.suggestions(run_cfg, gpu, arch=arch)}
    assert offered[("quant.upcast_unquantized=false",)].estimate.total_gib <= gpu
    assert not any("quant.upcast_unquantized=false" in o for x in vram.suggestions(half, 1.0, arch=arch)
                   for o in x.overrides)
