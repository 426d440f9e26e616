"""Chat latency on the embedded model: time to first token, tokens/s, and adapter switching.

    .venv/bin/python benchmarks/chat_speed.py [--repeats 5] [--max-new-tokens 64]

Two LoRA adapters (all linear layers, rank 16, random non-zero weights: speed does not depend on
what they learned) are loaded beside the base; each round answers the same prompt with the base,
adapter A and adapter B, and times the switch. Medians over the rounds.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import transformers  # noqa: E402

from core.__main__ import quiet_libraries  # noqa: E402
from core.chat import ChatEngine, GenerationOptions  # noqa: E402
from core.models import embedded_model_dir  # noqa: E402

PROMPT = [{"role": "user", "content": "Explain in three sentences why the sky is blue."}]


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    quiet_libraries()
    base = embedded_model_dir()
    tmp = Path(tempfile.mkdtemp())
    load_start = time.perf_counter()
    engine = ChatEngine(str(base))
    load_s = time.perf_counter() - load_start
    a = engine.add_adapter(make_adapter(base, tmp / "a", 1), "a")
    b = engine.add_adapter(make_adapter(base, tmp / "b", 2), "b")
    opts = GenerationOptions(max_new_tokens=args.max_new_tokens)
    results = {name: {"ttft_s": [], "tokens_per_s": []} for name in ("base", "a", "b")}
    switches = []
    for _ in range(args.repeats):
        for name, adapter in (("base", None), ("a", a), ("b", b)):
            if adapter:
                t0 = time.perf_counter()
                engine.model.set_adapter(adapter)
                switches.append(time.perf_counter() - t0)
            last = None
            for last in engine.stream(PROMPT, opts, adapter=adapter):
                pass
            results[name]["ttft_s"].append(last["ttft_s"])
            results[name]["tokens_per_s"].append(last["tokens_per_s"])
    summary = {
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "base_load_s": round(load_s, 2),
        "adapter_switch_ms_median": round(1000 * statistics.median(switches), 3),
        **{f"{k}_{m}_median": round(statistics.median(v[m]), 3) for k, v in results.items() for m in v},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
