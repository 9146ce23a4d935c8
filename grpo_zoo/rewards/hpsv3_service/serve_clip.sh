#!/usr/bin/env bash
# Start a CLIP-family reward service: bash grpo_zoo/rewards/hpsv3_service/serve_clip.sh SCORER MODEL_DIR [server.py options]
#   SCORER is pickscore or clip_score; e.g. serve_clip.sh pickscore /models/PickScore_v1 \
#       --processor /models/CLIP-ViT-H-14-laion2B-s32B-b79K --port 8766 --device cuda
# The same service (protocol, token, limits) as HPSv3's, in its environment (setup.sh; HPSV3_VENV overrides).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${HPSV3_VENV:-$here/../../../.venv-hpsv3}"
[ -x "$venv/bin/python" ] || { echo "no reward-service environment at $venv: run bash $here/setup.sh" >&2; exit 2; }
scorer="${1:?usage: serve_clip.sh pickscore|clip_score MODEL_DIR [options]}"; model="${2:?usage: serve_clip.sh SCORER MODEL_DIR [options]}"
shift 2
export HF_HUB_OFFLINE=1
exec "$venv/bin/python" "$here/server.py" --scorer "$scorer" --model "$model" "$@"
