#!/usr/bin/env bash
# The GPU check: one short call on a lent GPU machine (one H200, Python 3.12 with torch, transformers,
# peft, accelerate and triton preinstalled, no network). Run from the repository root:
#   bash bench/gpu_check.sh                       # figures into $OUT (default ./gpu_out)
# with the wheels of bench/gpu_wheels.sh carried along (device tool: carry=["bench/gpu_wheels"]).
# Parts, each bounded by `timeout` and all by GPU_CHECK_BUDGET_S (default 540 s):
#   1. install: the carried wheels + rlattn from this tree, offline, never changing torch/transformers;
#   2. tests:   pytest -m gpu tests/gpu                    -> tests.md / tests.json
#   3. attention statistics, Qwen3-4B shape, N = 1K..32K -> attention_stats.md / .json
#   4. credit overhead in a GRPO step, T = 1K and 8K      -> credit_overhead.md / .json
# plus gpu_check.log (everything printed) and summary.json (versions, each part's exit code and time).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_out}"
PY="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-bench/gpu_wheels}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 RLATTN_GPU_REPORT="$OUT"
START=$(date +%s)
PARTS=()

# part NAME LIMIT_S CMD...: run CMD under `timeout`, never past the overall budget; record its exit code.
part() {
  local name=$1 limit=$2; shift 2
  local left=$(( START + BUDGET - $(date +%s) - 5 ))
  if [ "$left" -lt 30 ]; then
    echo "== $name: skipped, ${left}s of the budget left"; PARTS+=("$name skipped 0"); return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s) $(date +%T)"
  local t0=$(date +%s)
  timeout --kill-after=15 "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s$([ "$rc" = 124 ] && echo ' (timed out)')"
  PARTS+=("$name $rc $(( $(date +%s) - t0 ))")
  return "$rc"
}

install_deps() {
  if [ ! -d "$WHEELS" ]; then
    echo "no $WHEELS: run 'bash bench/gpu_wheels.sh' on a machine with network and carry bench/gpu_wheels" >&2; return 2
  fi
  # pin what is installed of the big packages, so that pip can never change them
  "$PY" - > "$OUT/.pins" <<'EOF' || return 2
import importlib.metadata as md
for name in ("torch", "transformers", "accelerate", "triton", "numpy", "huggingface-hub", "tokenizers", "safetensors"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
  cat "$OUT/.pins"
  # rlattn from this tree (the code under test), its dependencies from the image or the wheels
  "$PY" -m pip install --no-index --find-links "$WHEELS" --no-build-isolation --no-cache-dir --disable-pip-version-check \
      -c "$OUT/.pins" -r bench/gpu_wheels.txt . \
    || "$PY" -m pip install --no-index --find-links "$WHEELS" --no-cache-dir --disable-pip-version-check \
      -c "$OUT/.pins" -r bench/gpu_wheels.txt rlattn \
    || { echo "install failed: if pip names pyarrow, rerun 'bash bench/gpu_wheels.sh --with-pyarrow' and carry bench/gpu_wheels again" >&2
         rm -f "$OUT/.pins"; return 2; }
  rm -f "$OUT/.pins"
  "$PY" -c "import torch, rlattn, trl, datasets, math_verify, peft, transformers
assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('ready:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| transformers', transformers.__version__,
      '| trl', trl.__version__, '| peft', peft.__version__, '| datasets', datasets.__version__)"
}

main() {
echo "== gpu_check $(date) in $(pwd), budget ${BUDGET}s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi: not available"
"$PY" --version

export OUT PY WHEELS
export -f install_deps  # `timeout` runs programs, not functions: it runs this one in a child bash
if part install 180 bash -c install_deps; then
  # -P: import rlattn as installed, not the source folder in the current directory
  part tests 220 "$PY" -P -m pytest -m gpu tests/gpu -q -rA -p no:cacheprovider
  part attention_stats 150 "$PY" bench/gpu_attention_stats.py --out "$OUT"
  part credit_overhead 240 "$PY" bench/gpu_credit_overhead.py --out "$OUT" --trainer-timeout 150
fi

# summary.json: versions and each part's exit code and seconds
PARTS_TEXT=$(printf '%s\n' "${PARTS[@]}") "$PY" - "$OUT/summary.json" <<'EOF'
import importlib.metadata as md, json, os, platform, sys
parts = [dict(zip(("part", "exit", "seconds"), line.split())) for line in os.environ["PARTS_TEXT"].splitlines() if line]
versions = {}
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "triton", "rlattn", "pyarrow", "pandas"):
    try:
        versions[name] = md.version(name)
    except md.PackageNotFoundError:
        versions[name] = None
try:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception as e:  # noqa: BLE001 - a summary must still be written
    gpu = f"torch failed: {e}"
json.dump({"python": platform.python_version(), "gpu": gpu, "versions": versions, "parts": parts}, open(sys.argv[1], "w"), indent=1)
print(json.dumps(parts))
EOF
echo "== gpu_check done after $(( $(date +%s) - START ))s; files in $OUT:"
ls -l "$OUT"
}

main 2>&1 | tee -a "$OUT/gpu_check.log"
