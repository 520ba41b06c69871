#!/bin/sh
# The Python install of both images (docker/Dockerfile and docker/Dockerfile.cuda): the same
# commands, so building the CPU image exercises the CUDA image's steps too.
#   EXTRAS      which ONNX Runtime GenAI build: cpu or cuda (exactly one, see README)
#   CMAKE_ARGS  passed to llama-cpp-python's source build (-DGGML_CUDA=on for CUDA)
# A CA bundle given as the build secret "ca_bundle" is used by pip (for builds behind a TLS
# inspecting proxy); nothing of it stays in the image.
# Wheels found in /wheels (a build-time mount, e.g. `podman build -v "$PWD/wheels:/wheels"`) are
# preferred to building from source: llama-cpp-python compiles for minutes otherwise.
set -eu
if [ -f /run/secrets/ca_bundle ]; then
    export PIP_CERT=/run/secrets/ca_bundle
fi
if [ -d /wheels ]; then
    export PIP_FIND_LINKS=/wheels
fi
python3 -m venv /opt/slmserve
/opt/slmserve/bin/python -m pip install --quiet --upgrade pip
/opt/slmserve/bin/python -m pip install --quiet "/src[${EXTRAS:?EXTRAS must name cpu or cuda}]"
