#!/usr/bin/env bash
# The GPU self-check (docs/gpu.md): full-size random-weight TRELLIS models through the worker and front end,
# seconds per stage, peak VRAM, RSS, gaussian counts at 60/50 and 25/25 steps. Offline once installed.
#   scripts/gpu_check.sh [--work DIR] [--dinov2-hub DIR] [--steps 60/50,25/25] [--deadline 450] [--image-only]
# A CPU-sized run (tiny models): scripts/gpu_check.sh --size tiny --device cpu --steps 2/2
set -euo pipefail
cd "$(dirname "$0")/.."
exec timeout --kill-after=30 "${GPU_CHECK_TIMEOUT_S:-480}" .venv/bin/python -m generation.gpu_check "$@"
