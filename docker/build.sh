#!/usr/bin/env bash
# Build the tfpipes image with no image registry and no network inside the build.
#
#   docker/build.sh [--gpu] [--tag IMAGE:TAG]... [--base IMAGE]
#
#   --gpu        docker/Dockerfile.gpu: tensorflow[and-cuda] instead of tensorflow-cpu
#                (default tags tfpipes:VERSION-gpu, tfpipes:latest-gpu)
#   --tag T      tag the image T (repeatable; default tfpipes:VERSION and tfpipes:latest,
#                VERSION read from tfpipes/__init__.py)
#   --base B     build FROM the local image B instead of tfpipes-base:bookworm (B must hold a
#                CPython 3.11 with the venv module; it is not pulled)
#
# Stages, the first two in the background while the third runs:
#   engine     .ci/docker-engine.sh (installs and starts dockerd if none answers)
#   base       docker/make-base.sh  (debootstrap -> docker import; skipped if the image exists)
#   wheelhouse wheelhouse/<cpu|gpu>/: tfpipes' wheel and every requirement as a cp311 manylinux
#              x86_64 wheel, built by the host's CPython 3.11 (~/.cache/pip makes reruns fast),
#              pinned to the versions installed in that Python's environment when it has them
#   image      docker build --network none from the wheelhouse
# Prints each stage's seconds at the end.
#
# Environment:
#   TFPIPES_PYTHON   the host CPython 3.11 to build wheels with (default <repo>/.venv/bin/python,
#                    else python3)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { echo "build.sh: $*" >&2; exit 1; }

