#!/usr/bin/env bash
# Installs hf-sparse and runs the main job: the whole pipeline on real weights and data, small budget
# (prune once -> sparse transfer -> ONNX fp32 + INT8 and OpenVINO INT8 -> publish to the local Hub -> load back;
# ~6 min on 2 cores, README "Two commands").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh default
bash scripts/setup_olah.sh
out="${OUT:-out/pipeline-$(date +%Y%m%d-%H%M%S)}"
HF_HUB_OFFLINE=1 .venv/bin/python examples/pipeline.py --out "$out" "$@"
