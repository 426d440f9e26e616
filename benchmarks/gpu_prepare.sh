#!/usr/bin/env bash
# Run here, before a GPU machine is asked for: gathers what benchmarks/gpu_session.sh needs there and
# that machine lacks (it has no network). Writes two ignored folders, .whl/ and .gpu/, to carry.
#   the wheels of requirements.txt's pins that its image lacks or holds at another version
#   (Python 3.12 there), liger-kernel (pure Python; Triton comes with CUDA torch), and the embedded
#   model's configuration and tokenizer (no weights: the GPU benchmarks use random weights; the
#   tokenizer is the real one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for d in /.whl/ /.gpu/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
pin() { grep -E "^$1==" requirements.txt | head -1; }
LIGER=$(grep -oE "liger-kernel==[0-9.]+" Dockerfile)     # the GPU image's, for train.liger_kernels
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    "$(pin transformers)" "$(pin peft)" "$(pin bitsandbytes)" "$(pin datasets)" dill==0.4.1 multiprocess==0.70.19 \
    "$LIGER"
model=$("$PY" -c "from core.models import embedded_model_dir; print(embedded_model_dir())")
rm -rf .gpu && mkdir -p ".gpu/models/$(basename "$model")"
cp "$model"/*.json "$model"/*.jinja ".gpu/models/$(basename "$model")/"
du -sh .whl .gpu
echo "carry: [\".whl\", \".gpu\"]   command: bash benchmarks/gpu_session.sh STAGE..."