gpu=""
tags=()
base=""
while [ $# -gt 0 ]; do
    case $1 in
        --gpu) gpu=1 ;;
        --tag) [ $# -ge 2 ] || die "--tag needs a value"; tags+=("$2"); shift ;;
        --tag=*) tags+=("${1#--tag=}") ;;
        --base) [ $# -ge 2 ] || die "--base needs a value"; base=$2; shift ;;
        --base=*) base=${1#--base=} ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

version=$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$repo/tfpipes/__init__.py")
[ -n "$version" ] || die "no __version__ in $repo/tfpipes/__init__.py"
if [ -n "$gpu" ]; then
    variant=gpu dockerfile=$here/Dockerfile.gpu title=tfpipes-gpu
    [ ${#tags[@]} -gt 0 ] || tags=("tfpipes:$version-gpu" "tfpipes:latest-gpu")
else
    variant=cpu dockerfile=$here/Dockerfile title=tfpipes
    [ ${#tags[@]} -gt 0 ] || tags=("tfpipes:$version" "tfpipes:latest")
fi
make_base=""
if [ -z "$base" ]; then
    base=tfpipes-base:bookworm
    make_base=1
fi

py=${TFPIPES_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py=$repo/.venv/bin/python; else py=python3; fi
fi
# The wheelhouse is the host's own resolution, so the host must be what the image runs.
"$py" -c 'import platform, sys; sys.exit(not (sys.implementation.name == "cpython"
    and sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64"))' ||
    die "$py is not CPython 3.11 on x86_64, the image's Python; set TFPIPES_PYTHON"

# Scratch space beside the wheelhouse, so finished parts move into place by rename.
mkdir -p "$repo/wheelhouse"
# One build at a time per checkout (two at once, e.g. parallel test workers, would both
# rebuild the same parts); a second waits for the first, then finds most parts up to date.
exec 9>"$repo/wheelhouse/.lock"
flock 9
work=$(mktemp -d "$repo/wheelhouse/.build.XXXXXX")
bg=""
cleanup() {
    # A half-done apt-get or debootstrap would leave a broken install behind: let it finish.
    [ -z "$bg" ] || wait "$bg" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
timings=$work/timings
record() { awk -v s="$2" -v e="$(now)" -v n="$1" 'BEGIN { printf "%-10s %6.1fs\n", n, e - s }' >>"$timings"; }
total_start=$(now)

# --- engine and base image, in the background -----------------------------------------------
(
    t=$(now); "$repo/.ci/docker-engine.sh"; record engine "$t"
    if [ -n "$make_base" ]; then t=$(now); "$here/make-base.sh" "$base"; record base "$t"; fi
) >"$work/engine.log" 2>&1 &
bg=$!

# --- wheelhouse -------------------------------------------------------------------------------
t=$(now)
wh=$repo/wheelhouse/$variant
mkdir -p "$wh"
pip=("$py" -m pip --disable-pip-version-check -q)
# Some hosts list extra local indexes that lack most projects; their warnings are noise.
quiet_pip() { "${pip[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# Each part of the wheelhouse is rebuilt only when its inputs change (a key file beside it):
# a rerun with nothing changed takes seconds, and the identical files keep Docker's cache.
sha() { sha256sum | cut -c1-64; }
fresh() { [ -d "$wh/$1" ] && [ "$(cat "$wh/$1.key" 2>/dev/null)" = "$2" ]; }
commit() { rm -rf "${wh:?}/$1"; mv "$work/$1" "$wh/$1"; echo "$2" >"$wh/$1.key"; }

# tfpipes' wheel, from a copy of the files git would see: no build/ or egg-info in the working
# tree, no race with a concurrent `pip install .`. A fixed SOURCE_DATE_EPOCH makes the wheel
# byte-identical for identical sources.
mkdir -p "$work/src" "$work/app" "$work/deps" "$work/pip"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
        tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$work/src" -xf -
else
    tar -C "$repo" --exclude=./.venv --exclude=./wheelhouse -cf - . | tar -C "$work/src" -xf -
fi
app_key=$(cd "$work/src" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha)
if ! fresh app "$app_key"; then
    SOURCE_DATE_EPOCH=315532800 quiet_pip wheel --progress-bar off --no-deps -w "$work/app" "$work/src"
    commit app "$app_key"
fi

# From the wheel's metadata: requirements.txt (for --gpu, tensorflow-cpu swapped for the `gpu`
# extra) and the labels' values. From the build Python's environment: constraints pinning
# every requirement to the version installed there, i.e. the versions the tests ran against
# (for --gpu, tensorflow to the installed tensorflow-cpu's version).
"$py" - "$(ls "$wh"/app/*.whl)" "$variant" "$work" >"$work/meta" <<'EOF'
import email, importlib.metadata, sys, zipfile
import pip
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

whl, variant, work = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    meta = email.message_from_bytes(
        z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))
reqs = []
for line in meta.get_all("Requires-Dist") or []:
    req = Requirement(line)
    always = req.marker is None or req.marker.evaluate({"extra": ""})
    if variant == "gpu":
        in_gpu = req.marker is not None and req.marker.evaluate({"extra": "gpu"})
        if canonicalize_name(req.name) == "tensorflow-cpu" or not (always or in_gpu):
            continue
    elif not always:
        continue
    req.marker = None
    reqs.append(req)
if variant == "gpu" and not any(canonicalize_name(r.name) == "tensorflow" for r in reqs):
    sys.exit("build.sh: setup.py's extras_require has no 'gpu' entry naming tensorflow")
with open(f"{work}/requirements.txt", "w") as f:
    f.write("".join(f"{r}\n" for r in reqs))

installed = {canonicalize_name(d.metadata["Name"]): d.version
             for d in importlib.metadata.distributions() if d.metadata["Name"]}
# Only an environment that satisfies tfpipes' requirements was resolved for it; pins from any
# other would more likely conflict than help.
fits = all(canonicalize_name(r.name) in installed
           and r.specifier.contains(installed[canonicalize_name(r.name)], prereleases=True)
           for r in reqs if canonicalize_name(r.name) != "tensorflow")
if variant == "gpu" and "tensorflow-cpu" in installed:
    installed.setdefault("tensorflow", installed["tensorflow-cpu"])
skip = {"tfpipes", "pip", "setuptools", "wheel"}
with open(f"{work}/constraints.txt", "w") as f:
    if fits:
        f.write("".join(f"{n}=={v}\n" for n, v in sorted(installed.items()) if n not in skip))
    else:
        print("build.sh: this Python's packages do not satisfy tfpipes' requirements; the "
              "wheelhouse takes the newest versions instead of pinning to them", file=sys.stderr)

source = next((u.split(",", 1)[1].strip() for u in meta.get_all("Project-URL") or []
               if u.lower().startswith(("source", "repository", "homepage"))),
              meta.get("Home-page") or "")
print(meta["Version"])
print(meta.get("License-Expression") or meta.get("License") or "")
print(source)
print(meta.get("Summary") or "")
print(pip.__version__)
EOF
{ read -r whl_version; read -r licenses; read -r source; read -r description; read -r pip_version; } <"$work/meta"
[ "$whl_version" = "$version" ] ||
    die "setup.py says version $whl_version, tfpipes/__init__.py says $version"
if [ -z "$source" ]; then source=$(git -C "$repo" remote get-url origin 2>/dev/null || true); fi

# The pip that installs inside the build: the host's own version, as a wheel.
if ! fresh pip "$pip_version"; then
    quiet_pip download --progress-bar off --no-deps --only-binary=:all: -d "$work/pip" "pip==$pip_version"
    commit pip "$pip_version"
fi

# Every requirement as a wheel. Binary wheels come from PyPI (and ~/.cache/pip); the few
# projects that publish only sdists (kfp, kfp-server-api) are pure Python and get built here.
deps_key=$(cat "$work/requirements.txt" "$work/constraints.txt" | sha)
if ! fresh deps "$deps_key"; then
    quiet_pip wheel --progress-bar off --prefer-binary -w "$work/deps" \
        -r "$work/requirements.txt" -c "$work/constraints.txt"
    "$py" - "$work/deps" <<'EOF'
import pathlib, sys
try:
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename
except ImportError:
    from pip._vendor.packaging.tags import compatible_tags, cpython_tags
    from pip._vendor.packaging.utils import parse_wheel_filename

# What the image's CPython 3.11 on Debian bookworm (glibc 2.36) x86_64 accepts.
platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)]
platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
accepted = set(cpython_tags((3, 11), ["cp311"], platforms))
accepted |= set(compatible_tags((3, 11), "cp311", platforms))
bad = sorted(p.name for p in pathlib.Path(sys.argv[1]).glob("*.whl")
             if not parse_wheel_filename(p.name)[3] & accepted)
if bad:
    sys.exit("build.sh: wheels the image cannot install (built from sdists with C code?): "
             + ", ".join(bad))
EOF
    cp "$work/requirements.txt" "$work/deps/requirements.txt"
    commit deps "$deps_key"
fi
record wheelhouse "$t"

# --- image ------------------------------------------------------------------------------------
if ! wait "$bg"; then
    bg=""
    cat "$work/engine.log" >&2
    die "the Docker engine or the base image failed (log above)"
fi
bg=""
cat "$work/engine.log" >&2
docker image inspect "$base" >/dev/null 2>&1 ||
    die "base image $base is not in the engine's store (it is never pulled)"

t=$(now)
# The Dockerfiles need BuildKit (RUN --mount). Docker >= 23 clients reach it through the buildx
# plugin; older clients, like Debian's docker.io 20.10 that .ci/docker-engine.sh installs as
# /usr/bin/docker, have it built in.
docker_cli=""
for cli in "$(command -v docker || true)" /usr/bin/docker; do
    [ -x "$cli" ] || continue
    if "$cli" buildx version >/dev/null 2>&1; then docker_cli=$cli; break; fi
    major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then docker_cli=$cli; break; fi
done
[ -n "$docker_cli" ] ||
    die "no docker client with BuildKit: install the buildx plugin (or Debian's docker.io)"

revision=$(git -C "$repo" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)
# GIT_OPTIONAL_LOCKS=0: `git status` must not rewrite the index behind a concurrent git user.
if [ "$revision" != unknown ] &&
    [ -n "$(GIT_OPTIONAL_LOCKS=0 git -C "$repo" status --porcelain 2>/dev/null)" ]; then
    revision=$revision-dirty
fi
tag_args=()
for tag in "${tags[@]}"; do tag_args+=(-t "$tag"); done
DOCKER_BUILDKIT=1 "$docker_cli" build --network none -f "$dockerfile" "${tag_args[@]}" \
    --build-arg BASE="$base" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$revision" \
    --build-arg SOURCE="${source:-NOASSERTION}" \
    --build-arg LICENSES="${licenses:-NOASSERTION}" \
    --build-arg DESCRIPTION="$description" \
    "$wh"
record image "$t"
# The images the new tags replaced are dangling now; drop them (not the ones containers use).
"$docker_cli" image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null
record total "$total_start"

size=$(docker image inspect --format '{{.Size}}' "${tags[0]}" | awk '{printf "%.0f MB", $1/1e6}')
echo "build.sh: built ${tags[*]} ($size)" >&2
cat "$timings" >&2
