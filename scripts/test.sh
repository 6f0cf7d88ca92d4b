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
# Two test processes, each taking whole files (module fixtures stay shared within a file):
# most tests wait on subprocesses, servers and containers, so two overlap well on 2 cores.
# TFPIPES_TEST_WORKERS=0 runs everything in this one process. The 25 slowest tests are listed at the end.
.venv/bin/python -m pytest -n "${TFPIPES_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
