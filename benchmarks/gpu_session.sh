#!/usr/bin/env bash
# The GPU checks, for one call on a GPU machine (after benchmarks/gpu_prepare.sh here; carry .whl and .gpu):
#   bash benchmarks/gpu_session.sh [tests] [vram] [vram-trainer] [speed] [distributed]
# tests: the CUDA tests and the trainer's tests on the GPU (at most 3 min); vram: the memory estimate against
# five short runs (--cases quick, at most 4 min); vram-trainer: the same through our Trainer; speed: baseline
# vs ours, LoRA and QLoRA, 20 steps, one repeat (at most 4 min); distributed: tests/test_distributed.py (the
# FSDP test needs two GPUs). Results and logs go to $OUT (default ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export WORKBENCH_HOME=${WORKBENCH_HOME:-/tmp/workbench} WORKBENCH_MODELS=${WORKBENCH_MODELS:-$PWD/.gpu/models}
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import sys, torch, transformers, peft, accelerate, bitsandbytes as b; print(sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', \
peft.__version__, 'accelerate', accelerate.__version__, 'bitsandbytes', b.__version__)"; } 2>&1 | tee "$OUT/machine.txt"
status=0
step() {   # name, seconds, command...
    local name=$1 limit=$2; shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" = 0 ] || status=1
}
for stage in "${@:-tests vram speed}"; do
    for s in $stage; do
        case $s in
        tests) step tests 180 $PY -m pytest -q -p no:cacheprovider -m "not browser and not e2e" \
                   tests/test_gpu.py tests/test_train.py tests/test_speed_paths.py tests/test_vram.py ;;
        vram) step vram 240 $PY benchmarks/vram_accuracy.py --cases quick --out "$OUT/vram_standard.jsonl" ;;
        vram-trainer) step vram-trainer 240 $PY benchmarks/vram_accuracy.py --cases quick --loop trainer \
                          --out "$OUT/vram_trainer.jsonl" ;;
        speed) step speed 240 $PY benchmarks/train_speed.py --steps 20 --repeats 1 --no-loss-memory \
                   --out "$OUT/train_speed.json" ;;
        distributed) step distributed 300 $PY -m pytest -q -p no:cacheprovider tests/test_distributed.py ;;
        *) echo "unknown stage: $s (tests, vram, vram-trainer, speed, distributed)"; exit 2 ;;
        esac
    done
done
exit $status
