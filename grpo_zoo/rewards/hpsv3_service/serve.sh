#!/usr/bin/env bash
# Start the HPSv3 service: bash grpo_zoo/rewards/hpsv3_service/serve.sh CHECKPOINT BASE_MODEL_DIR [server.py options]
#   e.g. serve.sh /models/HPSv3/HPSv3.safetensors /models/Qwen2-VL-7B-Instruct --port 8765 --device cuda
# The environment comes from setup.sh (HPSV3_VENV overrides where it is).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${HPSV3_VENV:-$here/../../../.venv-hpsv3}"
[ -x "$venv/bin/python" ] || { echo "no HPSv3 environment at $venv: run bash $here/setup.sh" >&2; exit 2; }
ckpt="${1:?usage: serve.sh CHECKPOINT BASE_MODEL_DIR [options]}"; base="${2:?usage: serve.sh CHECKPOINT BASE_MODEL_DIR [options]}"
shift 2
export HF_HUB_OFFLINE=1
exec "$venv/bin/python" "$here/server.py" --checkpoint "$ckpt" --base-model "$base" "$@"
