"""The training recipe, top to bottom: config -> model -> data -> Trainer -> adapter.

Runs as its own process (`python -m core train --config FILE`); it talks to the rest of the
workbench only through its run folder (see core/runfiles.py). Bad input is found before the
run folder is written, so a refused config leaves nothing behind.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core import data as datamod
from core import devices, distributed, fused_loss, models, vram
from core.batching import FlattenCollator, PadCollator
from core.config import RunConfig
from core.encode import ensure_chat_template
from core.errors import ConfigError, WorkbenchError
from core.hardware import cpu_has_fast_bf16, cuda_has_bf16, device_kind, is_out_of_memory, liger_missing
from core.progress import FolderDeleted, ProgressCallback, StopRequest, peak_memory_gib, setup_logging
from core.runfiles import RunDir, run_dir_for
from core.workspace import atomic_write_json, shared_mode

log = logging.getLogger("workbench")

OPTIMIZERS = {"adamw": "adamw_torch_fused", "adamw8bit": "adamw_bnb_8bit", "paged_adamw8bit": "paged_adamw_8bit"}
# Liger's norm, MLP and rotary kernels; its loss runs inside core.fused_loss, which already skips the logits.
LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}


class RunFailed(Exception):
    """Training started and then failed; the reason is in status.json."""


@dataclass(frozen=True)
class Precision:
    weights: torch.dtype        # dtype the base weights are loaded in
    autocast: str | None        # "bf16" / "fp16" mixed precision, or None
    compute: torch.dtype        # dtype of the matmuls (QLoRA compute dtype)

    @property
    def label(self) -> str:
        return self.describe(f"{_dtype_name(self.weights)} weights")

    def describe(self, weights: str) -> str:
        return weights + (f", {self.autocast} autocast" if self.autocast else "")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def precision_label(cfg: RunConfig, precision: Precision) -> str:
    """What the run computes in, for the log and the Runs view; QLoRA names its 4-bit base and the
    dtype the other weights end up in."""
    if cfg.method != "qlora":
        return precision.label
    rest = "float32" if cfg.upcasts_unquantized() else _dtype_name(precision.weights)
    return precision.describe(f"4-bit {cfg.quant.quant_type} base, {rest} rest")


def choose_precision(cfg: RunConfig, device: str | None = None, *, cpu_bf16: bool | None = None) -> Precision:
    """The dtype table, one case per line.

    CPU: fp32 weights; bf16 adds bf16 autocast. auto on a CPU with native bf16 (AVX512-BF16/AMX,
    `cpu_bf16`, read from the CPU flags when None): bf16 autocast, and for LoRA/QLoRA bf16 base
    weights as on a GPU (about 1.7x the fp32 speed there, same loss curve); other CPUs: fp32.
    GPU, LoRA/QLoRA: base weights in bf16 (fp16 on cards without bf16) under autocast, adapters
    stay fp32. GPU, full/freeze: fp32 master weights under bf16 autocast (mixed precision),
    unless bf16 is asked for: then every weight is bf16."""
    device = device or device_kind()
    dtype, method = cfg.train.dtype, cfg.method
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    if device == "cpu":
        if dtype == "fp16":
            raise ConfigError("fp16 needs a GPU; use bf16 or fp32 on CPU", field="train.dtype")
        if dtype == "auto" and (cpu_has_fast_bf16() if cpu_bf16 is None else cpu_bf16):
            return Precision(bf16 if cfg.is_adapter_method() else f32, "bf16", bf16)
        return Precision(f32, "bf16", bf16) if dtype == "bf16" else Precision(f32, None, f32)
    has_bf16 = cuda_has_bf16()
    half_name = "bf16" if has_bf16 else "fp16"
    if method in ("full", "freeze"):
        if dtype == "bf16":
            return Precision(bf16, None, bf16)
        if dtype == "fp16":
            return Precision(f32, "fp16", f16)
        return Precision(f32, half_name, bf16 if has_bf16 else f16)
    if dtype == "fp32":
        return Precision(f32, None, f32)
    name = half_name if dtype == "auto" else dtype
    half = bf16 if name == "bf16" else f16
    return Precision(half, name, half)


def build_model(cfg: RunConfig, resolved: models.ResolvedModel, precision: Precision):
    """Load the base model and make the right parameters trainable for the method."""
    quant, device_map = None, None
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant.quant_type,
                                   bnb_4bit_use_double_quant=cfg.quant.double_quant,
                                   bnb_4bit_compute_dtype=precision.compute)
        device_map = {"": int(os.environ.get("LOCAL_RANK", 0))} if device_kind() == "cuda" else {"": "cpu"}
    model = models.load_causal_lm(resolved, dtype=precision.weights, quantization_config=quant,
                                  device_map=device_map, trust_remote_code=cfg.trust_remote_code)
    model.config.use_cache = False
    if cfg.upcasts_unquantized():
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif cfg.method == "qlora":
        model.requires_grad_(False)     # what prepare_model_for_kbit_training does besides the fp32 cast
    if cfg.is_adapter_method():
        from peft import LoraConfig, get_peft_model
        targets = [t.strip() for t in cfg.lora.target_modules.split(",") if t.strip()]
        lora = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules="all-linear" if targets == ["all-linear"] else targets,
                          use_rslora=cfg.lora.rslora, use_dora=cfg.lora.dora, task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ConfigError(f"cannot place LoRA adapters: {e}", field="lora.target_modules") from None
    elif cfg.method == "freeze":
        layers = decoder_layers(model)
        n = min(cfg.freeze.trainable_layers, len(layers))
        model.requires_grad_(False)
        for layer in layers[len(layers) - n:]:
            layer.requires_grad_(True)
    return model


def decoder_layers(model) -> list:
    """The stack of transformer blocks: the ModuleList as long as num_hidden_layers."""
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return list(module)
    raise ConfigError("cannot find the transformer layers of this model for freeze tuning", field="method")


def flattened(cfg: RunConfig) -> bool:
    """Batches travel as one row without padding (padding-free or packed), not padded."""
    return cfg.train.padding_free or cfg.data.packing


def batching_label(cfg: RunConfig) -> str:
    if cfg.data.packing:
        return "packed"
    if cfg.train.padding_free:
        return "padding-free"
    return "padded, grouped by length" if cfg.train.batch_size > 1 else "padded"


def count_parameters(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def training_arguments(cfg: RunConfig, run: RunDir, precision: Precision, has_eval: bool, liger: bool = False):
    from transformers import TrainingArguments

    t = cfg.train
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    parallel = distributed.trainer_options(cfg, device_kind())
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm or None,
        optim=OPTIMIZERS[t.optimizer],
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision.autocast == "bf16",
        fp16=precision.autocast == "fp16",
        use_cpu=device_kind() == "cpu",
        activation_checkpointing=t.gradient_checkpointing and not parallel.get("fsdp"),   # FSDP does its own
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        logging_steps=t.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=3,
        # Real tokens only: a flat row has no padding; a padded batch counts its attention mask.
        include_num_input_tokens_seen="all" if flattened(cfg) else "non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=True,
        use_liger_kernel=liger,             # transformers applies them to the model (peft-wrapped too)
        liger_kernel_config=LIGER_KERNELS if liger else None,
        **parallel,
    )


def check_output_dir(run: RunDir, resume: bool) -> None:
    """The run folder is new, empty, or a run's own (the queue's, or one to resume), and no other
    process trains in it."""
    root = run.root
    if not root.exists():
        return
    if not root.is_dir():
        raise ConfigError(f"'{root}' is a file, not a folder; choose another output_dir", field="output_dir")
    if not resume and not run.status.is_file() and any(root.iterdir()):
        raise ConfigError(f"'{root}' already holds other files; choose a new or empty output_dir",
                          field="output_dir")
    run.hold_worker_lock()


def prepare_run_dir(cfg: RunConfig, run: RunDir, resume: bool) -> Path | None:
    """Refuse to overwrite a finished run; find the checkpoint to resume from."""
    if resume:
        ckpt = run.newest_checkpoint()
        if ckpt is None:
            raise ConfigError(f"nothing to resume: '{run.root}' has no checkpoint", field="output_dir")
        return ckpt
    if run.output(cfg.method).exists() or run.newest_checkpoint() is not None:
        raise ConfigError(f"'{run.root}' already holds a run; resume it with --resume, or choose another "
                          f"output_dir", field="output_dir")
    return None


@dataclass
class Prepared:
    """What a run needs before its folder is written: all of it checked, none of it on disk yet."""
    checkpoint: Path | None
    strategy: str
    resolved: models.ResolvedModel
    tokenizer: object
    data: datamod.TrainingData
    precision: Precision
    model: torch.nn.Module
    loss_path: str
    liger: bool


def run(cfg: RunConfig, *, resume: bool = False) -> RunDir:
    """Train one run to its adapter. WorkbenchError before training starts; RunFailed after."""
    stop = StopRequest()
    stop.install()
    distributed.bind_device()
    run_dir = run_dir_for(cfg.output_dir, cfg.name or Path(cfg.model).name)
    try:
        return _train(cfg, run_dir, resume, stop)
    finally:
        run_dir.release_worker_lock()


def _train(cfg: RunConfig, run_dir: RunDir, resume: bool, stop: StopRequest) -> RunDir:
    ready = prepare(cfg, run_dir, resume)
    open_run_dir(cfg, run_dir, resume)
    if ready.checkpoint is not None:
        run_dir.forget_metrics_after(int(ready.checkpoint.name.rsplit("-", 1)[1]))
    try:
        estimate = record_start(cfg, run_dir, ready)
        return fit(cfg, run_dir, ready, stop, estimate)
    except KeyboardInterrupt:           # a stop before the first step (the Trainer setting up)
        run_dir.write_status(state="stopped", error=None, finished_at=time.time())
        raise


def prepare(cfg: RunConfig, run_dir: RunDir, resume: bool) -> Prepared:
    """Model, tokenizer and data, loaded and checked. A run folder that already exists (resume, or
    the queue's) is told how it ended; a new one is not created for a refusal."""
    existed = run_dir.root.exists()
    check_output_dir(run_dir, resume)       # before anything is written there: it may be another's
    setup_logging(run_dir if existed else None)
    try:
        ckpt = prepare_run_dir(cfg, run_dir, resume)
        strategy = distributed.strategy(cfg, device_kind())
        distributed.check_optimizer(cfg, strategy)
        resolved = models.resolve(cfg.model)
        tokenizer = models.load_tokenizer(resolved, cfg.trust_remote_code)
        ensure_chat_template(tokenizer)
        data = datamod.build(cfg, tokenizer)
        precision = choose_precision(cfg)
        log.info("data: %s", data.summary())
        model = build_model(cfg, resolved, precision)
        liger = cfg.train.liger_kernels and liger_missing() is None
        loss_path = (fused_loss.enable(model, liger) if cfg.train.fused_loss else None) or "standard"
    except WorkbenchError as e:
        if existed:
            run_dir.write_status(state="failed", error=str(e), error_detail=e.to_dict(), finished_at=time.time())
        raise
    except Exception as e:
        if is_out_of_memory(e):         # QLoRA places the base on the GPU while it loads
            raise out_of_memory_failure(cfg, run_dir if existed else None) from None
        raise
    except KeyboardInterrupt:
        if existed:
            run_dir.write_status(state="stopped", error=None, finished_at=time.time())
        raise
    return Prepared(ckpt, strategy, resolved, tokenizer, data, precision, model, loss_path, liger)


def open_run_dir(cfg: RunConfig, run_dir: RunDir, resume: bool) -> None:
    cfg.output_dir = str(run_dir.root)
    try:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        run_dir.hold_worker_lock()
        setup_logging(run_dir)
    except OSError as e:
        raise ConfigError(f"cannot write the run folder '{run_dir.root}': {e.strerror or e}",
                          field="output_dir") from None
    if not resume and distributed.is_main():
        cfg.save(run_dir.config)


def record_start(cfg: RunConfig, run_dir: RunDir, ready: Prepared) -> dict | None:
    """The run's facts in status.json and the log; returns the memory estimate recorded."""
    trainable, total = count_parameters(ready.model)
    estimate = estimate_or_none(cfg)
    batching, precision = batching_label(cfg), precision_label(cfg, ready.precision)
    kernels = "liger" if ready.liger else "pytorch"
    if cfg.train.liger_kernels and not ready.liger:
        log.warning("Liger kernels off: %s; PyTorch's kernels run instead", liger_missing())
    log.info("run %s: %s on %s, %s, %s batches, %s loss, %s kernels, trainable %d of %d parameters (%.3f%%)",
             run_dir.id, cfg.method, cfg.model, precision, batching, ready.loss_path, kernels, trainable, total,
             100 * trainable / max(total, 1))
    run_dir.write_status(state="starting", step=0, total_steps=None, error=None, pid=os.getpid(), unlisted=None,
                         trainable_params=trainable, total_params=total, precision=precision,
                         batching=batching, loss_path=ready.loss_path, kernels=kernels,
                         device=device_kind(), device_set=devices.occupied(), rows=ready.data.rows,
                         dropped=len(ready.data.dropped),
                         processes=distributed.world_size(), strategy=ready.strategy,
                         estimate_gib=(estimate or {}).get("total_gib"))
    return estimate


def fit(cfg: RunConfig, run_dir: RunDir, ready: Prepared, stop: StopRequest, estimate: dict | None) -> RunDir:
    from transformers import PrinterCallback

    from core.trainer import WorkbenchTrainer

    data, collator = ready.data, FlattenCollator() if flattened(cfg) else PadCollator(ready.tokenizer.pad_token_id)
    started = time.time()
    try:
        # The Trainer moves the model to the GPU: an out-of-memory can already happen here.
        trainer = WorkbenchTrainer(model=ready.model, data_collator=collator, processing_class=ready.tokenizer,
                                   args=training_arguments(cfg, run_dir, ready.precision, bool(data.eval), ready.liger),
                                   train_dataset=data.train, eval_dataset=data.eval or None,
                                   callbacks=[ProgressCallback(run_dir, stop)],
                                   length_grouped=not flattened(cfg) and cfg.train.batch_size > 1)
        trainer.remove_callback(PrinterCallback)
        result = trainer.train(resume_from_checkpoint=str(ready.checkpoint) if ready.checkpoint else None)
        if distributed.any_rank(stop.requested):   # every rank must take the same branch (collectives follow)
            run_dir.write_status(state="stopped", step=trainer.state.global_step, finished_at=time.time(), eta_s=None,
                                 checkpoint=str(run_dir.newest_checkpoint() or ""))
            log.info("stopped at step %d; resume with --resume", trainer.state.global_step)
            return run_dir
        final_eval = trainer.evaluate() if data.eval else {}
        state_dict = distributed.full_state_dict(trainer)
        if distributed.is_main():
            save_result(cfg, run_dir, trainer, ready.tokenizer, ready.resolved, result, final_eval, data, started,
                        estimate, state_dict)
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory_failure(cfg, run_dir) from None
        msg = failure_message(e, run_dir)
        run_dir.write_status(state="failed", error=msg, finished_at=time.time())
        log.exception("training failed")
        raise RunFailed(msg) from e
    return run_dir


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# Libraries that write in native code (safetensors) report the OS error only in their message.
_DISK_FULL_TEXT = re.compile(r"os error (%s)\b|no space left|file too large|quota exceeded"
                             % "|".join(map(str, DISK_FULL_ERRNOS)), re.I)


def is_disk_full(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or bool(_DISK_FULL_TEXT.search(str(e)))


def failure_message(e: Exception, run_dir: RunDir) -> str:
    """One line for status.json; a full disk says so and what to do next."""
    if isinstance(e, FolderDeleted):
        return str(e)
    if not is_disk_full(e):
        return f"{type(e).__name__}: {e}"
    then = "resume from the newest checkpoint" if run_dir.newest_checkpoint() else "run it again"
    return (f"the disk is full (or a file size limit was reached) while writing to {run_dir.root}: free some "
            f"space, then {then} ({e})")


def save_result(cfg, run_dir: RunDir, trainer, tokenizer, resolved, result, final_eval, data, started,
                estimate=None, state_dict=None) -> None:
    """Write the adapter (or full model) atomically: a temp folder renamed into place.
    state_dict: the weights gathered from every rank under FSDP."""
    out = run_dir.output(cfg.method)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        trainer.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        summary = result_summary(cfg, run_dir, trainer, resolved, result, final_eval, data, started, estimate)
        atomic_write_json(tmp / "workbench.json", summary)
        shared_mode(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)     # a half-written folder is no adapter
        raise
    run_dir.write_status(state="completed", step=trainer.state.global_step, eta_s=0, finished_at=time.time(),
                         output=str(out), final_loss=summary["metrics"]["train_loss"],
                         eval_loss=summary["metrics"]["eval_loss"])
    log.info("finished: %s", out)


def result_summary(cfg, run_dir: RunDir, trainer, resolved, result, final_eval, data, started, estimate) -> dict:
    """workbench.json: where the adapter came from and how its run went; `estimate` is the pre-run
    memory estimate, kept beside the measured peak."""
    metrics = [r for r in run_dir.read_metrics() if "loss" in r]
    return {
        "base_model": cfg.model,
        "base_model_path": resolved.path,
        "method": cfg.method,
        "datasets": [s.path for s in cfg.datasets],
        "config": cfg.to_dict(),
        "metrics": {
            "steps": trainer.state.global_step,
            "train_loss": metrics[-1]["loss"] if metrics else result.training_loss,
            "mean_train_loss": result.training_loss,
            "eval_loss": final_eval.get("eval_loss"),
            "runtime_s": round(time.time() - started, 1),
            "tokens_seen": trainer.state.num_input_tokens_seen,
            "rows": data.rows,
        },
        "memory": {**peak_memory_gib(), "estimate": estimate},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def estimate_or_none(cfg) -> dict | None:
    """The pre-run memory estimate, kept beside the measured peak so the library can show both."""
    try:
        return vram.estimate(cfg, gpus=distributed.world_size()).to_dict()
    except Exception as e:  # an architecture the estimator does not know must not fail a finished run
        log.info("no memory estimate for %s: %s", cfg.model, e)
        return None


def out_of_memory_failure(cfg, run_dir: RunDir | None) -> RunFailed:
    """The run's status says what to change; the error to raise carries the same words."""
    msg = out_of_memory_message(cfg)
    if run_dir is not None:
        run_dir.write_status(state="failed", error=msg, finished_at=time.time(), **peak_memory_gib())
    log.error(msg)
    return RunFailed(msg)


def out_of_memory_message(cfg) -> str:
    """What to change, cheapest first, sized for the GPU this run was on."""
    generic = ("out of memory: lower the batch size (raise gradient accumulation to keep the effective batch), "
               "shorten the max length, turn on gradient checkpointing, or use QLoRA")
    gpus = vram.detected_gpus()
    try:
        picks = vram.suggestions(cfg, gpus[0].gib, gpus=distributed.world_size()) if gpus else []
    except Exception:  # advice must never hide the out-of-memory failure itself
        picks = []
    if not picks:
        return generic
    tips = [f"about {p.estimate.total_gib:.1f} GiB with {' '.join(p.overrides)}: {p.description}" for p in picks[:3]]
    listed = "".join("\n- " + tip for tip in tips)
    return f"out of memory on {gpus[0].name} ({gpus[0].gib:.0f} GiB). Changes that fit:{listed}"
