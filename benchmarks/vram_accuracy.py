"""The GPU memory estimate against measured peaks of short training runs.

    .venv/bin/python benchmarks/vram_accuracy.py [--cases default|quick|ours] [--steps 3] [--loop standard|trainer]
                                                 [--models DIR] [--out FILE.jsonl]

On a CUDA machine every case runs in a fresh process: core.train.build_model loads the model as our
trainer does (random weights saved once from an architecture card: memory does not depend on
values), and a few optimizer steps run on random tokens at the full length. `standard` steps as the
reference measurements did (`out = model(...); out.loss.backward()`, the optimizer built directly)
and is compared with `estimate(plain=True)`; `trainer` runs our Trainer (its optimizer; it frees the
output before the backward pass) and is compared with the estimate our runs record. `--cases ours`
runs the quick cases with our trainer's defaults (padding-free batches, the fused loss). The peak
is the allocator's (max_memory_reserved) plus the CUDA context: what the device shows in use, as
in ../shared/calibration. Allocated peak plus context is recorded beside it.

Without CUDA it says so, compares the estimate with the reference measurements in
../shared/calibration (or the folder --calibration names) and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024 ** 3
CALIBRATION = ROOT.parent / "shared" / "calibration"
REFERENCE_MODELS = {"smollm2-135m": "SmolLM2-135M", "qwen2.5-0.5b": "Qwen2.5-0.5B", "llama3.2-3b": "Llama-3.2-3B",
                    "llama3.1-8b": "Llama-3.1-8B", "llama3.2-1b": "Llama-3.2-1B", "qwen2.5-1.5b": "Qwen2.5-1.5B",
                    "qwen2.5-7b": "Qwen2.5-7B"}
#        model            method  dtype  batch  seq   ckpt   optimizer
CASES = [("SmolLM2-135M", "lora", "bf16", 16, 512, False, "adamw"),
         ("SmolLM2-135M", "full", "fp32", 4, 2048, True, "adamw8bit"),
         ("SmolLM2-360M", "full", "bf16", 8, 1024, False, "adamw"),
         ("Qwen2.5-0.5B", "lora", "bf16", 1, 8192, True, "adamw"),
         ("Qwen2.5-0.5B", "qlora", "bf16", 8, 1024, False, "adamw8bit"),
         ("Qwen2.5-1.5B", "full", "bf16", 2, 1024, True, "adamw8bit"),
         ("Llama-3.2-1B", "lora", "bf16", 2, 4096, False, "adamw"),
         ("Llama-3.2-1B", "full", "fp32", 1, 512, False, "adamw"),
         ("Llama-3.2-3B", "qlora", "bf16", 4, 2048, True, "adamw8bit"),
         ("Llama-3.2-3B", "lora", "bf16", 1, 8192, True, "adamw"),
         ("Qwen2.5-3B", "lora", "bf16", 8, 512, False, "adamw8bit"),
         ("Qwen3-4B", "lora", "bf16", 2, 2048, True, "adamw"),
         ("Llama-3.1-8B", "lora", "bf16", 1, 2048, True, "adamw"),
         ("Llama-3.1-8B", "qlora", "bf16", 2, 4096, True, "adamw8bit"),
         ("Qwen2.5-7B", "lora", "bf16", 4, 1024, True, "adamw8bit"),
         ("Mistral-7B-v0.3", "qlora", "bf16", 16, 512, True, "adamw")]
QUICK = [0, 3, 6, 8, 12]
OURS = {"padding_free": True, "fused_loss": True}
KEYS = ("model", "method", "dtype", "batch", "seq", "ckpt", "optim")


def run_config(case: dict, model: str):
    from core.config import RunConfig

    return RunConfig.from_dict({
        "model": model, "method": case["method"],
        "lora": {"rank": case.get("rank", 16), "alpha": 2 * case.get("rank", 16), "dropout": 0.0},
        "data": {"max_seq_len": case["seq"]},
        "train": {"batch_size": case["batch"], "dtype": case["dtype"], "gradient_checkpointing": case["ckpt"],
                  "optimizer": case["optim"], "max_steps": case.get("steps", 3), "logging_steps": 1000,
                  "padding_free": case.get("padding_free", False), "fused_loss": case.get("fused_loss", False)}})


def estimate(case: dict, cfg=None, plain: bool = False) -> dict:
    """The estimate for the case (or for the config given) as our Trainer runs it, or as the plain step
    of the reference measurements does."""
    from core import vram

    est = vram.estimate(cfg or run_config(case, case["model"]), plain=plain)
    return {"total_gib": est.total_gib, "parts": est.parts, "peak_at": est.peak_at}


def cli_config(case: dict):
    """The config `python -m core estimate` builds from the flags alone, as a user (or a check) calls it:
    --model --method --dtype --batch-size --seq-len --lora-rank [--grad-ckpt] --optim."""
    from core import vram

    return vram.config_from_cli(None, [], {
        "model": case["model"], "method": case["method"], "train.dtype": case["dtype"],
        "train.batch_size": case["batch"], "data.max_seq_len": case["seq"], "lora.rank": case["rank"],
        "train.gradient_checkpointing": case["ckpt"], "train.optimizer": case["optim"]})


# ---- one case, in its own process ---------------------------------------------------------------------

def make_model(card_name: str, folder: Path) -> None:
    """Random weights of the card's architecture, saved once as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.arch import find_card

    card = find_card(card_name)
    config = AutoConfig.for_model(**card.config)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, folder)


