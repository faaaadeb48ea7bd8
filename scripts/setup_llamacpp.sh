#!/usr/bin/env bash
# Optional, for `coe bench engine` only: llama-cpp-python built from source for this CPU, in its own venv
# (.venv-llamacpp), as the ceiling the prebuilt cyllama wheel the service runs is measured against.
# Neither `make serve` nor `make test` calls this: nothing on their path compiles.
#
#   scripts/setup_llamacpp.sh [--force]
#
# The portable flags: a native build crashed in llama_decode on a CPU with AMX, and AVX-512 died of an
# illegal instruction on an AMD EPYC without it. The wheel is built once into ~/.cache/coe/wheels
# (COE_WHEEL_CACHE; minutes) and installed from there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
VENV=.venv-llamacpp
cache=${COE_WHEEL_CACHE:-$HOME/.cache/coe/wheels}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
mkdir -p "$cache"
wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ "${1:-}" = "--force" ] || [ -z "$wheel" ] || [ "$(cat "$cache/llama_cpp_python-$VERSION.cmake-args" 2>/dev/null)" != "$CMAKE_ARGS" ]; then
  rm -f "$cache"/llama_cpp_python-"$VERSION"-*.whl
  echo "building llama-cpp-python $VERSION (portable CPU build; minutes on a small machine)"
  # --no-cache-dir: pip's own wheel cache is keyed by the source, not CMAKE_ARGS, and would hand back an old build
  CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip wheel -q --no-deps --no-cache-dir "llama-cpp-python==$VERSION" -w "$cache"
  echo "$CMAKE_ARGS" > "$cache/llama_cpp_python-$VERSION.cmake-args"
  wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$wheel" "numpy>=1.20"
"$VENV/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__, "ready in '"$VENV"'")'
