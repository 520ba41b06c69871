#!/bin/bash
# Build the CPU image with podman on a machine without registry access (`make image`):
#  1. a Debian bookworm base image made with debootstrap (python3, venv, CA certificates),
#     built once and kept in podman's storage;
#  2. llama-cpp-python's wheel taken from this machine's pip cache (pip compiled it once), so
#     the image build does not compile it again (llama.cpp tunes that build to this machine's
#     CPU: an image to publish is built with plain `docker build`, which compiles it);
#  3. `podman build` of docker/Dockerfile on that base, the machine's CA bundle as a secret.
# Environment: IMAGE (default localhost/slmserve:cpu), BASE_IMAGE, PYTHON (a venv's python with
# llama-cpp-python installed), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/slmserve:cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/slmserve-base:bookworm}
PYTHON=${PYTHON:-.venv/bin/python}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/podman.conf}

if ! podman image exists "$BASE_IMAGE"; then
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    echo "built base image $BASE_IMAGE"
fi

wheels=build/wheels
mkdir -p "$wheels"
llama_version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$wheels" "llama-cpp-python==$llama_version"

podman build --format docker --pull=never \
    --file docker/Dockerfile \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --volume "$PWD/$wheels:/wheels:ro" \
    --secret id=ca_bundle,src="$CA_BUNDLE" \
    --tag "$IMAGE" .