def measure(case: dict, folder: Path, loop: str) -> dict:
    import torch
    from transformers import Trainer

    from core import fused_loss, models
    from core.batching import FlattenCollator, PadCollator
    from core.runfiles import RunDir
    from core.train import build_model, choose_precision, flattened, training_arguments

    cfg = run_config(case, str(folder))
    precision = choose_precision(cfg)
    model = build_model(cfg, models.ResolvedModel(str(folder), "local", str(folder)), precision)
    if cfg.train.fused_loss:
        fused_loss.enable(model)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (case["batch"] * cfg.train.max_steps, case["seq"]))
    rows = [{"input_ids": r.tolist(), "labels": r.tolist()} for r in ids]
    run = RunDir(Path(tempfile.mkdtemp()))
    trainer = Trainer(model=model, args=training_arguments(cfg, run, precision, False), train_dataset=rows,
                      data_collator=FlattenCollator() if flattened(cfg) else PadCollator(0))
    torch.cuda.reset_peak_memory_stats()
    if loop == "trainer":
        trainer.train()
    else:
        standard_loop(trainer, cfg, precision, ids)
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    context = (total - free) - torch.cuda.memory_reserved()
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated() / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB, "context_gib": context / GIB,
            "device_used_gib": (torch.cuda.max_memory_reserved() + context) / GIB,
            "alloc_plus_context_gib": (torch.cuda.max_memory_allocated() + context) / GIB,
            "device": torch.cuda.get_device_name()}


