#!/usr/bin/env bash
# The GPU checks, for one call on a GPU machine (after benchmarks/gpu_prepare.sh here; carry .whl and .gpu):
#   BUDGET=560 bash benchmarks/gpu_session.sh [tests] [vram] [vram-trainer] [vram-ours] [speed] [speed-qlora]
#                                             [speed16] [speed-liger] [distributed]
# tests: the CUDA tests and the fast-path tests on the GPU; vram: the memory estimate's plain step against
# five short runs stepped as the reference measurements were (--cases quick); vram-trainer: the same cases
# through our Trainer; vram-ours: those cases with our trainer's defaults (padding-free, fused loss);
# speed: baseline vs ours, LoRA and QLoRA, 40 steps (the first 5 left out of the steady rate), one repeat, batch 4
# (speed16: batch 16; speed-qlora: QLoRA alone: ours, without the fp32 upcast of the unquantized weights, with
# gradient checkpointing, and with both of those and Liger's kernels; speed-liger: LoRA and QLoRA with and without
# Liger's kernels);
# distributed: tests/test_distributed.py (the FSDP test needs two GPUs). Stages run in the order given,
# each within its own limit and within BUDGET seconds for the whole call (a stage that would start with
# under 30 s left is skipped). Results, and one log of the whole call, go to $OUT (default ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
END=$(( SECONDS + ${BUDGET:-100000} ))
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WORKBENCH_HOME=${WORKBENCH_HOME:-/tmp/workbench} WORKBENCH_MODELS=${WORKBENCH_MODELS:-$PWD/.gpu/models}
PY=${PYTHON:-python3}
MODELS=/tmp/vram-models        # random-weight models, made once and shared by the vram stages
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch, transformers, peft, accelerate, bitsandbytes as b, datasets; print(sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', \
peft.__version__, 'accelerate', accelerate.__version__, 'bitsandbytes', b.__version__, 'datasets', datasets.__version__)"
  $PY -c "import triton, liger_kernel; print('triton', triton.__version__, 'liger-kernel importable')"
  df -h /tmp | tail -1; } 2>&1 | tee -a "$OUT/session.log"
status=0
step() {   # name, seconds, command...
    local name=$1 limit=$2 left=$(( END - SECONDS )); shift 2
    if [ "$left" -lt 30 ]; then echo "== $name: skipped, ${left} s left"; status=1; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most $limit s)" | tee -a "$OUT/session.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/session.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $SECONDS s" | tee -a "$OUT/session.log"
    [ "$rc" = 0 ] || status=1
}
VRAM=($PY benchmarks/vram_accuracy.py --models "$MODELS")
for stage in "${@:-tests vram speed}"; do
    for s in $stage; do
        case $s in
        tests) step tests 240 $PY -m pytest -q -p no:cacheprovider -m "not browser and not e2e" \
                   tests/test_gpu.py tests/test_speed_paths.py ;;
        vram) step vram 240 "${VRAM[@]}" --cases quick --out "$OUT/vram_standard.jsonl" ;;
        vram-trainer) step vram-trainer 240 "${VRAM[@]}" --cases quick --loop trainer --out "$OUT/vram_trainer.jsonl" ;;
        vram-ours) step vram-ours 240 "${VRAM[@]}" --cases ours --loop trainer --out "$OUT/vram_ours.jsonl" ;;
        speed) step speed 240 $PY benchmarks/train_speed.py --steps 40 --repeats 1 --no-loss-memory \
                   --out "$OUT/train_speed.json" ;;
        speed-qlora) step speed-qlora 240 $PY benchmarks/train_speed.py --steps 40 --repeats 1 --no-loss-memory \
                         --methods qlora --arms baseline,ours,ours-half-rest,ours-ckpt,ours-lean --out "$OUT/train_speed_qlora.json" ;;
        speed16) step speed16 240 $PY benchmarks/train_speed.py --steps 40 --repeats 1 --no-loss-memory \
                     --batch-size 16 --out "$OUT/train_speed_b16.json" ;;
        speed-liger) step speed-liger 240 $PY benchmarks/train_speed.py --steps 40 --repeats 1 --no-loss-memory \
                         --arms baseline,ours,ours-liger --out "$OUT/train_speed_liger.json" ;;
        distributed) step distributed 300 $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py ;;
        *) echo "unknown stage: $s (tests, vram, vram-trainer, vram-ours, speed, speed-qlora, speed16, speed-liger, distributed)"; exit 2 ;;
        esac
    done
done
exit $status
