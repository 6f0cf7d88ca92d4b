#!/usr/bin/env bash
# Set up, then run the whole pipeline locally on a synthetic data set, ending in an exported
# model and a prediction from it. Extra arguments go to `tfpipes demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/tfpipes demo --workdir "${TFPIPES_DEMO_DIR:-$PWD/tfpipes-demo}" "$@"
