#!/usr/bin/env bash
# The full `coe bench quality` on a GPU device: the default three experts through vLLM (experts.gpu.yaml).
#
# Here, once: ../shared/tools/vllm-on-device/prepare (vLLM and its dependencies into .carry/), then
# evals/gpu/pack.py packs them with coe's own wheels into .qcarry/NN (the command is in docs/quality.md).
# On the device, one call per folder, back to back:  mkdir -p /tmp/pk && cp .qcarry/NN/* /tmp/pk/
#   bash evals/gpu/quality_on_device.sh prepare     whenever a useful part has arrived: installs what is
#                                                   complete, and trains the router in the background
#   bash evals/gpu/quality_on_device.sh bench OUT [coe bench quality options]    after the last folder
# COE_EXPERTS_FILE picks the experts (default experts.gpu.yaml; experts.large.gpu.yaml adds the 1.5B coder,
# whose parts travel as a second pack unpacked into /tmp/pk15). Every /tmp/pk* folder is unpacked.
set -euo pipefail
step=${1:?usage: quality_on_device.sh prepare | bench OUT_DIR [options]}
shift
export COE_CACHE_DIR=/tmp/coe-cache COE_ARTIFACTS_DIR=/tmp/coe-artifacts PYTHONPATH=/tmp/site
export COE_EXPERTS_FILE=${COE_EXPERTS_FILE:-experts.gpu.yaml}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_HOST_IP=127.0.0.1
# Engine starts in seconds instead of a minute of compiling; these models are small enough that eager decoding
# is not what the run waits for.
export COE_VLLM_ENGINE_ARGS=${COE_VLLM_ENGINE_ARGS:-'{"enforce_eager": true}'}
CONVERT='
import os, yaml
from pathlib import Path
from coe.core.assets import AssetError, check_model_ref
from coe.core.weights import prepare_local_weights
for e in yaml.safe_load(open(os.environ["COE_EXPERTS_FILE"]))["experts"]:
    try:
        check_model_ref(e["model"])
    except AssetError:
        continue
    prepare_local_weights(e["model"], Path(os.environ["COE_CACHE_DIR"]))
'
case "$step" in
  prepare)
    for pk in /tmp/pk*/; do python3 evals/gpu/pack.py unpack "$pk" --site /tmp/site --cache "$COE_CACHE_DIR" --partial; done
    # coe itself, editable (its `coe` command and the benchmarks' entry point); the image's Python is 3.12.
    python3 -m pip install -q --no-deps --no-index --no-build-isolation --ignore-requires-python -e . >/dev/null
    # The router needs the encoder and MMLU, not the experts' weights: it trains while the rest travels.
    if [ ! -e /tmp/train.started ]; then
      touch /tmp/train.started
      setsid nohup bash -c "coe train --if-stale --out $COE_ARTIFACTS_DIR; echo \$? > /tmp/train.rc" >/tmp/train.log 2>&1 &
      echo "router training started in the background (/tmp/train.log)"
    fi
    # Convert, in the background, the experts' GGUFs whose packages are in (the bench would do it first thing).
    setsid nohup python3 -c "$CONVERT" >>/tmp/convert.log 2>&1 &
    ;;
  bench)
    out=${1:?usage: quality_on_device.sh bench OUT_DIR [options]}
    shift
    for pk in /tmp/pk*/; do python3 evals/gpu/pack.py unpack "$pk" --site /tmp/site --cache "$COE_CACHE_DIR"; done
    if [ -e /tmp/train.started ]; then
      while [ ! -e /tmp/train.rc ]; do sleep 2; done
    fi
    if [ "$(cat /tmp/train.rc 2>/dev/null)" != 0 ]; then  # not started, or started too early (no encoder yet)
      coe train --if-stale --out "$COE_ARTIFACTS_DIR" >/tmp/train.log 2>&1 || { tail -20 /tmp/train.log >&2; exit 1; }
    fi
    tail -4 /tmp/train.log
    coe bench quality --experts "$COE_EXPERTS_FILE" --out "$out" "$@"
    ;;
  *) echo "unknown step '$step'" >&2; exit 2 ;;
esac
