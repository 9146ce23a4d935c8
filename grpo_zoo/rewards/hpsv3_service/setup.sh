#!/usr/bin/env bash
# Create the HPSv3 service's environment: bash grpo_zoo/rewards/hpsv3_service/setup.sh [VENV]
# (default .venv-hpsv3 in the repository root). On a GPU cluster, install the CUDA build of
# torch/torchvision that matches the cluster first, or edit requirements.txt.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../../.venv-hpsv3}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
"$venv/bin/python" -c "import fastapi, uvicorn, transformers; assert transformers.__version__ == '4.45.2'"
echo "$venv"
