#!/usr/bin/env bash
# Run THERE: on the GPU machine (nvcc, cmake, no network), in the repository root, after
# bench/gpu/prepare.sh ran here and build/gpu/carry (+ one model half) travelled with the tree.
#
#   build   llama-cpp-python with CUDA from the trimmed vendored sources, one compile: `pip
#           install --no-build-isolation` when scikit-build-core is there (llama-server and
#           llama-batched-bench come out of the same build folder), else cmake on the vendored
#           llama.cpp with llama_cpp pointed at it through LLAMA_CPP_LIB_PATH. Resumable: a
#           build cut off by the time limit goes on where it stopped in the next call.
#   test    tests/engines/test_gguf.py with SLMSERVE_TEST_PROVIDER=cuda (every layer offloaded)
#   bench   c=1/8/32: llama_cpp in-process, slmserve's engine in-process, slmserve over HTTP,
#           llama.cpp's llama-server over HTTP (bench/gpu/bench.py), plus llama-batched-bench
#
# The model: the real SmolLM2 GGUF when both halves reached this machine (two calls carry one
# each; run.sh keeps the first under build/gpu/work), else its "twin" (the real header and
# tensor layout, random weights: the same speed, text that means nothing).
# Everything it writes for the reader goes to $OUT (summary.md first), else build/gpu/work/out.
#
# Usage: bash bench/gpu/run.sh [build] [test] [bench] [options]      (no stage: all three)
#   --via pip|cmake       how to build (default: pip when scikit-build-core is importable)
#   --arch 90             CUDA architecture (default: the GPU's compute capability, else 90)
#   --configure-only      configure (CMake, both routes) and stop: a check that needs no GPU
#   --cpu                 no CUDA: with --configure-only, the check for a machine without nvcc
#   --quick               one or two requests per level (a smoke run)
#   SLMSERVE_GPU_BUDGET   seconds this call may take (default 570: the device's 600 s less a
#                         margin); stages that cannot finish are skipped and say so
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CARRY=${SLMSERVE_GPU_CARRY:-$REPO/build/gpu/carry}
WORK=${SLMSERVE_GPU_WORK:-$REPO/build/gpu/work}
STARTED=$(date +%s)
DEADLINE=$((STARTED + ${SLMSERVE_GPU_BUDGET:-570}))
PY=${PYTHON:-python3}
VIA=auto ARCH="" MODE=cuda CONFIGURE_ONLY=0 QUICK=0
STAGES=()

usage() { sed -n '2,28p' "$0"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    build | test | bench) STAGES+=("$1"); shift ;;
    all) STAGES+=(build test bench); shift ;;
    --via) VIA=$2; shift 2 ;;
    --arch) ARCH=$2; shift 2 ;;
    --configure-only) CONFIGURE_ONLY=1; shift ;;
    --cpu) MODE=cpu; shift ;;
    --quick) QUICK=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#STAGES[@]} -gt 0 ]] || STAGES=(build test bench)
[[ $VIA == auto || $VIA == pip || $VIA == cmake ]] || { echo "run.sh: --via pip|cmake" >&2; exit 2; }
wants() { [[ " ${STAGES[*]} " == *" $1 "* ]]; }

OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/run.log") 2>&1
TEE_PID=$!

