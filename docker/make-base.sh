#!/usr/bin/env bash
# Build the base image tfpipes-base:bookworm without any image registry.
#
#   docker/make-base.sh [IMAGE]        (default tfpipes-base:bookworm; skipped if it exists)
#
# debootstrap (minbase + python3, python3-venv, ca-certificates) from the Debian mirror this
# host's apt already uses, trimmed of package lists, docs and man pages, then `docker import`.
# Debian bookworm's python3 is 3.11, the same CPython as the host that builds the wheelhouse,
# so the host's cp311 manylinux wheels install inside.
#
# Environment:
#   TFPIPES_DEBIAN_MIRROR   override the mirror read from /etc/apt/sources.list{,.d/*}
#   TFPIPES_DEBOOTSTRAP_CACHE  where debootstrap keeps its .debs (default ~/.cache/tfpipes/debootstrap)
set -euo pipefail

image=${1:-tfpipes-base:bookworm}
suite=bookworm
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "make-base: $image exists" >&2
    exit 0
fi

# The first non-security Debian mirror that serves $suite, from deb822 .sources files or
# one-line .list files (files renamed to *.disabled* are not read by apt, so not by us either).
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # Stanzas are separated by blank lines; print URIs of stanzas whose Suites has $suite.
        awk -v suite="$suite" '
            function flush() { if (uris != "" && suites ~ ("(^| )" suite "( |$)")) print uris; uris = ""; suites = "" }
            /^[ \t]*$/ { flush(); next }
            /^URIs:/   { sub(/^URIs:[ \t]*/, ""); uris = $1 }
            /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI suite components...
        sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
    done
}
mirror=${TFPIPES_DEBIAN_MIRROR:-$(find_mirror | grep -v -- '-security' | head -n 1 || true)}
if [ -z "$mirror" ]; then
    echo "make-base: no Debian $suite mirror in /etc/apt/sources.list{,.d/*}; set TFPIPES_DEBIAN_MIRROR" >&2
    exit 1
fi

command -v debootstrap >/dev/null || {
    echo "make-base: debootstrap is missing; run .ci/docker-engine.sh (it installs it)" >&2
    exit 1
}

rootfs="$here/.rootfs"
cache=${TFPIPES_DEBOOTSTRAP_CACHE:-$HOME/.cache/tfpipes/debootstrap}
rm -rf "$rootfs"
mkdir -p "$rootfs" "$cache"
trap 'rm -rf "$rootfs"' EXIT

echo "make-base: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --cache-dir="$cache" "$suite" "$rootfs" "$mirror" >/dev/null

# Trim what an image never needs, and keep later dpkg installs (if any) from bringing it back.
# python-wheels holds the pip and setuptools wheels that `python3 -m venv` would install; the
# tfpipes images make their venv --without-pip and bring pip in the build context, and hold no
# wheel files.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
    "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian "$rootfs"/usr/share/linda \
    "$rootfs"/usr/share/python-wheels/*.whl
find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
cat >"$rootfs"/etc/dpkg/dpkg.cfg.d/01-tfpipes-nodoc <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF

tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite $mirror" \
    - "$image" >/dev/null
echo "make-base: $image ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))" >&2
