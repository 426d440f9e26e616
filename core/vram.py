"""GPU memory of a training run, before it starts: the peak per GPU, split into its parts.

Every term is counted from what the stack allocates for the run as our trainer builds it
(core/train.py): the dtype table of choose_precision on a bf16 GPU, peft's fp32 adapters, the
4-bit weights and fp32 rest after prepare_model_for_kbit_training, what autograd keeps for the
backward pass of each layer (SDPA flash or efficient attention, autocast copies, LoRA inputs and
dropout masks), the causal-LM loss's fp32 logits, the optimizer's states. No weights are needed,
only the architecture numbers (core/arch.py).

The step is sized as transformers' Trainer runs it: `compute_loss` returns the loss alone, so the
output and its logits are freed before the backward pass. The plain step of the reference
measurements (`out = model(...)`, then `out.loss.backward()`) keeps the output through the backward
pass and into the next forward; `estimate(plain=True)` sizes that one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

from core.arch import Arch, load_arch
from core.config import RunConfig
from core.errors import ConfigError

GIB = 1024 ** 3
PARTS = ("weights", "adapters", "gradients", "optimizer", "activations", "logits", "cuda_context",
         "allocator_slack")
CUDA_CONTEXT_GIB = 0.75       # driver context + kernels on an H100 with PyTorch 2.11, as measured there
CUBLAS_WORKSPACES = 2 * 32 * 1024 ** 2   # cuBLAS and cuBLASLt workspaces (32 MiB each on Hopper), allocator-held
TIGHT_MARGIN = 0.10           # "tight": the estimate is within 10% of the card's memory
QUANT_BLOCK = 64              # bitsandbytes 4-bit block size
OPTIM8_BLOCK = 256            # bitsandbytes 8-bit optimizer state block size
OPTIM8_MIN_SIZE = 4096        # smaller tensors keep 32-bit states in bitsandbytes' 8-bit optimizers
INPUT_BYTES = 24              # input ids, labels and shifted labels (int64) per token
FUSED_CHUNK = 1 << 22         # logits per chunk of core.fused_loss
# Architectures whose norms and MLP Liger's kernels replace (liger-kernel 0.8.5's MODEL_TYPE_TO_APPLY_LIGER_FN,
# the dense text models among them); for others transformers applies nothing and PyTorch's kernels run.
LIGER_MODEL_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3",
                     "phi3", "olmo2", "olmo3", "smollm3", "granite", "glm4", "exaone4", "nemotron"}


@dataclass(frozen=True)
class Setup:
    """How our trainer builds this run on a GPU with bf16 (choose_precision, build_model)."""
    method: str
    weight: int          # bytes per base weight (for QLoRA the unquantized ones: 4 once upcast)
    autocast: bool       # bf16/fp16 autocast around the forward
    quantized: bool
    double_quant: bool
    targets: tuple       # LoRA target module names; ("all-linear",) for all
    rank: int
    dora: bool
    dropout: bool
    ckpt: bool
    tokens: int          # tokens per micro-batch on one GPU
    row: int             # tokens per attention row (the whole batch when it is flattened)
    flat: bool           # packing / padding-free: one row with a block-diagonal attention mask
    fused_loss: bool
    optimizer: str
    grad_accum: int
    trainable_layers: int
    embedding_states_32bit: bool = False    # transformers' Trainer keeps 8-bit optimizers' embeddings in 32 bits
    output_held: bool = False                # the plain step keeps the model's output (its logits) through backward
    liger: bool = False                      # Liger's RMSNorm and SwiGLU/GeGLU kernels

    @property
    def adapters(self) -> bool:
        return self.method in ("lora", "qlora")

    @property
    def half(self) -> int:
        """Bytes of what linear layers return: the autocast dtype, else the weights'."""
        return 2 if self.autocast else self.weight

    @property
    def residual(self) -> int:
        """Bytes of the residual stream: the dtype of the embeddings and norms."""
        return self.weight


def setup_for(cfg: RunConfig) -> Setup:
    t, d = cfg.train, cfg.data
    if cfg.method in ("full", "freeze"):
        weight, autocast = (2, False) if t.dtype == "bf16" else (4, True)
    else:
        weight, autocast = (4, False) if t.dtype == "fp32" else (2, True)
    if cfg.upcasts_unquantized():
        weight = 4                      # prepare_model_for_kbit_training: every non-4-bit weight in fp32
    targets = tuple(x.strip() for x in cfg.lora.target_modules.split(",") if x.strip())
    flat = d.packing or (t.padding_free and t.batch_size > 1)      # one sample per row: no block mask
    return Setup(method=cfg.method, weight=weight, autocast=autocast, quantized=cfg.method == "qlora",
                 double_quant=cfg.quant.double_quant, targets=targets, rank=cfg.lora.rank, dora=cfg.lora.dora,
                 dropout=cfg.lora.dropout > 0, ckpt=t.gradient_checkpointing, tokens=t.batch_size * d.max_seq_len,
                 row=t.batch_size * d.max_seq_len if flat else d.max_seq_len, flat=flat,
                 fused_loss=t.fused_loss, optimizer=t.optimizer, grad_accum=t.grad_accum,
                 trainable_layers=cfg.freeze.trainable_layers, liger=t.liger_kernels)


