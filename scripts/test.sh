#!/usr/bin/env bash
# Installs hf-sparse into a virtual environment and runs the whole test suite, real-model tests included.
#   bash scripts/test.sh                  # default environment (transformers 4.57)
#   bash scripts/test.sh transformers5    # newest transformers 5.x
#   bash scripts/test.sh transformers5-openvino   # transformers 5.5 with optimum-intel 2.2 (OpenVINO export)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-default}"
bash scripts/setup_env.sh "$flavour"
bash scripts/setup_olah.sh   # the local Hub server (its own venv) for the publish round-trip tests
case "$flavour" in transformers5) venv=.venv-tf5 ;; transformers5-openvino) venv=.venv-tf5-ov ;; *) venv=.venv ;; esac
HF_HUB_OFFLINE=1 "$venv/bin/python" -m pytest -m "real or not real" -p no:cacheprovider -q tests
