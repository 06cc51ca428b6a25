#!/usr/bin/env bash
# Set up and run the gateway's main job on embedded defaults: gateway + a local partner,
# a sample study sent through it; prints where the output landed and where the metrics are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/dicom-gateway demo --out demo-out "$@"