# ---- parameters ---------------------------------------------------------------------------------

def lora_modules(arch: Arch, s: Setup) -> list[tuple[str, int, int, int]]:
    """(name, in, out, count) of every linear layer that gets an adapter."""
    layer = [(name, a, b, arch.num_layers) for name, a, b in arch.layer_linears()]
    vision = arch.vision.linears() if arch.vision else []
    if s.targets == ("all-linear",):
        return layer + vision
    extra = {"lm_head": (arch.hidden_size, arch.vocab_size, 1), "embed_tokens": (arch.vocab_size, arch.hidden_size, 1)}
    chosen = [m for m in layer + vision if m[0] in s.targets]
    chosen += [(name, *extra[name]) for name in s.targets if name in extra]
    if not chosen:
        raise ConfigError(f"none of {', '.join(s.targets)} is a linear layer of this model; its layers are "
                          f"{', '.join(sorted(arch.module_names()))}", field="lora.target_modules")
    return chosen


def adapter_tensors(arch: Arch, s: Setup) -> list[tuple[int, int]]:
    """(numel, count) of the adapter weights: A and B of each module, and DoRA's magnitudes."""
    out = []
    for _, a, b, n in lora_modules(arch, s):
        out += [(s.rank * a, n), (s.rank * b, n)] + ([(b, n)] if s.dora else [])
    return out


def model_tensors(arch: Arch, layers: int | None = None) -> list[tuple[int, int]]:
    """(numel, count) of the model's own weights; `layers` limits them to the last decoder layers."""
    n = arch.num_layers if layers is None else min(layers, arch.num_layers)
    per_layer = [(a * b, n) for _, a, b in arch.layer_linears()] + [(m, n) for m in arch.layer_small_tensors()]
    if layers is not None:
        return per_layer
    head = [(arch.head_params(), 1)] if arch.head_params() else []
    return per_layer + [(arch.embed_params(), 1), (arch.hidden_size, 1), (arch.vision_params(), 1)] + head


def trainable_tensors(arch: Arch, s: Setup) -> list[tuple[int, int]]:
    if s.adapters:
        return adapter_tensors(arch, s)
    return model_tensors(arch, s.trainable_layers if s.method == "freeze" else None)


def count(tensors) -> int:
    return sum(numel * n for numel, n in tensors)


def weights_bytes(arch: Arch, s: Setup) -> float:
    """Base weights; for QLoRA the 4-bit linear layers with their block constants, the rest fp32 once
    upcast, else half."""
    if not s.quantized:
        return arch.total_params() * s.weight
    quantized = arch.num_layers * arch.layer_linear_params()
    tensors = arch.num_layers * len(arch.layer_linears())
    if arch.vision:
        quantized += sum(a * b * n for _, a, b, n in arch.vision.linears())
        tensors += sum(n for *_, n in arch.vision.linears())
    blocks = quantized / QUANT_BLOCK
    # double quantization: a uint8 absmax per block, an fp32 absmax per 256 of those, a 256-entry code
    constants = blocks + 4 * blocks / 256 + 1024 * tensors if s.double_quant else 4 * blocks
    return quantized / 2 + constants + (arch.total_params() - quantized) * s.weight


def optimizer_bytes(tensors, s: Setup, param_bytes: int) -> tuple[float, float]:
    """(states, temporary at the step). torch AdamW keeps two states in the parameters' dtype and,
    unfused, one more for sqrt(v); bitsandbytes' 8-bit AdamW keeps two uint8 states with an fp32
    constant per 256 values (32-bit states for tensors under 4096 values), updated in place."""
    if s.optimizer == "adamw":
        states = 2 * param_bytes * count(tensors)
        return states, 0.0 if _fused_adamw() else states / 2
    big = [(m, n) for m, n in tensors if m >= OPTIM8_MIN_SIZE]
    small = [(m, n) for m, n in tensors if m < OPTIM8_MIN_SIZE]
    return 2 * count(big) * (1 + 4 / OPTIM8_BLOCK) + 8 * count(small), 0.0


def _fused_adamw() -> bool:
    """Whether our trainer asks for the fused AdamW kernel (no temporary) or the default one."""
    from core.train import OPTIMIZERS

    return OPTIMIZERS["adamw"] == "adamw_torch_fused"


# ---- what one decoder layer keeps for the backward pass -------------------------------------------