SUMMARY=()
note() { SUMMARY+=("$*"); }
say() { printf '[run %4ss] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
left() { echo $((DEADLINE - $(date +%s))); }
finish() {
  local rc=$?
  {
    echo "# bench/gpu/run.sh: $(date -u +%Y-%m-%dT%H:%MZ), stages: ${STAGES[*]}, exit $rc"
    echo
    printf '%s\n' "${SUMMARY[@]}"
    if [[ -f $OUT/bench.md ]]; then echo; cat "$OUT/bench.md"; fi
    echo
    echo "Took $(($(date +%s) - STARTED)) s. Logs: run.log, build.log, pytest.log, servers.log."
  } >"$OUT/summary.md"
  say "summary: $OUT/summary.md (exit $rc)"
  exec >&- 2>&-
  wait "$TEE_PID" 2>/dev/null || true
}
trap finish EXIT
die() {
  say "STOP: $*"
  note "- **stopped**: $*"
  exit 1
}

# -- what this machine has ----------------------------------------------------------------------
cd "$REPO"
say "machine: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
note "## Machine"
note ""
note "- $(uname -srm), $(nproc) cores"
PY_VERSION=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
  die "no $PY here (set PYTHON=...)"
say "python: $(command -v "$PY") $PY_VERSION"
note "- python: $(command -v "$PY") $PY_VERSION"

GPU=""
if command -v nvidia-smi >/dev/null && GPU=$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1) && [[ -n $GPU ]]; then
  say "GPU: $GPU"
  note "- GPU: $GPU"
  [[ -n $ARCH ]] || ARCH=$(echo "$GPU" | awk -F', ' '{ gsub(/\./, "", $2); print $2 }')
else
  GPU=""
  say "GPU: none (nvidia-smi $(command -v nvidia-smi >/dev/null && echo 'lists none' || echo 'absent'))"
  note "- GPU: none"
fi
NVCC=$(command -v nvcc || true)
[[ -n $NVCC || ! -x /usr/local/cuda/bin/nvcc ]] || NVCC=/usr/local/cuda/bin/nvcc
if [[ -n $NVCC ]]; then
  say "nvcc: $NVCC ($("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'))"
  note "- nvcc: $("$NVCC" --version | tail -2 | head -1)"
fi
CMAKE=$(command -v cmake || true)
[[ -n $CMAKE ]] || die "no cmake on PATH"
note "- $("$CMAKE" --version | head -1), $(command -v ninja >/dev/null && echo "ninja $(ninja --version)" || echo 'no ninja'), $(c++ --version 2>/dev/null | head -1 || echo 'no c++')"

if [[ $MODE == cuda ]]; then
  [[ -n $NVCC ]] || die "no nvcc here: this script builds for CUDA (on a CPU machine: --cpu --configure-only)"
  if [[ -z $GPU && $CONFIGURE_ONLY -eq 0 ]]; then
    die "no GPU here (nvidia-smi lists none): only --configure-only can run without one"
  fi
  ARCH=${ARCH:-90}
fi

# -- the carried files --------------------------------------------------------------------------
[[ -f $CARRY/manifest.txt ]] ||
  die "build/gpu/carry is missing: run bash bench/gpu/prepare.sh where PyPI is reachable, then carry build/gpu/carry"
(cd "$CARRY" && sha256sum --quiet -c SHA256SUMS) || die "build/gpu/carry does not match its SHA256SUMS"
manifest() { sed -n "s/^$1=//p" "$CARRY/manifest.txt"; }
PIN=$(manifest llama_cpp_python)
TARBALL=$CARRY/llama-cpp-python-$PIN-trimmed.tar.gz
SKELETON=$CARRY/SmolLM2-135M-Instruct.Q4_1.skeleton.gz
say "carried: llama-cpp-python $PIN (trimmed sources), wheels for Python $(manifest wheel_python), prepared $(manifest prepared)"

if ! wants build && [[ $CONFIGURE_ONLY -eq 0 && -z ${SLMSERVE_GPU_PREBUILT:-} && ! -f $WORK/build-$MODE.env ]]; then
  die "no build on this machine (a fresh machine starts bare): run the build stage too"
fi

