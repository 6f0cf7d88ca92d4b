#!/usr/bin/env bash
# Install the tools only the tests need (never runtime dependencies of tfpipes), if missing.
# Run after scripts/setup.sh (it needs .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
# Test-only tools, never runtime dependencies of tfpipes:
# - tensorflow-serving-api, whose protos read the exports' warmup files back. Its wheel requires
#   the full `tensorflow`, which would clash with `tensorflow-cpu`: install it without its
#   dependencies, at the installed TensorFlow's minor version (the protos must match it).
if ! .venv/bin/python -c "import tensorflow_serving.apis.prediction_log_pb2" 2>/dev/null; then
  tf_version=$(.venv/bin/python -c "import importlib.metadata as m
print(next(d.version for d in m.distributions() if d.metadata['Name'].lower().replace('_', '-')
           in ('tensorflow-cpu', 'tensorflow', 'tensorflow-macos')))" 2>/dev/null)
  .venv/bin/python -m pip install -q --no-deps "tensorflow-serving-api~=${tf_version%.*}.0"
fi
# - Debian's chromium, the headless browser the HTML report tests render the reports in.
if ! command -v chromium >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing chromium (headless browser for the report tests)" >&2
  chromium_install() {
    $sudo env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends chromium >/dev/null
  }
  # The package lists of a fresh machine are usually current; refresh only when needed.
  chromium_install || { $sudo apt-get update -q >/dev/null && chromium_install; }
fi
