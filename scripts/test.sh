#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (real weights, real Redis on 127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# llama.cpp for its engine's tests: the portable wheel is built once (minutes) and cached; a second run only checks.
scripts/setup_llamacpp.sh .venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
