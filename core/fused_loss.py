"""The causal-LM loss straight from the last hidden states, without the full logits.

The stock forward multiplies every position by the output head (B*T*V logits), upcasts them
to fp32 and keeps them for the backward pass: for a 150k vocabulary that is the largest tensor
of a LoRA step. Here only the positions that carry a label go through the head, chunk by chunk,
and each chunk's gradient is taken right away (the logits are dropped before the next chunk).

Backends: Liger's fused linear cross entropy (Triton) when the run asks for Liger's kernels and
they can run (`train.liger_kernels`); otherwise a plain-torch autograd Function (any device). Transformers and peft have no such path
for arbitrary models, so `enable` swaps the forward of the model instance it is given; the
Trainer still calls the model and gets `loss`, and `num_items_in_batch` (gradient accumulation)
normalises it exactly as the stock loss does.
"""
from __future__ import annotations

import functools
import inspect
import logging
import types

import torch
import torch.nn.functional as F

from core.encode import IGNORE

log = logging.getLogger("workbench")

# Architectures whose forward is exactly: decoder -> lm_head -> ForCausalLMLoss (no logit scaling,
# soft-capping or auxiliary router loss), so skipping the logits changes nothing but memory.
SUPPORTED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo2", "smollm3", "starcoder2"}
CHUNK_ELEMENTS = 1 << 22     # logits held at once: 4M values (16 MiB in fp32) per chunk


def why_unsupported(model) -> str | None:
    """None when the fused loss can stand in for this model's stock loss, else the reason."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type '{model_type}' is not one of {', '.join(sorted(SUPPORTED_MODEL_TYPES))}"
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return f"the output head is a {type(head).__name__}, not a plain Linear (adapters or quantization on it)"
    return None


def enable(model, liger: bool = False) -> str | None:
    """Route the training loss of `model` (a peft model or a plain one) through the fused path;
    `liger`: Liger's kernel (the caller has checked that it can run).

    Returns the backend used ("liger" or "chunked"), or None when the model keeps its stock loss."""
    reason = why_unsupported(model)
    if reason:
        log.info("fused loss off: %s; using the standard loss", reason)
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.forward = types.MethodType(functools.partial(_fused_forward, liger=liger), base)
    return "liger" if liger else "chunked"


def _fused_forward(self, input_ids=None, labels=None, *, liger: bool = False, **kwargs):
    """The model's forward with labels: the loss without logits. Without labels: the stock forward."""
    if labels is None:
        return type(self).forward(self, input_ids=input_ids, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    kwargs.pop("logits_to_keep", None)
    outputs = self.get_decoder()(input_ids=input_ids, **kwargs)
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    loss = linear_cross_entropy(outputs.last_hidden_state, self.get_output_embeddings(), shift_labels,
                                num_items_in_batch, liger=liger)
    return CausalLMOutputWithPast(loss=loss, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def linear_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                         num_items_in_batch=None, *, chunk_elements: int = CHUNK_ELEMENTS,
                         liger: bool = False) -> torch.Tensor:
    """cross_entropy(head(hidden), targets) over the non-ignored targets, never holding all logits.

    Mean over the labelled positions, or their sum over `num_items_in_batch` when given (the
    Trainer's count across accumulated micro-batches), as transformers' ForCausalLMLoss does."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1).to(h.device)
    keep = t != IGNORE
    h, t = h[keep], t[keep]
    weight, bias = head.weight, head.bias
    device = h.device.type
    if torch.is_autocast_enabled(device):       # the head's matmul runs in the autocast dtype, as it would
        dtype = torch.get_autocast_dtype(device)
        h, weight = h.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        if liger and h.is_cuda:
            total = _liger_sum(h, weight, bias, t)
        else:
            rows = max(1, chunk_elements // weight.shape[0])
            total = ChunkedLinearCrossEntropy.apply(h, weight, bias, t, rows, torch.is_grad_enabled())
    denom = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    if torch.is_tensor(denom):
        denom = denom.to(total.device)
    return total / denom


def _liger_sum(h, weight, bias, t) -> torch.Tensor:
    """Liger's loss summed over the (already unignored) targets. Its first releases always take
    the mean, whatever `reduction` says, so the mean is asked for and scaled back to the sum."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    if h.shape[0] == 0:
        return h.sum().float()
    options = {"ignore_index": IGNORE}
    if weight.requires_grad and "accum_dtype" in inspect.signature(LigerFusedLinearCrossEntropyLoss).parameters:
        options["accum_dtype"] = torch.float32      # sum a trained head's gradient over chunks in fp32, not bf16
    out = LigerFusedLinearCrossEntropyLoss(**options)(weight, h, t, bias)
    if isinstance(out, tuple):              # versions that can also return a z-loss
        out = out[0]
    return getattr(out, "loss", out).float() * h.shape[0]


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross entropy of (h @ W.T + b) against t, `rows` positions at a time.

    The gradients are computed in the forward pass, chunk by chunk, so no chunk's logits outlive
    it; backward only scales them by the incoming gradient. Logits are taken in the inputs' dtype
    and reduced in fp32, as the stock loss does after its upcast."""

    @staticmethod
    def forward(ctx, h, weight, bias, t, rows: int, with_grad: bool):
        need_h, need_w, need_b = (with_grad and n for n in ctx.needs_input_grad[:3])
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if need_b else None
        for start in range(0, h.shape[0], rows):
            hc, tc = h[start:start + rows], t[start:start + rows]
            logits = F.linear(hc, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if not (need_h or need_w or need_b):
                continue
            grad = logits.sub_(lse[:, None]).exp_()             # softmax, in place of the logits
            grad[torch.arange(len(tc), device=tc.device), tc] -= 1.0
            if need_b:
                grad_b += grad.sum(0)
            grad = grad.to(h.dtype)
            if need_h:
                grad_h[start:start + rows] = grad @ weight
            if need_w:
                grad_w += (grad.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        scale = lambda g, dtype: None if g is None else (g * grad_total).to(dtype)
        return scale(grad_h, h_dtype), scale(grad_w, w_dtype), scale(grad_b, w_dtype), None, None, None