def standard_loop(trainer, cfg, precision, ids) -> None:
    """Our model, stepped the way the reference measurements were: the optimizer built directly over
    the trainable parameters (fused AdamW, or bitsandbytes' 8-bit AdamW)."""
    import torch

    model = trainer.model
    if cfg.train.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    else:
        import bitsandbytes as bnb

        make = bnb.optim.AdamW8bit if cfg.train.optimizer == "adamw8bit" else bnb.optim.PagedAdamW8bit
        optimizer = make(params, lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision.autocast)
    b = cfg.train.batch_size
    for step in range(cfg.train.max_steps):
        x = ids[step * b:(step + 1) * b].cuda()
        with torch.autocast("cuda", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def child(args) -> int:
    case = json.loads(args.run_case)
    folder = Path(args.folder)
    if args.make_model:
        make_model(case["model"], folder)
        return 0
    try:
        result = {"status": "ok", **measure(case, folder, args.loop)}
    except Exception as e:               # an out-of-memory is a result too
        result = {"status": "oom" if "out of memory" in str(e).lower() else "error", "error": str(e)[:300]}
    print("RESULT " + json.dumps(result))
    return 0


# ---- the driver ----------------------------------------------------------------------------------------

def run_all(args, record) -> list[dict]:
    chosen = CASES if args.cases == "default" else [CASES[i] for i in QUICK]
    store = Path(args.models or tempfile.mkdtemp(prefix="vram-models-"))
    store.mkdir(parents=True, exist_ok=True)
    results = []
    for values in chosen:
        case = {**dict(zip(KEYS, values)), "steps": args.steps, **(OURS if args.cases == "ours" else {})}
        folder = store / case["model"]
        if not folder.exists():
            _spawn(case, folder, args, make_model=True)
        out = _spawn(case, folder, args)
        row = {"case": case, "loop": args.loop, "estimate": estimate(case, plain=args.loop == "standard"), **out}
        if out.get("status") == "ok":
            row["error_device"] = row["estimate"]["total_gib"] / out["device_used_gib"] - 1
        results.append(row)
        record(row)
        print(_line(row), flush=True)
    return results


def _spawn(case: dict, folder: Path, args, make_model: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--run-case", json.dumps(case), "--folder", str(folder), "--loop", args.loop]
    proc = subprocess.run(cmd + (["--make-model"] if make_model else []), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if make_model and proc.returncode == 0:
        return {}
    return {"status": "error", "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}


def _line(row: dict) -> str:
    c = row["case"]
    label = f"{c['model']:<16} {c['method']:<5} {c['dtype']:<4} b{c['batch']:<2} s{c['seq']:<5} " \
            f"ckpt={'on ' if c['ckpt'] else 'off'} {c['optim']:<10}{' ours' if c.get('fused_loss') else ''}"
    est = row["estimate"]["total_gib"]
    if row.get("status") != "ok":
        return f"{label} estimate {est:7.2f} GiB  measured: {row.get('status')} {row.get('error', '')}"
    alloc = f"  (allocated+context {row['alloc_plus_context_gib']:.2f})" if "alloc_plus_context_gib" in row else ""
    return (f"{label} estimate {est:7.2f} GiB  measured {row['device_used_gib']:7.2f} GiB  "
            f"{100 * row['error_device']:+6.1f}%{alloc}")


def reference_cases(folder: Path) -> list[tuple[dict, dict]]:
    """(measurement, case) for every reference run of the standard stack in the calibration folder:
    h100_vram_reference.jsonl, and the runs without Liger kernels of h100_liger_side_by_side.jsonl that
    the first file does not already hold (same recipe: LoRA r16, dropout 0, fused AdamW)."""
    out, seen = [], set()
    for name in ("h100_vram_reference.jsonl", "h100_liger_side_by_side.jsonl"):
        path = folder / name
        lines = path.read_text().splitlines() if path.is_file() else []
        for ref in map(json.loads, lines):
            if ref.get("variant", "plain") != "plain":
                continue
            method, dtype = (ref["method"], "bf16") if ref["method"] in ("lora", "qlora") else ("full", ref["method"][5:])
            case = {"model": REFERENCE_MODELS[ref["model"]], "method": method, "dtype": dtype, "batch": ref["batch"],
                    "seq": ref["seq"], "ckpt": ref["grad_ckpt"], "optim": ref.get("optim", "adamw"),
                    "rank": ref.get("lora_r") or 16}
            key = tuple(case[k] for k in KEYS)
            if key not in seen:
                seen.add(key)
                out.append(({**ref, "source": name}, case))
    return out


def compare_reference(folder: Path) -> list[dict]:
    """The estimate the command line gives for each reference run's flags, beside its measurement
    (device memory in use after the run)."""
    results = []
    for ref, case in reference_cases(folder):
        est = estimate(case, cli_config(case), plain=True)
        row = {"case": case, "estimate": est, "status": "ok", "device_used_gib": ref["device_used_gb"],
               "error_device": est["total_gib"] / ref["device_used_gb"] - 1, "source": ref["source"]}
        if "peak_reserved_gb" in ref:
            row["alloc_plus_context_gib"] = ref["peak_alloc_gb"] + ref["device_used_gb"] - ref["peak_reserved_gb"]
        results.append(row)
        print(_line(row))
    return results


def summary(results: list[dict]) -> None:
    errors = [abs(r["error_device"]) for r in results if "error_device" in r]
    if errors:
        print(f"\n{len(errors)} cases: median |error| {100 * statistics.median(errors):.1f}%, "
              f"max {100 * max(errors):.1f}%  (target: median <= 8%, every case within 15%)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", choices=["default", "quick", "ours"], default="default",
                   help="the 16 cases, 5 of them, or those 5 with our trainer's defaults (padding-free, fused loss)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--loop", choices=["standard", "trainer"], default="standard")
    p.add_argument("--models", help="folder for the random-weight models (kept between runs)")
    p.add_argument("--calibration", type=Path, default=CALIBRATION, help="folder of reference measurements")
    p.add_argument("--out", type=Path, help="JSONL results (default <workspace>/benchmarks/vram_accuracy.jsonl)")
    p.add_argument("--run-case", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--make-model", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    from core.__main__ import quiet_libraries

    quiet_libraries()
    if args.run_case:
        return child(args)
    import torch

    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "python": platform.python_version()}
    if args.out is None:
        from core.workspace import home

        args.out = home() / "benchmarks" / "vram_accuracy.jsonl"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        def record(row: dict) -> None:     # line by line: a run cut short keeps what it measured
            f.write(json.dumps({**row, "versions": versions}) + "\n")
            f.flush()

        if torch.cuda.is_available():
            results = run_all(args, record)
        else:
            print(f"no CUDA device here: nothing to measure. Comparing the estimate with the reference "
                  f"measurements in {args.calibration} instead.\n")
            results = compare_reference(args.calibration)
            for row in results:
                record(row)
    if not results:
        print(f"no reference measurements in {args.calibration}; nothing to compare")
        return 0
    summary(results)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
