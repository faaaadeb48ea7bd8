#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (real weights, real Redis on 127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
