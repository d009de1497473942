#!/usr/bin/env bash
# Installs hf-sparse and runs the main job on real weights and data (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh default
HF_HUB_OFFLINE=1 .venv/bin/python examples/minilm_90.py --out out/minilm-l6-90 "$@"