# A model half that came with this call is copied to the work folder: a later call on the same
# machine carries the other half instead.
mkdir -p "$WORK/parts"
for part in "$REPO"/build/gpu/model-*/*.part*; do
  [[ -f $part ]] || continue
  cmp -s "$part" "$WORK/parts/$(basename "$part")" || cp -f "$part" "$WORK/parts/"
  say "model half here: $(basename "$part") (kept in build/gpu/work/parts)"
done

SRC=$WORK/src/llama_cpp_python-$PIN
STAMP=$WORK/src/.unpacked-$(sha256sum "$TARBALL" | cut -c1-16)
if [[ ! -f $STAMP ]]; then
  rm -rf "$WORK/src" && mkdir -p "$WORK/src"
  tar -xzf "$TARBALL" -C "$WORK/src"
  touch "$STAMP"
  say "unpacked the sources ($(du -sh "$SRC" | cut -f1))"
fi

# -- Python packages: the carried wheels into build/gpu/work/site, ahead of what is installed ---
SITE=$WORK/site
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
WHEEL_STAMP=$SITE/.installed-$PY_VERSION
if [[ ! -f $WHEEL_STAMP ]]; then
  rm -rf "$SITE" && mkdir -p "$SITE"
  pip_in() { "$PY" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
    --target "$SITE" --find-links "$CARRY/wheels" "$@" >>"$WORK/pip.log" 2>&1; }
  if "$PY" -m pip --version >/dev/null 2>&1; then
    if ! pip_in -r "$CARRY/wheels/requirements.txt"; then
      say "some wheels do not fit Python $PY_VERSION (they were fetched for $(manifest wheel_python)); installing one by one"
      while read -r requirement; do pip_in "$requirement" || say "  not installed: $requirement"; done <"$CARRY/wheels/requirements.txt"
    fi
  else
    say "no pip for $PY: unzipping the wheels that fit"
    "$PY" - "$CARRY/wheels" "$SITE" <<'EOF'
import sys, zipfile, pathlib
tag = "cp%d%d" % sys.version_info[:2]
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    parts = wheel.name[:-4].split("-")
    if parts[-3] in ("py3", "py2.py3") or tag in parts[-3].split(".") or parts[-2] == "abi3":
        zipfile.ZipFile(wheel).extractall(sys.argv[2])
    else:
        print(f"  skipped {wheel.name} (not for {tag})")
EOF
  fi
  touch "$WHEEL_STAMP"
fi
have() { "$PY" -c "import $1" >/dev/null 2>&1; }
MODULES=(numpy jinja2 diskcache typing_extensions pydantic pydantic_settings fastapi uvicorn sse_starlette yaml psutil prometheus_client redis pytest)
absent=()
for module in "${MODULES[@]}"; do have "$module" || absent+=("$module"); done
if [[ ${#absent[@]} -eq 0 ]]; then
  say "python modules: all there (carried wheels + this machine's numpy)"
else
  say "python modules MISSING: ${absent[*]} (what needs them is skipped)"
fi
note "- python modules missing: ${absent[*]:-none}"
LLAMA_PY_OK=1
for module in numpy jinja2 diskcache typing_extensions; do have "$module" || LLAMA_PY_OK=0; done

# -- CUDA libraries CMake must find: cuBLAS may live in a pip package, libcuda beside the driver --
CMFLAGS=(
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF
  -DGGML_CCACHE=OFF
)
# SLMSERVE_GPU_CMAKE_FLAGS: more, e.g. -DGGML_CUDA_FA=OFF (no FlashAttention kernels: ~40 of the
# ~145 CUDA objects, a shorter build, and a different attention path than a stock build).
read -r -a more <<<"${SLMSERVE_GPU_CMAKE_FLAGS:-}"
CMFLAGS+=("${more[@]}")
EXTRA_LD=""
if [[ $MODE == cuda ]]; then
  # nvcc may be a wrapper script (/usr/local/bin/nvcc here): ask it where its toolkit is.
  CUDA_ROOT=$("$NVCC" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  CUDA_ROOT=$(cd "${CUDA_ROOT:-$(dirname "$(readlink -f "$NVCC")")/..}" && pwd)
  say "CUDA toolkit: $CUDA_ROOT"
  CMFLAGS+=(-DGGML_CUDA=ON "-DCMAKE_CUDA_COMPILER=$CUDA_ROOT/bin/nvcc" "-DCMAKE_CUDA_ARCHITECTURES=$ARCH-real"
    -DGGML_CUDA_NCCL=OFF -DGGML_CUDA_COMPRESSION_MODE=speed)
  LINKS=$WORK/cuda-links
  mkdir -p "$LINKS"
  find_lib() { # name: the first libNAME.so* in the toolkit, the loader's cache, the driver, pip packages
    local name=$1 dir
    for dir in "$CUDA_ROOT/lib64" "$CUDA_ROOT/lib" "$CUDA_ROOT/targets/x86_64-linux/lib" \
      /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
      $("$PY" -c 'import nvidia, os; [print(os.path.join(p, d, "lib")) for p in nvidia.__path__ for d in os.listdir(p)]' 2>/dev/null); do
      compgen -G "$dir/lib$name.so*" >/dev/null && { compgen -G "$dir/lib$name.so*" | sort | head -1; return; }
    done
    ldconfig -p 2>/dev/null | awk -v n="lib$name.so" '$1 ~ "^"n { print $NF; exit }'
  }
  for lib in cublas cublasLt; do
    found=$(find_lib "$lib")
    [[ -n $found ]] || die "no lib$lib.so* (cuBLAS) in the CUDA toolkit, the loader's cache or a pip nvidia package"
    # Both names: the one the linker looks for and the soname the loader looks for.
    ln -sf "$(readlink -f "$found")" "$LINKS/lib$lib.so"
    ln -sf "$(readlink -f "$found")" "$LINKS/$(basename "$found")"
    CMFLAGS+=("-DCUDA_${lib}_LIBRARY=$LINKS/lib$lib.so")
    dir=$(dirname "$(readlink -f "$found")")
    [[ $dir == "$CUDA_ROOT"/* ]] || EXTRA_LD=$dir
    say "cuBLAS: $found"
  done
  if [[ -n $EXTRA_LD && -f $EXTRA_LD/../include/cublas_v2.h ]]; then
    CMFLAGS+=("-DCMAKE_CUDA_FLAGS=-I$(cd "$EXTRA_LD/../include" && pwd)")
  fi
  driver=$(find_lib cuda)
  if [[ -n $driver ]]; then
    ln -sf "$(readlink -f "$driver")" "$LINKS/libcuda.so"
    CMFLAGS+=("-DCUDA_cuda_driver_LIBRARY=$LINKS/libcuda.so")
  else
    say "no libcuda.so (the driver) here: building with GGML_CUDA_NO_VMM=ON"
    CMFLAGS+=(-DGGML_CUDA_NO_VMM=ON)
  fi
  export LD_LIBRARY_PATH=${EXTRA_LD:+$EXTRA_LD:}${LD_LIBRARY_PATH:-}
fi
JOBS=$(nproc)
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS
if [[ $VIA == auto ]]; then
  if "$PY" -c 'import scikit_build_core' 2>/dev/null && "$PY" -m pip --version >/dev/null 2>&1; then VIA=pip; else VIA=cmake; fi
fi

# -- configure only: both CMake routes, no compile (the check for a machine without a GPU) -------
if [[ $CONFIGURE_ONLY -eq 1 ]]; then
  note ""
  note "## Configure only ($MODE)"
  note ""
  for route in cmake pip; do
    dir=$WORK/configure-$MODE-$route
    rm -rf "$dir"
    if [[ $route == cmake ]]; then
      args=(-S "$SRC/vendor/llama.cpp" -DBUILD_SHARED_LIBS=ON)
    else # what scikit-build-core runs for `pip install`: llama-cpp-python's own CMakeLists.txt
      args=(-S "$SRC" -DLLAVA_BUILD=OFF "-DSKBUILD_PLATLIB_DIR=$dir/platlib")
    fi
    t0=$(date +%s)
    if "$CMAKE" "${args[@]}" -B "$dir" -G Ninja "${CMFLAGS[@]}" >"$OUT/build.log.$route" 2>&1; then
      cu=$(ninja -C "$dir" -t commands llama-server | grep -c nvcc || true)
      all=$(ninja -C "$dir" -t commands llama-server | wc -l)
      say "configure ($route route): ok in $(($(date +%s) - t0)) s; llama-server needs $all commands, $cu of them nvcc"
      note "- $route route: configure ok; llama-server = $all build commands ($cu nvcc)"
    else
      tail -30 "$OUT/build.log.$route"
      die "configure ($route route) failed: see build.log.$route"
    fi
  done
  cat "$OUT"/build.log.* >"$OUT/build.log" && rm -f "$OUT"/build.log.*
  exit 0
fi

# -- build ---------------------------------------------------------------------------------------
note ""
note "## Build"
note ""
BUILD_ENV=$WORK/build-$MODE.env
built() {
  [[ -f $BUILD_ENV ]] || return 1
  # shellcheck source=/dev/null
  source "$BUILD_ENV"
  [[ -f $LIB_DIR/libllama.so ]]
}
# A check of the later stages on a CPU machine, without a build: an existing llama_cpp/lib.
if [[ -n ${SLMSERVE_GPU_PREBUILT:-} ]]; then
  [[ $MODE == cpu && -f $SLMSERVE_GPU_PREBUILT/libllama.so ]] ||
    die "SLMSERVE_GPU_PREBUILT needs --cpu and a folder with libllama.so"
  printf 'VIA=prebuilt\nLLAMA_PY=%q\nLIB_DIR=%q\nBIN_DIR=%q\nEXTRA_LD=\nBUILD_SECONDS=0\n' \
    "$SRC" "$(cd "$SLMSERVE_GPU_PREBUILT" && pwd)" "$(cd "$SLMSERVE_GPU_PREBUILT" && pwd)" >"$BUILD_ENV"
fi
if wants build && ! built; then
  budget=$(($(left) - 60))
  [[ $budget -gt 60 ]] || die "only $(left) s left: no time to build"
  say "building ($VIA route, CUDA arch ${ARCH:-none}, $JOBS jobs, up to $budget s; log: build.log)"
  t0=$(date +%s)
  set +e
  if [[ $VIA == pip ]]; then
    LLAMA_PY=$WORK/llama-site LIB_DIR=$WORK/llama-site/llama_cpp/lib BIN_DIR=$WORK/build-pip/bin
    # LLAVA_BUILD=OFF: with the tools on, llama.cpp adds tools/mtmd itself (for llama-server).
    # scikit-build-core sets the build type itself (-C cmake.build-type), not from CMAKE_ARGS.
    CMAKE_ARGS="${CMFLAGS[*]/-DCMAKE_BUILD_TYPE=Release/} -DLLAVA_BUILD=OFF" timeout "$budget" \
      "$PY" -m pip install -v --no-index --no-deps --no-build-isolation \
      --disable-pip-version-check --upgrade --target "$LLAMA_PY" -C "build-dir=$WORK/build-pip" \
      -C cmake.build-type=Release "$SRC" >>"$OUT/build.log" 2>&1
    rc=$?
  else
    LLAMA_PY=$SRC LIB_DIR=$WORK/build-cmake/bin BIN_DIR=$WORK/build-cmake/bin
    generator=(-G Ninja)
    command -v ninja >/dev/null || generator=()
    "$CMAKE" -S "$SRC/vendor/llama.cpp" -B "$WORK/build-cmake" "${generator[@]}" "${CMFLAGS[@]}" \
      -DBUILD_SHARED_LIBS=ON >>"$OUT/build.log" 2>&1 &&
      timeout "$budget" "$CMAKE" --build "$WORK/build-cmake" -j "$JOBS" \
        --target llama llama-server llama-batched-bench >>"$OUT/build.log" 2>&1
    rc=$?
  fi
  set -e
  took=$(($(date +%s) - t0))
  if [[ $rc -eq 124 ]]; then
    note "- build ($VIA route) cut off after $took s: run the build stage again on this machine (it resumes)"
    die "build cut off after $took s (time limit); it resumes in the next call on this machine"
  elif [[ $rc -ne 0 ]]; then
    grep -E "error|Error|FAILED" "$OUT/build.log" | head -20 || true
    tail -20 "$OUT/build.log"
    note "- build ($VIA route) FAILED after $took s (exit $rc): see build.log"
    die "build failed (exit $rc); see build.log"
  fi
  printf 'VIA=%q\nLLAMA_PY=%q\nLIB_DIR=%q\nBIN_DIR=%q\nEXTRA_LD=%q\nBUILD_SECONDS=%q\n' \
    "$VIA" "$LLAMA_PY" "$LIB_DIR" "$BIN_DIR" "$EXTRA_LD" "$took" >"$BUILD_ENV"
  say "built in $took s"
  [[ -x $BIN_DIR/llama-server ]] || note "- no llama-server in $BIN_DIR: the bench skips it"
fi
built || die "no build on this machine (run the build stage; a fresh machine starts bare)"
note "- $VIA route, CUDA arch ${ARCH:-none} ($MODE), built in ${BUILD_SECONDS:-?} s (an earlier call, if not this one)"
export LD_LIBRARY_PATH=${EXTRA_LD:+$EXTRA_LD:}${LD_LIBRARY_PATH:-}
export PYTHONPATH=$LLAMA_PY:$PYTHONPATH
[[ $VIA == pip ]] || export LLAMA_CPP_LIB_PATH=$LIB_DIR # honoured by llama_cpp/llama_cpp.py
if missing=$(ldd "$LIB_DIR"/libggml*.so "$LIB_DIR/libllama.so" 2>/dev/null | grep "not found" | sort -u) && [[ -n $missing ]]; then
  die "the libraries do not load: $missing"
fi
if [[ $LLAMA_PY_OK -eq 1 ]]; then
  offload=$("$PY" -c 'import llama_cpp; print(llama_cpp.__file__, llama_cpp.llama_supports_gpu_offload())' 2>&1 | tail -1) ||
    die "import llama_cpp failed: $offload"
  say "llama_cpp: $offload"
  note "- llama_cpp: $offload (path, GPU offload supported)"
  [[ $MODE == cpu || $offload == *True ]] || die "this build of llama_cpp has no GPU offload"
else
  note "- llama_cpp not importable here (numpy/jinja2/diskcache/typing_extensions missing): Python tests and benches skipped"
fi

# -- the model -----------------------------------------------------------------------------------
note ""
note "## Model"
note ""
mkdir -p "$WORK/models"
REAL=$WORK/models/SmolLM2-135M-Instruct.Q4_1.gguf
TWIN=$WORK/models/SmolLM2-135M-Instruct.Q4_1.twin.gguf
if [[ ! -f $REAL && -f $WORK/parts/SmolLM2-135M-Instruct.Q4_1.gguf.part1 && -f $WORK/parts/SmolLM2-135M-Instruct.Q4_1.gguf.part2 ]]; then
  cat "$WORK"/parts/SmolLM2-135M-Instruct.Q4_1.gguf.part1 "$WORK"/parts/SmolLM2-135M-Instruct.Q4_1.gguf.part2 >"$REAL.tmp"
  if [[ $(sha256sum "$REAL.tmp" | cut -d' ' -f1) == "$(manifest model_sha256)" ]]; then
    mv "$REAL.tmp" "$REAL" && rm -f "$WORK"/parts/*.part*
  else
    rm -f "$REAL.tmp"
    say "the two model halves do not join into the real model (sha256 differs): using the twin"
  fi
fi
if [[ -f $REAL ]]; then
  MODEL=$REAL KIND=real
  NOTE="the real SmolLM2-135M-Instruct Q4_1 (sha256 checked)"
else
  halves=$(find "$WORK/parts" -name '*.part*' -printf '%f ' 2>/dev/null)
  "$PY" -m bench.gpu.twin write "$SKELETON" "$TWIN" >/dev/null
  MODEL=$TWIN KIND=twin
  NOTE="a twin of SmolLM2-135M-Instruct Q4_1: its header and tensor layout, random weights (same kernels and shapes, so the same speed; its text is noise). Model halves here: ${halves:-none}"
fi
say "model: $NOTE"
note "- $NOTE"

# -- tests ---------------------------------------------------------------------------------------
PROVIDER=$([[ $MODE == cuda ]] && echo cuda || echo cpu)
if wants test; then
  note ""
  note "## GGUF engine tests (SLMSERVE_TEST_PROVIDER=$PROVIDER)"
  note ""
  deselect=()
  # Asks the model to count and expects a "3": random weights cannot; it says nothing about CUDA.
  [[ $KIND == real ]] || deselect=(--deselect tests/engines/test_gguf.py::test_stop_string_cuts_the_text)
  if ! have pytest || [[ $LLAMA_PY_OK -eq 0 ]] || ! "$PY" -c 'import engines.gguf' >/dev/null 2>&1; then
    why=$("$PY" -c 'import pytest, engines.gguf' 2>&1 | tail -1)
    note "- skipped: $why"
    say "tests skipped: $why"
  elif [[ $(left) -lt 90 ]]; then
    note "- skipped: only $(left) s left"
  else
    say "tests/engines/test_gguf.py on $PROVIDER ($KIND model${deselect:+; one test deselected}); log: pytest.log"
    set +e
    SLMSERVE_TEST_PROVIDER=$PROVIDER SLMSERVE_TEST_GGUF=$MODEL PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
      timeout $(($(left) - 30)) "$PY" -m pytest tests/engines/test_gguf.py -p no:cacheprovider -ra -v \
      "${deselect[@]}" >"$OUT/pytest.log" 2>&1
    rc=$?
    set -e
    result=$(grep -E "^=+ .*(passed|failed|error).* =+$" "$OUT/pytest.log" | tail -1 | tr -d '=')
    grep -E "^(FAILED|ERROR|SKIPPED)" "$OUT/pytest.log" || true
    say "tests: ${result:-no result line} (exit $rc)"
    note "- result: ${result:-no result (exit $rc): see pytest.log}"
    [[ ${#deselect[@]} -eq 0 ]] || note "- deselected: test_stop_string_cuts_the_text (asks the model to count; random weights cannot)"
    while read -r line; do note "  - $line"; done < <(grep -E "^(FAILED|ERROR|SKIPPED)" "$OUT/pytest.log" || true)
  fi
fi

# -- bench ---------------------------------------------------------------------------------------
if wants bench; then
  note ""
  if [[ $LLAMA_PY_OK -eq 0 ]]; then
    note "## Bench: Python side skipped (llama_cpp cannot import here)"
  elif [[ $(left) -lt 60 ]]; then
    note "## Bench: skipped, only $(left) s left"
  else
    say "bench (bench/gpu/bench.py): c=1/8/32"
    flags=()
    [[ $QUICK -eq 0 ]] || flags+=(--quick)
    "$PY" -m bench.gpu.bench all --model "$MODEL" --model-kind "$KIND" --model-note "$NOTE" \
      --out "$OUT" --llama-server "$BIN_DIR/llama-server" --provider "$PROVIDER" \
      --deadline $((DEADLINE - 45)) "${flags[@]}" || note "- bench/gpu/bench.py exited $? (see run.log)"
  fi
  if [[ -x $BIN_DIR/llama-batched-bench && $(left) -gt 40 ]]; then
    say "llama-batched-bench: 32 prompt + 128 generated tokens, 1/8/32 sequences"
    layers=$([[ $MODE == cuda ]] && echo 999 || echo 0)
    if table=$(timeout $(($(left) - 25)) "$BIN_DIR/llama-batched-bench" -m "$MODEL" -c 8192 -b 2048 \
      -ub 512 -npp 32 -ntg 128 -npl 1,8,32 -ngl "$layers" 2>>"$OUT/servers.log"); then
      echo "$table"
      note ""
      note "## llama-batched-bench (C++, same build; S_TG = generation tok/s over all sequences)"
      note ""
      while read -r line; do note "$line"; done < <(grep '^|' <<<"$table")
    else
      note "- llama-batched-bench failed or ran out of time"
    fi
  fi
fi
