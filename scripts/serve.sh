#!/usr/bin/env bash
# Set up if needed, train the router on first run, then serve on 127.0.0.1 with the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# MMLU + the shipped user requests + the routes' examples; again when routes.yaml or the artifact format changed
.venv/bin/coe train --router two_stage --if-stale
# Stage 2's profile from the answers the quality benchmark measured (outcomes.json), grouped by this stage 1
.venv/bin/coe profile --data outcomes --if-stale
exec .venv/bin/coe serve "$@"
