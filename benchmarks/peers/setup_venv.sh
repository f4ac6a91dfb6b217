#!/usr/bin/env bash
# Create benchmarks/peers/.venv: the peers (timm, torchdistill) in their own environment, with the
# torch and torchvision versions of kdlight's .venv. Idempotent: a finished venv is left as it is.
# Usage: bash benchmarks/peers/setup_venv.sh [KDLIGHT_PYTHON]   (default .venv/bin/python)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kd_python="${1:-.venv/bin/python}"
venv="$here/.venv"
stamp="$venv/.peers-installed"
timm_version="${TIMM_VERSION:-1.0.31}"
torchdistill_version="${TORCHDISTILL_VERSION:-1.1.5}"

# torch/torchvision exactly as kdlight's venv has them (the local tag, e.g. +cu130, is dropped:
# the index serves the build for this platform)
versions="$("$kd_python" -c 'import torch, torchvision; print(torch.__version__.split("+")[0], torchvision.__version__.split("+")[0])')"
read -r torch_version torchvision_version <<<"$versions"
want="torch==$torch_version torchvision==$torchvision_version timm==$timm_version torchdistill==$torchdistill_version"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "peers venv: $venv ($want)" >&2
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install --quiet $want pyyaml >&2
echo "$want" >"$stamp"
echo "peers venv: $venv ($want)" >&2
