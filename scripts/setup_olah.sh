#!/usr/bin/env bash
# Creates (or reuses) .venv-olah with olah==0.5.4, the offline read-only Hub server used by
# hf_sparse.hub.local_hub. olah needs huggingface_hub>=1.27, which conflicts with transformers 4.57,
# hence its own venv; it only ever runs as a separate process.
#   bash scripts/setup_olah.sh   -> prints only the olah version on success
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-olah
version=0.5.4
py="$venv/bin/python"

installed() {
  "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('olah') != '$version')" 2>/dev/null
}

[ -x "$py" ] || python3 -m venv "$venv"
if ! installed || [ ! -x "$venv/bin/olah-cli" ]; then
  "$py" -m pip install -q --disable-pip-version-check "olah==$version"
fi
# the server venv must stay light: olah itself needs no torch
if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
  echo "error: torch was installed into $venv (pulled in by olah's dependencies?); remove $venv and report" >&2
  exit 1
fi
"$py" -c "import importlib.metadata as m; print('olah', m.version('olah'))"
