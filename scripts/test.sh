#!/usr/bin/env bash
# Set up everything the tests need (Python packages, test-only tools, the Docker engine),
# then run lint and every test. Extra arguments go to pytest (e.g. -m "not slow" for the fast set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/test-tools.sh
bash .ci/docker-engine.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
