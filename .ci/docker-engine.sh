#!/usr/bin/env bash
# Make a Docker engine answer on this machine; idempotent.
#
#   .ci/docker-engine.sh
#
# If `docker info` already answers, nothing happens. Otherwise installs docker.io and
# debootstrap (only the missing ones) and starts dockerd in the background with NO bridge
# network: no docker0, no iptables/NAT rules. Containers therefore only get `--network none`
# (or host); the default bridge's private addresses are off limits on CI machines.
#
# Environment:
#   TFPIPES_DOCKERD_LOG      dockerd's log file            (default /tmp/tfpipes-dockerd.log)
#   TFPIPES_DOCKERD_TIMEOUT  seconds to wait for the engine (default 60)
# Exit status: 0 when `docker info` answers, non-zero (with the log's tail) otherwise.
set -euo pipefail

log=${TFPIPES_DOCKERD_LOG:-/tmp/tfpipes-dockerd.log}
deadline_s=${TFPIPES_DOCKERD_TIMEOUT:-60}

engine_up() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && engine_up; then
    exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    echo "docker-engine: installing ${missing[*]}" >&2
    # The package's postinst would start dockerd through the init script with the default
    # bridge; a policy-rc.d that answers 101 forbids that. Keep any existing one.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_install() {
        $sudo env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
    }
    # The package lists of a fresh machine are usually current; refresh only when needed,
    # which saves the update's time on most runs.
    if ! apt_install; then
        $sudo apt-get update -q
        apt_install
    fi
    if [ -n "$made_policy" ]; then
        $sudo rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
fi

if ! pgrep -x dockerd >/dev/null; then
    echo "docker-engine: starting dockerd (log: $log)" >&2
    # setsid + nohup: the engine outlives this script and the CI step that ran it.
    $sudo setsid nohup dockerd \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
        >"$log" 2>&1 </dev/null &
fi

end=$((SECONDS + deadline_s))
until engine_up; do
    if [ $SECONDS -ge $end ]; then
        echo "docker-engine: no answer from dockerd after ${deadline_s}s; log tail:" >&2
        tail -n 30 "$log" >&2 || true
        exit 1
    fi
    sleep 0.5
done
echo "docker-engine: ready ($(docker version --format '{{.Server.Version}}'))" >&2
