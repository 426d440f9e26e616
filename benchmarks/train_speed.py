"""Our trainer against the plain Hugging Face stack, on the same model, data and hyperparameters.

    .venv/bin/python benchmarks/train_speed.py                  # baseline vs ours, 3 repeats
    .venv/bin/python benchmarks/train_speed.py --arms all       # plus one run per technique turned off
    .venv/bin/python benchmarks/train_speed.py --steps 4 --repeats 1 --no-loss-memory   # a smoke run

The baseline is LoRA as tutorials write it: transformers Trainer + peft, padding to the longest
sample of each batch (DataCollatorForSeq2Seq), the model's own loss, default settings (fp32 on
CPU; bf16 weights and bf16=True on a GPU; QLoRA through prepare_model_for_kbit_training).
Ours is `core.train.run` with the recommended defaults: padding-free batches, the fused loss and
`dtype: auto`. Both get the same encoded samples (core.data.build) in the same order.

Every run is a fresh process (so peak RSS / CUDA peak belong to that run alone); the arms
alternate in ABBA order, and the summary gives medians and ratios. tokens/s counts real tokens
(the Trainer's num_input_tokens_seen: the attention mask for padded batches, every token of a
flat row) over the training time (from the start of training to the last step); "steady" counts
only the steps after the first --warmup ones (CUDA's lazy start-up, cuBLAS heuristics and
first-call kernel loading land in the first steps and swamp a short GPU run). CPU: the
embedded SmolLM2-135M-Instruct. GPU: a random-weight model of Qwen2.5-0.5B's architecture
(vocabulary 151,936), LoRA and QLoRA.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import TrainerCallback  # noqa: E402

DATASETS = [ROOT / "presets" / "data" / "general.json", ROOT / "presets" / "data" / "identity.jsonl",
            ROOT / "benchmarks" / "data" / "alpaca_en_demo_head.json"]
# Qwen2.5-0.5B's config.json numbers: a large vocabulary, where the logits dominate a LoRA step.
GPU_ARCH = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768,
                rope_theta=1000000.0, rms_norm_eps=1e-6)
OURS = {"padding_free": True, "fused_loss": True, "dtype": "auto"}
ABLATIONS = {                       # one technique off at a time
    "ours-fp32": {"dtype": "fp32"},
    "ours-fp32-weights": {"dtype": "bf16"},     # bf16 autocast over fp32 base weights
    "ours-padded": {"padding_free": False},
    "ours-stock-loss": {"fused_loss": False},
    "ours-half-rest": {"quant": {"upcast_unquantized": False}},   # QLoRA: embeddings and norms stay bf16
}
EXTRAS = {                          # one option on that ours leaves off (not part of --arms all)
    "ours-liger": {"liger_kernels": True},      # Liger's norm, MLP, rotary and loss kernels (CUDA, liger-kernel)
    "ours-ckpt": {"gradient_checkpointing": True},
    # QLoRA's leanest: Liger's kernels, embeddings and norms in bf16, checkpointing (as the baseline has)
    "ours-lean": {"liger_kernels": True, "gradient_checkpointing": True, "quant": {"upcast_unquantized": False}},
}
VARIANTS = {**ABLATIONS, **EXTRAS}


def run_config(spec: dict, train: dict):
    """The run's config; `train` holds train-section keys, and a "quant" key for that section."""
    from core.config import RunConfig

    train = dict(train)
    quant = train.pop("quant", {})
    return RunConfig.from_dict({
        "model": spec["model"], "method": spec["method"], "datasets": [str(p) for p in DATASETS],
        "output_dir": spec["out"], "data": {"max_seq_len": spec["max_len"]}, "quant": quant,
        "train": {"max_steps": spec["steps"], "epochs": 1, "batch_size": spec["batch"], "logging_steps": 1, **train}})


def peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2 ** 30, "memory": "CUDA peak allocated"}
    return {"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "memory": "peak RSS"}


# ---- the two arms (each runs in its own process) ----------------------------------------------

def arm_ours(spec: dict, overrides: dict) -> dict:
    from core.runfiles import RunDir
    from core.train import run

    cpu0 = time.process_time()
    run_dir: RunDir = run(run_config(spec, {**OURS, **overrides}))
    rows = [r for r in run_dir.read_metrics() if "loss" in r]
    status = run_dir.read_status()
    return {"losses": [r["loss"] for r in rows], "tokens": rows[-1]["tokens_seen"],
            "train_s": rows[-1]["time"] - status["started_at"], "cpu_s": time.process_time() - cpu0,
            "step_times": [r["time"] for r in rows], "step_tokens": [r["tokens_seen"] for r in rows],
            "precision": status["precision"], "batching": status["batching"], "loss_path": status["loss_path"],
            "kernels": status.get("kernels")}


def arm_baseline(spec: dict) -> dict:
    """LoRA as the tutorials write it; only the data and the hyperparameters come from us."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, DataCollatorForSeq2Seq,
                              Trainer, TrainingArguments)

    cfg = run_config(spec, {})
    items = encoded_items(cfg)
    cpu0 = time.process_time()
    gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    kwargs = {"dtype": torch.bfloat16} if gpu else {}
    if spec["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], **kwargs)
    if spec["method"] == "qlora":
        model = prepare_model_for_kbit_training(model)
    model = get_peft_model(model, LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha,
                                             lora_dropout=cfg.lora.dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    t = cfg.train
    args = TrainingArguments(output_dir=spec["out"], per_device_train_batch_size=t.batch_size,
                             max_steps=t.max_steps or -1, num_train_epochs=t.epochs,
                             learning_rate=t.learning_rate, lr_scheduler_type=t.scheduler, warmup_steps=t.warmup_ratio,
                             logging_steps=1, seed=t.seed, bf16=gpu, use_cpu=not gpu, save_strategy="no",
                             report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding")
    clock = Clock()
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(items), callbacks=[clock],
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True))
    trainer.train()
    return {"losses": clock.losses, "tokens": clock.tokens, "train_s": clock.last - clock.start,
            "cpu_s": time.process_time() - cpu0, "step_times": clock.times, "step_tokens": clock.seen,
            "precision": "bf16" if gpu else "fp32",
            "batching": "padded", "loss_path": "standard"}


def encoded_items(cfg) -> list[dict]:
    from core import data as datamod
    from core.models import load_tokenizer, resolve

    return datamod.build(cfg, load_tokenizer(resolve(cfg.model))).train


class Clock(TrainerCallback):
    """Start of training, and the time, loss and real-token count of every logged step."""

    def __init__(self):
        self.start = self.last = None
        self.losses, self.tokens, self.times, self.seen = [], 0, [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last, self.tokens = time.time(), state.num_input_tokens_seen
            self.losses.append(logs["loss"])
            self.times.append(self.last)
            self.seen.append(self.tokens)


# ---- the loss path alone: memory of the standard loss against the fused one --------------------

def arm_loss_memory(spec: dict, fused: bool) -> dict:
    """One forward and backward of the output head and loss over `tokens` positions, LoRA-style
    (frozen head, hidden states that need a gradient), under the precision our trainer picks."""
    import torch

    from core import fused_loss
    from core.encode import IGNORE

    torch.manual_seed(0)
    vocab, hidden_size, tokens = spec["vocab"], spec["hidden"], spec["tokens"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    head = torch.nn.Linear(hidden_size, vocab, bias=False, device=device, dtype=torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(1, tokens, hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (1, tokens), device=device)
    labels[:, : tokens // 4] = IGNORE                       # prompt tokens carry no label
    before = _current_memory(device)
    start = time.perf_counter()
    if fused:
        loss = fused_loss.linear_cross_entropy(hidden, head, torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:])
    else:
        loss = torch.nn.functional.cross_entropy(head(hidden).float()[0, :-1], labels[0, 1:], ignore_index=IGNORE)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"loss": loss.item(), "seconds": seconds, "grad_norm": hidden.grad.float().norm().item(),
            "peak_extra_gib": (peak_memory()["peak_gib"] * 2 ** 30 - before) / 2 ** 30}


def _current_memory(device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- orchestration -------------------------------------------------------------------------------

def child(arm: str, spec: dict) -> dict:
    """Run one arm in a fresh process and return its JSON result."""
    cmd = [sys.executable, __file__, "--child", arm, "--spec", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{arm} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def run_child(arm: str, spec: dict) -> None:
    if arm == "baseline":
        result = arm_baseline(spec)
    elif arm.startswith("loss-"):
        result = arm_loss_memory(spec, fused=arm == "loss-fused")
    else:
        result = arm_ours(spec, VARIANTS.get(arm, {}))
    result.update(peak_memory())
    if "tokens" in result:
        result["tokens_per_s"] = result["tokens"] / result["train_s"]
        result["steady_tokens_per_s"] = steady_rate(result["step_times"], result["step_tokens"], spec["warmup"])
    print("RESULT " + json.dumps(result), flush=True)


def steady_rate(times: list[float], tokens: list[int], warmup: int) -> float | None:
    """Real tokens per second over the steps after the first `warmup` (None when too few are left)."""
    if warmup < 1 or len(times) < warmup + 2:
        return None
    return (tokens[-1] - tokens[warmup - 1]) / (times[-1] - times[warmup - 1])


def benchmark_model(tmp: Path) -> str:
    """The embedded model on CPU; on a GPU, random weights in Qwen2.5-0.5B's architecture."""
    import torch

    from core.models import embedded_model_dir

    if not torch.cuda.is_available():
        return str(embedded_model_dir())
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from core.models import EMBEDDED_MODEL
    from core.workspace import models_dir

    folder = tmp / "qwen2.5-0.5b-random"
    torch.manual_seed(0)
    carried = models_dir() / EMBEDDED_MODEL         # gpu_prepare.sh carries the tokenizer alone
    tokenizer = AutoTokenizer.from_pretrained(carried if (carried / "tokenizer.json").exists() else embedded_model_dir())
    config = Qwen2Config(**GPU_ARCH, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return str(folder)


def schedule(arms: list[str], repeats: int) -> list[str]:
    """ABBA...: every arm runs as often first as last, so drift in machine load cancels out."""
    order = []
    for r in range(repeats):
        order += arms if r % 2 == 0 else arms[::-1]
    return order


def median(values):
    return statistics.median(values) if values else float("nan")


def summarize(results: dict[str, list[dict]]) -> dict:
    summary = {}
    for arm, runs in results.items():
        summary[arm] = {
            "tokens_per_s": median([r["tokens_per_s"] for r in runs]),
            "steady_tokens_per_s": median([r["steady_tokens_per_s"] for r in runs if r.get("steady_tokens_per_s")]),
            "tokens_per_cpu_s": median([r["tokens"] / r["cpu_s"] for r in runs]),
            "peak_gib": median([r["peak_gib"] for r in runs]),
            "final_loss": median([r["losses"][-1] for r in runs]),
            "mean_loss": median([statistics.fmean(r["losses"]) for r in runs]),
            "tokens": runs[0]["tokens"], "runs": len(runs),
            "curve": [median(step) for step in zip(*[r["losses"] for r in runs])],
            "tokens_per_s_range": [min(r["tokens_per_s"] for r in runs), max(r["tokens_per_s"] for r in runs)],
            "label": f'{runs[0]["precision"]}, {runs[0]["batching"]}, {runs[0]["loss_path"]} loss',
        }
    return summary


def print_summary(method: str, summary: dict) -> None:
    first = next(iter(summary))
    base = summary[first]
    print(f"\n== {method}: medians over {base['runs']} runs each; ratios against {first} ==")
    print(f"{'arm':18} {'tokens/s':>9} {'x base':>7} {'steady':>9} {'x base':>7} {'tok/cpu-s':>9} {'peak GiB':>9} "
          f"{'x base':>7} {'final loss':>10} {'mean loss':>10}  setup")
    for arm, s in summary.items():
        print(f"{arm:18} {s['tokens_per_s']:9.1f} {s['tokens_per_s'] / base['tokens_per_s']:7.2f} "
              f"{s['steady_tokens_per_s']:9.1f} {s['steady_tokens_per_s'] / base['steady_tokens_per_s']:7.2f} "
              f"{s['tokens_per_cpu_s']:9.1f} {s['peak_gib']:9.3f} {s['peak_gib'] / base['peak_gib']:7.2f} "
              f"{s['final_loss']:10.4f} {s['mean_loss']:10.4f}  {s['label']}")
    if any(s["tokens"] != base["tokens"] for s in summary.values()):
        print("real tokens differ between arms:", {a: s["tokens"] for a, s in summary.items()})
    else:
        print(f"every arm trained on the same {base['tokens']} real tokens")
    print("\nloss per step (median over runs):")
    print("step " + " ".join(f"{a:>18}" for a in summary))
    for step, losses in enumerate(zip(*[s["curve"] for s in summary.values()]), 1):
        print(f"{step:4} " + " ".join(f"{l:18.4f}" for l in losses))
    for arm, s in summary.items():
        if arm != first:
            diffs = [abs(a - b) for a, b in zip(s["curve"], base["curve"])]
            print(f"{arm}: max |loss - {first}| over the steps {max(diffs):.4f}, "
                  f"mean {statistics.fmean(diffs):.4f}")


def loss_memory_report(spec: dict) -> dict:
    out = {name: child(f"loss-{name}", spec) for name in ("standard", "fused")}
    std, fused = out["standard"], out["fused"]
    print(f"\n== the loss path alone: {spec['tokens']} positions, vocabulary {spec['vocab']}, hidden "
          f"{spec['hidden']}, bf16 head ==")
    for name, r in out.items():
        print(f"{name:9} extra peak {r['peak_extra_gib']:.3f} GiB, {r['seconds']:.2f} s, loss {r['loss']:.5f}, "
              f"|grad| {r['grad_norm']:.5f}")
    print(f"fused / standard peak: {fused['peak_extra_gib'] / std['peak_extra_gib']:.2f}")
    return out


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (CPU 6, GPU 30; 0: one epoch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the steady rate (CPU 1, GPU 5)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=None, help="max sample length (CPU 512, GPU 2048)")
    p.add_argument("--arms", default="ours", help="'ours' (baseline vs ours), 'all' (plus one run per technique "
                                                  "turned off), or a comma-separated list of arms")
    p.add_argument("--methods", default=None, help="comma-separated: lora (CPU default), lora,qlora (GPU)")
    p.add_argument("--no-loss-memory", action="store_true", help="skip the loss-path memory comparison")
    p.add_argument("--out", default=None, help="JSON results file (default: <workspace>/benchmarks/train_speed-*.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        run_child(a.child, json.loads(a.spec))
        return 0
    gpu = torch.cuda.is_available()
    arms = {"ours": ["baseline", "ours"], "all": ["baseline", "ours", *ABLATIONS]}.get(a.arms) or a.arms.split(",")
    unknown = set(arms) - {"baseline", "ours", *VARIANTS}
    if unknown:
        p.error(f"unknown arms: {', '.join(sorted(unknown))}; known: baseline, ours, {', '.join(VARIANTS)}")
    methods = (a.methods or ("lora,qlora" if gpu else "lora")).split(",")
    report = {"machine": machine(), "arms": arms, "results": {}}
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        model = benchmark_model(Path(tmp))
        for method in methods:
            steps = a.steps if a.steps is not None else (30 if gpu else 6)
            spec = {"model": model, "method": method, "steps": steps, "batch": a.batch_size,
                    "max_len": a.max_len or (2048 if gpu else 512),
                    "warmup": a.warmup if a.warmup is not None else (5 if gpu else 1)}
            results = {arm: [] for arm in arms}
            for i, arm in enumerate(schedule(arms, a.repeats)):
                r = child(arm, {**spec, "out": str(Path(tmp) / f"{method}-{arm}-{i}")})
                results[arm].append(r)
                print(f"{method} {arm:18} run {len(results[arm])}: {r['tokens_per_s']:7.1f} tokens/s, "
                      f"peak {r['peak_gib']:.3f} GiB, final loss {r['losses'][-1]:.4f}", flush=True)
            summary = summarize(results)
            print_summary(method, summary)
            report["results"][method] = {"spec": spec, "summary": summary, "runs": results}
        if not a.no_loss_memory:
            big = {"vocab": GPU_ARCH["vocab_size"], "hidden": GPU_ARCH["hidden_size"], "tokens": 4096 if gpu else 1024}
            report["loss_memory"] = loss_memory_report(big)
    from core.workspace import home

    out = Path(a.out) if a.out else home() / "benchmarks" / f"train_speed-{'gpu' if gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {out}")
    return 0


def machine() -> dict:
    import platform

    import peft
    import torch
    import transformers

    from core.hardware import cpu_has_fast_bf16

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?") \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "fast_cpu_bf16": cpu_has_fast_bf16(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


if __name__ == "__main__":
    sys.exit(main())
