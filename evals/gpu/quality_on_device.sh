#!/usr/bin/env bash
# The full `coe bench quality` on a GPU device: the default three experts through vLLM (experts.gpu.yaml).
#
# Here, once: ../shared/tools/vllm-on-device/prepare (vLLM and its dependencies into .carry/), then
#   python evals/gpu/pack.py pack .qcarry site:... cache:...     (the command is in docs/quality.md)
# On the device, one call per folder, back to back: mkdir -p /tmp/pk && cp .qcarry/NN/* /tmp/pk/
# Then, in the same warm machine:  bash evals/gpu/quality_on_device.sh OUT_DIR [coe bench quality options]
set -euo pipefail
out=${1:?usage: quality_on_device.sh OUT_DIR [options]}
shift
export COE_CACHE_DIR=/tmp/coe-cache COE_ARTIFACTS_DIR=/tmp/coe-artifacts PYTHONPATH=/tmp/site
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_HOST_IP=127.0.0.1
python3 evals/gpu/pack.py unpack /tmp/pk --site /tmp/site --cache "$COE_CACHE_DIR"
# coe itself (its `coe` command and the benchmarks' entry point); the image's Python is 3.12.
python3 -m pip install -q --no-deps --no-index --no-build-isolation --ignore-requires-python . >/dev/null
t0=$(date +%s)
coe train --out "$COE_ARTIFACTS_DIR" | tail -3
echo "router trained in $(( $(date +%s) - t0 )) s"
coe bench quality --experts experts.gpu.yaml --out "$out" "$@"
