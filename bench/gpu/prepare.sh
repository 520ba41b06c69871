#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI) before a GPU run: everything bench/gpu/run.sh needs on a
# GPU machine that has nvcc and cmake but no network, in files under build/gpu/ (git-ignored):
#
#   build/gpu/carry/    the llama-cpp-python sdist (pinned in pyproject.toml), trimmed to what
#                       the CUDA build needs; the wheels slmserve's server and tests need; the
#                       SmolLM2 GGUF's header (the "skeleton" the twin model is made from)
#   build/gpu/model-1/  the first half of the real SmolLM2 GGUF   (one call carries one half:
#   build/gpu/model-2/  the second half                            98 MB > 64 MiB per call)
#
# It prints what each device call carries and checks it against the 64 MiB limit.
# Usage: bash bench/gpu/prepare.sh [--python-version 3.12]   (the GPU machine's Python)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST=$REPO/build/gpu
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/slmserve
MODEL=$REPO/models/SmolLM2-135M-Instruct.Q4_1.gguf
LIMIT=$((64 * 1024 * 1024))
WHEEL_PYTHON=3.12 # python3 on the GPU machine is 3.12 (KINDS.md; run.sh checks it there)

while [[ $# -gt 0 ]]; do
  case $1 in
    --python-version) WHEEL_PYTHON=$2; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "prepare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { printf '[prepare] %s\n' "$*"; }
die() { printf '[prepare] ERROR: %s\n' "$*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
bytes() { du -sb "$@" | awk '{ s += $1 } END { print s + 0 }'; }

PYTHON=$REPO/.venv/bin/python
[[ -x $PYTHON ]] || PYTHON=$(command -v python3) || die "no python3 here"
PIN=$(sed -n 's/.*"llama-cpp-python==\([0-9][0-9.]*\)".*/\1/p' "$REPO/pyproject.toml" | head -1)
[[ -n $PIN ]] || die "no llama-cpp-python==X pin found in pyproject.toml"
[[ -f $MODEL ]] || die "$MODEL is missing: run \`make models\` first"
say "llama-cpp-python $PIN (pyproject.toml), wheels for Python $WHEEL_PYTHON"

rm -rf "$DEST/carry" "$DEST/model-1" "$DEST/model-2"
mkdir -p "$DEST/carry/wheels" "$DEST/model-1" "$DEST/model-2" "$CACHE/sdist"

# 1. The sdist, cached: it is 77 MB and PyPI is the only source.
SDIST=$CACHE/sdist/llama_cpp_python-$PIN.tar.gz
if [[ ! -f $SDIST ]]; then
  say "downloading the llama-cpp-python $PIN sdist"
  "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$PIN" \
    --dest "$CACHE/sdist"
fi
[[ -f $SDIST ]] || die "pip did not leave $SDIST"

# 2. Trim it to what `cmake` + `pip install` need for a CUDA build of libllama, llama-server
#    and llama-batched-bench. Unused backends are only add_subdirectory'd when enabled, so their
#    folders can go; tools/CMakeLists.txt adds every small tool, so those stay (a few KB each).
WORK=$(mktemp -d "$CACHE/prepare.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$SDIST" -C "$WORK"
ROOT=$WORK/llama_cpp_python-$PIN
LC=$ROOT/vendor/llama.cpp
[[ -f $LC/CMakeLists.txt ]] || die "unexpected sdist layout: no vendor/llama.cpp/CMakeLists.txt"
before=$(bytes "$ROOT")
rm -rf "${ROOT:?}"/{.git,.github,docs,examples,tests,docker,scripts,mkdocs.yml,.readthedocs.yaml}
# A submodule pointer into the .git removed above: without it build-info says "unknown".
rm -rf "${LC:?}"/{.git,.github,.devops,.gemini,.pi,models,docs,media,tests,examples,pocs,benches} \
  "${LC:?}"/{ci,skills,requirements,conversion,gguf-py,licenses,AUTHORS,requirements.txt} \
  "${LC:?}"/{AGENTS.md,CLAUDE.md,build-xcframework.sh,flake.nix} "${LC:?}"/convert_*.py
# scripts/: only the UI-asset step that tools/ui/CMakeLists.txt runs (it writes an empty UI
# table with LLAMA_BUILD_UI=OFF and LLAMA_USE_PREBUILT_UI=OFF).
find "$LC/scripts" -mindepth 1 -maxdepth 1 ! -name ui-assets.cmake -exec rm -rf {} +
# The web UI's sources, tests and assets: only its CMake glue stays.
find "$LC/tools/ui" -mindepth 1 -maxdepth 1 ! -name CMakeLists.txt ! -name 'ui.*.in' -exec rm -rf {} +
rm -rf "$LC"/tools/server/{tests,bench,README.md,README-dev.md} \
  "$LC"/tools/mtmd/{tests,tests.sh,test-1.jpeg,test-2.mp3,test-3.mp4,requirements.txt}
for backend in blas cann et hexagon hip metal musa opencl openvino rpc sycl virtgpu vulkan \
  webgpu zdnn zendnn; do
  rm -rf "$LC/ggml/src/ggml-$backend"
done
rm -f "$LC/ggml/src/ggml-cuda/template-instances/generate_cu_files.py"
after=$(bytes "$ROOT")
TARBALL=$DEST/carry/llama-cpp-python-$PIN-trimmed.tar.gz
tar -C "$WORK" --sort=name --owner=0 --group=0 --numeric-owner -czf "$TARBALL" \
  "llama_cpp_python-$PIN"
say "sources: $(mib "$before") unpacked -> $(mib "$after") trimmed -> $(mib "$(bytes "$TARBALL")") tar.gz"

# 3. The model. 98 MB cannot travel in one call; its header can (the twin's skeleton), and the
#    file itself can in two halves over two calls to one warm machine (run.sh joins them).
SKELETON=$DEST/carry/SmolLM2-135M-Instruct.Q4_1.skeleton.gz
(cd "$REPO" && "$PYTHON" -m bench.gpu.twin skeleton "$MODEL" "$SKELETON") |
  sed 's/^/[prepare] model: /'
model_bytes=$(stat -c %s "$MODEL")
half=$(((model_bytes + 1) / 2))
split --bytes="$half" --numeric-suffixes=1 --suffix-length=1 "$MODEL" "$WORK/part"
mv "$WORK/part1" "$DEST/model-1/SmolLM2-135M-Instruct.Q4_1.gguf.part1"
mv "$WORK/part2" "$DEST/model-2/SmolLM2-135M-Instruct.Q4_1.gguf.part2"

# 4. Wheels: everything slmserve (its [project] dependencies), llama-cpp-python and pytest
#    need, walked through the installed metadata at the versions this virtualenv runs, minus
#    numpy (the GPU machine has it; 16 MB) and the two projects themselves (the tree and the
#    sdist travel). Pure-Python wheels, plus the binary ones built for the GPU machine's Python.
mapfile -t pins < <(cd "$REPO" && "$PYTHON" -m bench.gpu.closure slmserve llama-cpp-python \
  pytest --own slmserve llama-cpp-python --skip numpy)
[[ ${#pins[@]} -gt 10 ]] || die "could not list slmserve's dependencies (installed in $PYTHON?)"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DEST/carry/wheels" \
  --python-version "$WHEEL_PYTHON" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "${pins[@]}" 2>&1 |
  grep -v "^WARNING: Location" || true
printf '%s\n' "${pins[@]}" >"$DEST/carry/wheels/requirements.txt"
count=$(find "$DEST/carry/wheels" -name '*.whl' | wc -l)
[[ $count -eq ${#pins[@]} ]] || die "expected ${#pins[@]} wheels, pip left $count"
say "wheels: $count for Python $WHEEL_PYTHON, $(mib "$(bytes "$DEST/carry/wheels")")"

# 5. What the GPU machine checks before it trusts the files.
{
  echo "llama_cpp_python=$PIN"
  echo "wheel_python=$WHEEL_PYTHON"
  echo "model_sha256=$(sha256sum "$MODEL" | cut -d' ' -f1)"
  echo "model_bytes=$model_bytes"
  echo "prepared=$(date -u +%Y-%m-%dT%H:%MZ) on $(uname -srm)"
} >"$DEST/carry/manifest.txt"
(cd "$DEST/carry" && sha256sum "$(basename "$TARBALL")" "$(basename "$SKELETON")" >SHA256SUMS)

# 6. Sizes, per device call: the working tree (tracked + untracked-not-ignored) + carried paths.
tree=$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
  xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
carry=$(bytes "$DEST/carry")
one=$(bytes "$DEST/model-1")
two=$(bytes "$DEST/model-2")
status=0
report() { # label, total
  local verdict=ok
  [[ $2 -lt $LIMIT ]] || { verdict="OVER the 64 MiB limit"; status=1; }
  say "$(printf '%-44s %10s  %s' "$1" "$(mib "$2")" "$verdict")"
}
say "carried per device call (limit 64 MiB = $LIMIT bytes):"
say "  working tree $(mib "$tree"), build/gpu/carry $(mib "$carry"), model halves $(mib "$one") + $(mib "$two")"
report "single call: carry (twin model)" $((tree + carry))
report "call 1 of 2: carry + model-1" $((tree + carry + one))
report "call 2 of 2: carry + model-2" $((tree + carry + two))
exit $status
