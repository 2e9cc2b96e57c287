#!/usr/bin/env bash
# Full context against --compress 0.25 on the given long workloads, both arms in one
# `edgespec bench` run (docs/compression.md): Qwen 1.5B target on llama.cpp (its plain
# greedy decoding is the full-context arm), smollm2-135m compressor, 2 threads, 16 tokens,
# the load average logged every 30 s to OUT/bench-load.log. From the repository root:
#
#   bash benchmarks/compress_pairs.sh OUT WORKLOAD [WORKLOAD ...]
#   python benchmarks/compress_accuracy.py OUT/bench --load OUT/bench-load.log
set -u
OUT=$1
shift
mkdir -p "$OUT"
(while :; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/bench-load.log"; sleep 30; done) &
LOGGER=$!
trap 'kill $LOGGER' EXIT
.venv/bin/edgespec bench -m qwen2.5-coder-1.5b --backends llamacpp --strategies autoregressive \
  --compress 0.25 --compress-only --compressor smollm2-135m --workloads "$@" \
  -c 4608 -n 16 --runs 1 --warmup 0 -t 2 --energy estimate --out "$OUT/bench" --no-plot -q