@dataclass
class _Layer:
    """Walks one decoder layer as the modelling code runs it, adding up the bytes autograd saves
    per token. `full`: the layer's own weights train (full, freeze); else only adapters do."""
    arch: Arch
    s: Setup
    full: bool
    saved: float = 0.0              # bytes per token

    def lora(self, name: str) -> bool:
        return self.s.adapters and (self.s.targets == ("all-linear",) or name in self.s.targets)

    def norm(self, x: int, gemma: bool = False) -> int:
        """RMSNorm of an x-byte input: keeps its fp32 copy, and the normalised input when its weight
        trains (Liger's kernel: the input itself and one fp32 scale per row). Returns the output's bytes."""
        h, w = self.arch.hidden_size, self.s.weight
        if self.s.liger:
            self.saved += x * h + 4
        else:
            self.saved += 4 * h + (((4 if gemma else x) * h) if self.full else 0)
        return x if gemma else max(w, x)

    def head_norm(self, x: int, features: int) -> int:
        """Qwen 3 / Gemma 3 norm of the query or key heads."""
        gemma = self.arch.gemma_norms
        if self.s.liger:
            self.saved += x * features + 4 * (features // self.arch.head_dim)
        else:
            self.saved += 4 * features + (((4 if gemma else x) * features) if self.full else 0)
        return x if gemma else max(self.s.weight, x)

    def projections(self, names, x: int, features: int, kept: bool = False) -> None:
        """Linear layers sharing one x-byte input of `features`: what each keeps of its input.
        Autocast gives every consumer its own half copy; without it they share x itself.
        `kept`: x is saved by someone else already."""
        s, shared = self.s, False
        for name in names:
            if self.full:
                if s.autocast and x != 2:
                    self.saved += 2 * features
                else:
                    shared = True
            if self.lora(name):
                if s.dropout:                       # the dropout mask, and its output (or its half copy)
                    self.saved += features + (2 if s.autocast else 4) * features
                elif s.autocast:                    # x cast to the fp32 adapter, then autocast to half
                    self.saved += 2 * features
                else:
                    shared = True
                self.saved += s.rank * (2 if s.autocast else 4)
        if shared and not kept:
            self.saved += x * features

    def out(self, name: str, x: int) -> int:
        """Bytes of a projection's output: 4-bit layers return their input's dtype."""
        base = x if self.s.quantized else self.s.half
        return max(base, 2 if self.s.autocast else 4) if self.lora(name) else base

    def dora(self, names, x: int) -> None:
        """DoRA scales the base and the adapter outputs by the magnitude: both are kept."""
        if not self.s.dora:
            return
        for name, _, out_features in self.arch.layer_linears():
            if name in names and self.lora(name):
                self.saved += (self.out(name, x) + 2) * out_features


def layer_saved(arch: Arch, s: Setup, *, full: bool, sliding: bool = False) -> float:
    """Bytes one decoder layer keeps for backward over the micro-batch (one GPU)."""
    L = _Layer(arch, s, full)
    h, i = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    res = s.residual
    fused = arch.fused_projections
    qkv = ("qkv_proj",) if fused else ("q_proj", "k_proj", "v_proj")
    up = ("gate_up_proj",) if fused else ("gate_proj", "up_proj")

    x = L.norm(res, arch.gemma_norms)
    L.projections(qkv, x, h)
    L.dora(qkv, x)
    qb = L.out(qkv[0], x)
    if arch.qk_norm:
        qb = max(L.head_norm(qb, q), L.head_norm(qb, kv))
    rope = max(qb, res)                       # cos and sin carry the residual stream's dtype
    sb = 2 if s.autocast else rope
    path = attention_path(arch, s, sb, sliding)
    k_width = q if path in ("efficient-mask", "math") else kv
    v_saved = sb * k_width
    if path == "flash" and fused and sb == qb:     # v is a view of the fused qkv output
        v_saved = qb * (q + 2 * kv)
    L.saved += sb * q + sb * k_width + v_saved + sb * q + 4 * arch.num_heads
    if path == "math":
        L.saved += arch.num_heads * s.row * sb              # the attention probabilities
    if path == "efficient-mask":
        L.saved += s.row * sb                               # the mask, converted to the query dtype
    L.projections(("o_proj",), sb, q, kept=True)
    L.dora(("o_proj",), sb)
    ob = L.out("o_proj", sb)
    if arch.gemma_norms:
        L.norm(ob, gemma=True)
    x = L.norm(res, arch.gemma_norms)
    L.projections(up, x, h)
    L.dora(up, x)
    gb = L.out(up[0], x)
    L.saved += (2 if s.liger else 3) * gb * i   # gate (for the activation), activation output, up; Liger: gate, up
    L.projections(("down_proj",), gb, i)
    L.dora(("down_proj",), gb)
    if arch.gemma_norms:
        L.norm(L.out("down_proj", gb), gemma=True)
    copies = _autocast_copies(arch, s, full)
    return L.saved * s.tokens + copies


def _autocast_copies(arch: Arch, s: Setup, full: bool) -> float:
    """Autocast keeps a half copy of each trainable fp32 weight (cached while the forward runs,
    saved by the matmul): the adapters' for LoRA, the layer's own weights for fp32 full tuning."""
    if not s.autocast:
        return 0.0
    if s.adapters:
        layer = _Layer(arch, s, full=False)
        return 2 * sum(s.rank * (a + b) for name, a, b in arch.layer_linears() if layer.lora(name))
    return 2 * arch.layer_linear_params() if full and s.weight == 4 else 0.0


def attention_path(arch: Arch, s: Setup, sb: int, sliding: bool = False) -> str:
    """Which SDPA kernel runs, as PyTorch picks it for what transformers passes: a mask (packed
    rows, or a sliding window shorter than the row) rules out flash and makes transformers repeat
    the key/value heads; fp32 rules out flash, and grouped heads then rule out the efficient kernel."""
    masked = s.flat or (sliding and arch.sliding_window is not None and s.row >= arch.sliding_window)
    if masked:
        return "efficient-mask"
    if sb == 2 and arch.head_dim <= 256:
        return "flash"
    return "efficient" if arch.num_kv_heads == arch.num_heads else "math"


def layer_working_set(arch: Arch, s: Setup) -> float:
    """What one layer's backward adds while it runs: the gradients of its MLP activations and of the
    residual stream, and for QLoRA the dequantized copy of the largest weight."""
    gb = s.residual if s.quantized else s.half      # 4-bit layers return their input's dtype
    mlp = 1 if s.liger else 3                       # Liger's backward writes the two gradients over its inputs
    per_token = mlp * gb * arch.intermediate_size + 3 * s.residual * arch.hidden_size
    dequant = 2 * max(a * b for _, a, b in arch.layer_linears()) if s.quantized else 0
    return per_token * s.tokens + dequant


def activations(arch: Arch, s: Setup) -> dict:
    """Saved activations at the end of the forward pass, the extra a layer's recompute or backward
    needs, and the autocast cache that lives only during the forward."""
    T, h = s.tokens, arch.hidden_size
    full_layers = not s.adapters
    n_train = min(s.trainable_layers, arch.num_layers) if s.method == "freeze" else arch.num_layers
    n_slide = arch.sliding_layers
    per = {sl: layer_saved(arch, s, full=full_layers, sliding=sl) for sl in (False, True)}
    biggest = max(per.values())
    if s.ckpt:
        saved = arch.num_layers * s.residual * h * T          # each layer's input, for the recompute
        recompute = biggest
    else:
        share = n_train / arch.num_layers
        saved = share * ((arch.num_layers - n_slide) * per[False] + n_slide * per[True])
        recompute = 0.0
    saved += tail_saved(arch, s) + INPUT_BYTES * T + 2 * T * arch.head_dim * s.residual
    if s.flat or (n_slide and arch.sliding_window and s.row >= arch.sliding_window):
        saved += s.row * s.row * (T // s.row)                  # the boolean mask transformers builds
    cache = 0.0
    if s.ckpt and s.autocast and not s.adapters and s.weight == 4:
        cache = 2 * n_train * arch.layer_linear_params()     # the trained layers' half weights, till forward ends
    return {"saved": saved, "recompute": recompute, "working": layer_working_set(arch, s), "cache": cache,
            "one_layer": biggest}


def tail_saved(arch: Arch, s: Setup) -> float:
    """The final norm and the output head: its input when it trains, its half weight copy when
    autocast casts an fp32 head (QLoRA after prepare, fp32 full tuning)."""
    T, h = s.tokens, arch.hidden_size
    full = s.method == "full"
    if s.liger:
        saved = (s.residual * h + 4) * T
    else:
        saved = (4 * h + (s.residual * h if full else 0)) * T
    nb = max(s.weight, s.residual)
    head_lora = s.adapters and "lm_head" in s.targets
    if full or head_lora:
        saved += (2 if s.autocast and nb != 2 else nb) * h * T
    if s.autocast and s.weight == 4 and not fused_loss_applies(arch, s):
        saved += 2 * arch.vocab_size * h
    return saved


# ---- the loss ----------------------------------------------------------------------------------

def fused_loss_applies(arch: Arch, s: Setup) -> bool:
    """core.fused_loss replaces the stock loss for plain-Linear heads of the architectures it knows."""
    if not s.fused_loss or (s.adapters and "lm_head" in s.targets):
        return False
    from core.fused_loss import SUPPORTED_MODEL_TYPES

    return arch.model_type in SUPPORTED_MODEL_TYPES


def loss_terms(arch: Arch, s: Setup) -> dict:
    """Bytes the loss needs: at the end of the forward, at the start of the backward, what the
    plain step still holds afterwards (the output's logits), and the allocator blocks it strands."""
    if fused_loss_applies(arch, s):
        return _fused_loss_terms(arch, s)
    lb = s.half                             # the head's output dtype
    blv = s.tokens * arch.vocab_size
    upcast = 4 if lb != 4 else 0            # ForCausalLMLoss: logits.float()
    softcap = lb if arch.final_logit_softcapping else 0
    held = lb if s.output_held else 0       # the plain step's output, alive until the next one replaces it
    # forward: the previous step's output (plain step) + logits + fp32 copy + log_softmax output;
    # backward: held logits (plain step) + log_softmax output + its gradient + the gradient of its input
    forward = (held + lb + upcast + 4 + softcap) * blv
    backward = (held + 3 * 4 + softcap) * blv
    # The log_softmax gradient needs a block as large as the fp32 logits. The blocks free at that
    # moment are half-size ones, the previous step's logits and this step's (plain step) or this step's
    # alone, freed with the output (Trainer); none can serve it, so the allocator maps a new one.
    stranded = (held + lb) * blv if lb == 2 else 0.0
    return {"forward": forward, "backward": backward, "held": held * blv, "stranded": stranded}


def _fused_loss_terms(arch: Arch, s: Setup) -> dict:
    """core.fused_loss (chunked path): the labelled hidden states and their gradient, one chunk's
    logits at a time, and for a trained head its fp32 gradient."""
    T, V, h = s.tokens, arch.vocab_size, arch.hidden_size
    hb = max(s.weight, s.residual)
    kept = hb * h * T + (2 * h * T if s.autocast and hb != 2 else 0)
    head_copy = 2 * V * h if s.autocast and s.weight == 4 else 0
    grad_h = (2 if s.autocast else hb) * h * T
    head_grad = 4 * V * h if s.method == "full" else 0
    chunk = FUSED_CHUNK * (2 + 4 + 2) + (6 * V * h if head_grad else 0)
    forward = kept + head_copy + grad_h + head_grad + chunk
    backward = grad_h + head_grad + 2 * h * T + (head_grad + s.weight * V * h if head_grad else 0)
    return {"forward": forward, "backward": backward, "held": 0.0, "stranded": 0.0}


# ---- the peak --------------------------------------------------------------------------------------

@dataclass
class Estimate:
    """The peak memory of one GPU during a step, by part (GiB), and where in the step it falls."""
    parts: dict[str, float]
    total_gib: float
    peak_at: str
    strategy: str
    gpus: int
    trainable_params: int
    total_params: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)     # what makes the estimate itself doubtful

    def verdict(self, gpu_gib: float) -> str:
        """One of "fits" (more than 10% of the card to spare), "tight" (within 10% of its memory:
        fragmentation or another process can tip it over) or "does not fit"."""
        if self.total_gib > gpu_gib:
            return "does not fit"
        return "tight" if self.total_gib > (1 - TIGHT_MARGIN) * gpu_gib else "fits"

    def to_dict(self) -> dict:
        return {"total_gib": self.total_gib, "parts": dict(self.parts), "peak_at": self.peak_at,
                "strategy": self.strategy, "gpus": self.gpus, "trainable_params": self.trainable_params,
                "total_params": self.total_params, "notes": list(self.notes),
                "warnings": list(self.warnings)}


def strategy_for(method: str, gpus: int) -> str:
    """What the launcher runs: DDP for adapters, FSDP full sharding for full and freeze tuning."""
    if gpus <= 1:
        return "single"
    return "ddp" if method in ("lora", "qlora") else "fsdp"


def estimate(cfg: RunConfig, *, gpus: int = 1, arch: Arch | None = None, plain: bool = False) -> Estimate:
    """Peak GPU memory per GPU of a training run with this config, on `gpus` GPUs with bf16.
    plain: the step of the reference measurements, not transformers' Trainer's: the optimizer built
    directly (the Trainer keeps 8-bit optimizers' embedding states in 32 bits) and the output held
    through the backward pass (the Trainer frees it first)."""
    if gpus < 1:
        raise ConfigError(f"the number of GPUs must be at least 1, got {gpus}", field="gpus")
    arch = arch or load_arch(cfg.model, cfg.trust_remote_code)
    s = setup_for(cfg)
    if s.liger and arch.model_type not in LIGER_MODEL_TYPES:
        s = replace(s, liger=False)
    if plain:
        s = replace(s, output_held=True)
    elif s.method == "full" and s.optimizer != "adamw":
        s = replace(s, embedding_states_32bit=True)
    strategy = strategy_for(cfg.method, gpus)
    trainable = trainable_tensors(arch, s)
    p_bytes = 4 if s.adapters else s.weight
    mem = _persistent(arch, s, trainable, p_bytes, strategy, gpus)
    act, loss = activations(arch, s), loss_terms(arch, s)
    event, parts = _peak_event(s, mem, act, loss)
    parts["cuda_context"] = CUDA_CONTEXT_GIB * GIB + CUBLAS_WORKSPACES
    parts = {k: round(parts[k] / GIB, 3) for k in PARTS}
    return Estimate(parts=parts, total_gib=round(sum(parts.values()), 3), peak_at=event, strategy=strategy,
                    gpus=gpus, trainable_params=count(trainable), total_params=arch.total_params(),
                    notes=_notes(arch, s, cfg.train.liger_kernels), warnings=_warnings(arch))


def _persistent(arch: Arch, s: Setup, trainable, p_bytes: int, strategy: str, gpus: int) -> dict:
    """Weights, adapters, gradients and optimizer states on one GPU, with the strategy's copies."""
    weights = weights_bytes(arch, s)
    adapters = 4 * count(trainable) if s.adapters else 0.0
    grads = p_bytes * count(trainable)
    states, step_tmp = optimizer_bytes(trainable, s, p_bytes)
    if s.embedding_states_32bit:             # two fp32 states instead of two uint8 ones and their constants
        states += (8 - 2 * (1 + 4 / OPTIM8_BLOCK)) * arch.embed_params()
    bucket = 0.0
    if strategy == "ddp":
        bucket = grads                       # DDP's flat buckets hold a second copy of the gradients
    elif strategy == "fsdp":
        layer = arch.layer_params() * s.weight
        root = (arch.embed_params() + arch.head_params() + arch.hidden_size) * s.weight
        weights = weights / gpus + 2 * layer + root      # own shard + the layers gathered around the one running
        grads, states, step_tmp = grads / gpus, states / gpus, step_tmp / gpus
        bucket = layer                       # a layer's unsharded gradient before its reduce-scatter
    head_grad = 0.0                          # the output head's gradient, the first a full backward makes
    if s.method == "full":
        head_grad = arch.vocab_size * arch.hidden_size * p_bytes / (gpus if strategy == "fsdp" else 1)
    return {"weights": weights, "adapters": adapters, "grads": grads, "states": states, "step_tmp": step_tmp,
            "bucket": bucket, "head_grad": head_grad}


def _peak_event(s: Setup, mem: dict, act: dict, loss: dict) -> tuple[str, dict]:
    """The largest of the moments a step goes through: what is allocated at it, plus the cached
    blocks the allocator cannot hand to it (allocator_slack)."""
    kept_grads = mem["grads"] if s.grad_accum > 1 else 0.0     # accumulation keeps them between micro-batches
    base = {"weights": mem["weights"], "adapters": mem["adapters"], "optimizer": mem["states"]}
    g = mem["bucket"]
    stranded = fragmentation(s, mem, act) + loss["stranded"]
    events = {
        "loss backward": {"gradients": g + kept_grads, "activations": act["saved"], "logits": loss["backward"],
                          "allocator_slack": stranded},
        "forward": {"gradients": g + kept_grads, "activations": act["saved"] + act["cache"],
                    "logits": loss["forward"], "allocator_slack": stranded - act["cache"]},
        "last layer backward": {"gradients": g + max(kept_grads, mem["head_grad"]),
                                "activations": act["saved"] + act["recompute"] + act["working"],
                                "logits": loss["held"], "allocator_slack": stranded},
        "first layer backward": {"gradients": g + mem["grads"],
                                 "activations": act["one_layer"] + act["working"],
                                 "logits": loss["held"], "allocator_slack": act["one_layer"]},
        "optimizer step": {"gradients": g + mem["grads"], "activations": 0.0, "logits": loss["held"],
                           "optimizer": mem["states"] + mem["step_tmp"], "allocator_slack": act["one_layer"]},
    }
    name = max(events, key=lambda k: sum({**base, **events[k]}.values()))
    return name, {**base, **events[name]}


def fragmentation(s: Setup, mem: dict, act: dict) -> float:
    """Cached blocks the loss cannot use at its peak: those one layer's forward freed, the autocast
    cache freed when the forward ended, and about half the gradient memory zero_grad freed (the rest
    is taken again by the next forward's activations; seen on an H100, full tuning)."""
    grads = 0.0 if s.adapters or s.grad_accum > 1 else mem["grads"] / 2
    return act["one_layer"] + act["cache"] + grads


def _warnings(arch: Arch) -> list[str]:
    if not arch.defaulted:
        return []
    return [f"{arch.source or arch.name} gives no {', '.join(arch.defaulted)}: the defaults of transformers' "
            f"{arch.model_type} config are counted, so the estimate may be far off"]


def _notes(arch: Arch, s: Setup, liger_asked: bool) -> list[str]:
    notes = []
    if s.liger:
        notes.append("Liger's kernels are counted: they run on a CUDA GPU with liger-kernel installed, "
                     "else PyTorch's kernels keep more activations")
    elif liger_asked:
        notes.append(f"Liger's kernels do not cover {arch.model_type or 'this model'}: PyTorch's kernels are counted")
    if s.fused_loss and not fused_loss_applies(arch, s):
        notes.append(f"the fused loss does not apply to {arch.model_type or 'this model'}: the stock loss is counted")
    if s.optimizer == "paged_adamw8bit":
        notes.append("paged optimizer states can move to CPU memory when the GPU runs short")
    if s.flat:
        notes.append("flattened batches attend through a block mask: SDPA's efficient kernel keeps it per layer")
    return notes


# ---- fit advice ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Suggestion:
    description: str
    overrides: list[str]            # RunConfig overrides, dotted keys: "train.batch_size=2"
    estimate: Estimate


def suggestions(cfg: RunConfig, gpu_gib: float, gpus: int = 1, arch: Arch | None = None,
                plain: bool = False) -> list[Suggestion]:
    """The cheapest changes that bring the run under `gpu_gib` per GPU, cheapest first: those that
    leave the result alone (fused loss, 8-bit optimizer, checkpointing, smaller micro-batches with the
    same effective batch), then QLoRA (or LoRA instead of full tuning), then a shorter max length.
    Beside them, one suggestion combines the changes that leave the result alone, or, when nothing
    else fits, the cheapest of all. Empty when the run already fits, or when nothing here makes it fit."""
    arch = arch or load_arch(cfg.model, cfg.trust_remote_code)
    size = functools.partial(estimate, gpus=gpus, arch=arch, plain=plain)
    if size(cfg).total_gib <= gpu_gib:
        return []
    fits = lambda c: size(c).total_gib <= gpu_gib
    changes = _changes(cfg, arch, gpus)
    singles = []
    for rank, change in enumerate(changes):
        picked = change(cfg, fits)
        if picked and fits(cfg.with_overrides(picked[1])):
            singles.append((rank, _suggest(cfg, *picked, size)))
    free = _combine(cfg, fits, changes[:FREE_CHANGES])
    combined = free if free or singles else _combine(cfg, fits, changes)
    if len(combined) > 1:
        overrides = [o for _, _, ov in combined for o in ov]
        rank = FREE_CHANGES - 0.5 if free else len(changes)
        singles.append((rank, _suggest(cfg, "; ".join(d for _, d, _ in combined), overrides, size)))
    found = sorted(singles, key=lambda pair: pair[0])
    return [suggestion for _, suggestion in found]


def _combine(cfg: RunConfig, fits, changes) -> list:
    """Cheapest changes stacked until the run fits; then the costlier ones that turn out unneeded are
    dropped, and searching changes (micro-batch, max length) re-pick their mildest value."""
    flat = lambda entries: [o for _, _, ov in entries for o in ov]
    chosen = []
    for change in changes:
        picked = change(cfg.with_overrides(flat(chosen)), fits)
        if picked:
            chosen.append((change, *picked))
            if fits(cfg.with_overrides(flat(chosen))):
                break
    else:
        return []
    for entry in reversed(list(chosen)):
        rest = [e for e in chosen if e is not entry]
        if rest and fits(cfg.with_overrides(flat(rest))):
            chosen = rest
    for i, (change, _, _) in enumerate(chosen):
        rest = flat(chosen[:i] + chosen[i + 1:])
        picked = change(cfg.with_overrides(rest), fits)
        if picked and fits(cfg.with_overrides(rest + picked[1])):
            chosen[i] = (change, *picked)
    return chosen


FREE_CHANGES = 4      # the first changes of _changes leave what the run learns alone


def _suggest(cfg: RunConfig, description: str, overrides: list[str], size) -> Suggestion:
    return Suggestion(description, overrides, size(cfg.with_overrides(overrides)))


def _changes(cfg: RunConfig, arch: Arch, gpus: int) -> list:
    """Each change looks at a config and returns (description, overrides), or None when it does
    not apply. Searching changes take the mildest value that fits (else the strongest). 8-bit
    optimizers are not offered where the run would use FSDP (core.distributed.check_optimizer)."""
    def fixed(applies, description, overrides):
        return lambda c, fits: (description, overrides) if applies(c) else None

    return [
        fixed(lambda c: not c.train.fused_loss and fused_loss_applies(arch, replace(setup_for(c), fused_loss=True)),
              "compute the loss in chunks (fused loss): the full logits are never held", ["train.fused_loss=true"]),
        fixed(lambda c: c.train.optimizer == "adamw" and strategy_for(c.method, gpus) != "fsdp",
              "8-bit AdamW: optimizer states in 8 bits",
              ["train.optimizer=adamw8bit"]),
        fixed(lambda c: not c.train.gradient_checkpointing,
              "gradient checkpointing: recompute activations in the backward pass (about 30% slower)",
              ["train.gradient_checkpointing=true"]),
        _micro_batch,
        fixed(lambda c: c.upcasts_unquantized(),
              "keep QLoRA's unquantized weights in half precision: a half-precision residual stream",
              ["quant.upcast_unquantized=false"]),
        fixed(lambda c: c.method == "lora", "QLoRA: the base model in 4 bits", ["method=qlora"]),
        fixed(lambda c: c.method in ("full", "freeze"),
              "LoRA adapters instead of training the model's own weights", ["method=lora"]),
        _max_length,
    ]


def _micro_batch(cfg: RunConfig, fits):
    """A smaller micro-batch with more accumulation: the effective batch stays the same."""
    b, accum = cfg.train.batch_size, cfg.train.grad_accum
    options = [n for n in range(b - 1, 0, -1) if b % n == 0]
    if not options:
        return None
    for n in options:
        overrides = [f"train.batch_size={n}", f"train.grad_accum={accum * b // n}"]
        if fits(cfg.with_overrides(overrides)) or n == options[-1]:
            return (f"micro-batch {n} with {accum * b // n} accumulation steps (same effective batch "
                    f"{b * accum})", overrides)


def _max_length(cfg: RunConfig, fits):
    """A shorter max length: halved until it fits, not below 256 tokens."""
    length, options = cfg.data.max_seq_len, []
    while length // 2 >= 256:
        length //= 2
        options.append(length)
    for n in options:
        if fits(cfg.with_overrides([f"data.max_seq_len={n}"])) or n == options[-1]:
            return (f"max length {n} tokens (longer samples are truncated)", [f"data.max_seq_len={n}"])


# ---- GPUs --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gb: int           # as sold
    gib: float               # what the card reports to CUDA: what the verdict compares with


COMMON_GPUS = (
    Gpu("8 GB: RTX 4060, RTX 3070, RTX 2080", 8, 7.99),
    Gpu("12 GB: RTX 4070, RTX 3060 12GB, RTX 3080 Ti", 12, 11.99),
    Gpu("16 GB: RTX 4080, RTX 4060 Ti 16GB, T4, V100 16GB", 16, 15.99),
    Gpu("24 GB: RTX 4090, RTX 3090, A10, L4, A5000", 24, 23.99),
    Gpu("40 GB: A100 40GB", 40, 39.59),
    Gpu("48 GB: RTX 6000 Ada, A6000, L40S", 48, 47.99),
    Gpu("80 GB: H100 80GB, A100 80GB", 80, 79.19),
    Gpu("141 GB: H200", 141, 139.8),
)


def detected_gpus() -> list[Gpu]:
    """The CUDA devices of this machine (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gib = props.total_memory / GIB
        found.append(Gpu(f"GPU {i}: {props.name}", round(gib), round(gib, 2)))
    return found


# ---- command line --------------------------------------------------------------------------------

# Flags without a config file describe the plain training step the reference measurements ran
# (../shared/calibration): the stock loss, padded batches, LoRA without dropout, the optimizer built
# directly (estimate(plain=True)). A run's own settings come with its config (--config) or their
# flags; the Train tab and the worker estimate the run as our Trainer runs it.
PLAIN_STEP = {"lora": {"dropout": 0.0}, "train": {"fused_loss": False, "padding_free": False}}


def config_from_cli(config_file: str | None, overrides: list[str], flags: dict) -> RunConfig:
    """A RunConfig from a YAML file (else PLAIN_STEP), key=value overrides and flags (dotted keys;
    None for flags not given). A rank given without an alpha gets alpha = 2 x rank."""
    import copy
    from pathlib import Path

    from core.config import apply_override, parse_yaml_with_lines

    data, lines = copy.deepcopy(PLAIN_STEP), {}
    if config_file:
        try:
            text = Path(config_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the config file ({e.__class__.__name__})", file=config_file) from None
        data, lines = parse_yaml_with_lines(text, config_file)
    for item in overrides:
        lines.pop(apply_override(data, item), None)
    given = {k: v for k, v in flags.items() if v is not None}
    for key in given:
        lines.pop(key, None)
    if "lora.rank" in given and "lora.alpha" not in given:
        given["lora.alpha"] = 2 * given["lora.rank"]
    for key, value in given.items():
        *sections, name = key.split(".")
        target = data
        for part in sections:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[name] = value
    return RunConfig.from_dict(data, file=config_file, lines=lines)


def render_json(est: Estimate, gpu_gib: float | None = None, advice: list[Suggestion] = ()) -> str:
    import json

    out = est.to_dict()
    if gpu_gib:
        out["gpu_gib"] = gpu_gib
        out["verdict"] = est.verdict(gpu_gib)
        out["suggestions"] = [{"description": a.description, "overrides": a.overrides,
                               "total_gib": a.estimate.total_gib, "verdict": a.estimate.verdict(gpu_gib)}
                              for a in advice]
    return json.dumps(out, indent=2)


def render_table(cfg: RunConfig, est: Estimate, gpu_gib: float | None = None,
                 advice: list[Suggestion] = ()) -> str:
    s = setup_for(cfg)
    half = "fp16" if cfg.train.dtype == "fp16" else "bf16"
    precision = f"{'4-bit base, ' if s.quantized else ''}{half if s.weight == 2 else 'fp32'} weights" + \
        (f", {half} autocast" if s.autocast else "")
    gpus = f"{est.gpus} GPUs ({est.strategy.upper()}), per GPU" if est.gpus > 1 else "1 GPU"
    lines = [f"{cfg.model} · {cfg.method} · {precision} · batch {cfg.train.batch_size} x {cfg.data.max_seq_len} "
             f"tokens · {gpus}", ""]
    lines += [f"  {name.replace('_', ' '):<18}{value:9.2f} GiB" for name, value in est.parts.items()]
    lines += [f"  {'total':<18}{est.total_gib:9.2f} GiB   (peak: {est.peak_at})"]
    lines += [f"  note: {n}" for n in est.notes] + [f"  warning: {w}" for w in est.warnings]
    if gpu_gib:
        lines += ["", f"on a {gpu_gib:g} GiB GPU: {est.verdict(gpu_gib)}"]
        if advice:
            lines.append("changes that make it fit, cheapest first:")
            for i, a in enumerate(advice, 1):
                lines.append(f"  {i}. {a.description}: {a.estimate.total_gib:.2f} GiB")
                lines.append(f"     {' '.join(a.overrides)}")
        elif est.verdict(gpu_gib) == "does not fit":
            lines.append("no change listed here makes it fit: use more GPUs or a larger one")
    return "\n".join(lines)
