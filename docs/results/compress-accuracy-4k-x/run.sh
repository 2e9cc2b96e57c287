#!/usr/bin/env bash
# The second 4k accuracy set (docs/compression.md, "A second set of 30 prompts"): ten new
# prompts per family (benchmarks/make_long_workloads.py, ids *-4k-x01..x10, their own seed),
# interleaved; Qwen 1.5B target on llama.cpp, smollm2-135m compressor, --compress 0.25,
# 2 threads, both arms in one `edgespec bench` run, the load average logged every 30 s.
# From the repository root:
#
#   bash docs/results/compress-accuracy-4k-x/run.sh [OUT]
#   python benchmarks/compress_accuracy.py OUT/bench --load OUT/bench-load.log
set -u
OUT=${1:-docs/results/compress-accuracy-4k-x}
mkdir -p "$OUT"
(while :; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/bench-load.log"; sleep 30; done) &
LOGGER=$!
trap 'kill $LOGGER' EXIT
.venv/bin/edgespec bench -m qwen2.5-coder-1.5b --backends llamacpp --strategies autoregressive \
  --compress 0.25 --compress-only --compressor smollm2-135m \
  --workloads $(cat docs/results/compress-accuracy-4k-x/workloads.txt) \
  -c 4608 -n 16 --runs 1 --warmup 0 -t 2 --energy estimate --out "$OUT/bench" --no-plot -q
