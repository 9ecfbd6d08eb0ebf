#!/usr/bin/env bash
# Collect, here (with network), the wheels bench/gpu_check.sh installs on a lent GPU machine that has
# none: bench/gpu_wheels.txt and bench/gpu_fallback_wheels.txt for CPython 3.12 on manylinux x86_64,
# and rlattn itself built as a wheel (a fallback: gpu_check.sh builds rlattn from the tree it runs in).
#   bash bench/gpu_wheels.sh                  # -> bench/gpu_wheels/ (git-ignored), 7.5 MB
#   bash bench/gpu_wheels.sh --with-pyarrow   # + pyarrow 26.0.1 (52 MiB) for an image with pyarrow < 24,
#                                             # without the rlattn wheel, to stay under the carry limit
# The device tool carries it: run(..., carry=["bench/gpu_wheels"]): 64 MiB at most, with the tree (~5 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=bench/gpu_wheels
PY="${PYTHON:-.venv/bin/python}"
EXTRA=()
RLATTN_WHEEL=1
for arg in "$@"; do
  case "$arg" in
    --with-pyarrow) EXTRA+=(pyarrow==26.0.1); RLATTN_WHEEL=0 ;;
    *) echo "gpu_wheels.sh: unknown option $arg (allowed: --with-pyarrow)" >&2; exit 2 ;;
  esac
done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the offline install
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" -r bench/gpu_wheels.txt -r bench/gpu_fallback_wheels.txt "${EXTRA[@]}"
if [ "$RLATTN_WHEEL" = 1 ]; then
  [ -e build ] && KEEP_BUILD=1 || KEEP_BUILD=0
  PYTHONWARNINGS=ignore "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w "$DEST" .
  [ "$KEEP_BUILD" = 1 ] || rm -rf build  # setuptools' in-tree build folder, if this made it
fi
ls -1 "$DEST"
du -sh "$DEST"
