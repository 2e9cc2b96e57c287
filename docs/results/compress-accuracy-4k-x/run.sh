#!/usr/bin/env bash
# The second 4k accuracy set (docs/compression.md, "A second set of 30 prompts"): ten new
# prompts per family (benchmarks/make_long_workloads.py, ids *-4k-x01..x10, their own seed),
# interleaved; Qwen 1.5B target on llama.cpp, smollm2-135m compressor, --compress 0.25,
# 2 threads, both arms in one `edgespec bench` run, the load average logged every 30 s.
# From the repository root:
#
#   bash docs/results/compress-accuracy-4k-x/run.sh [OUT]
#   python benchmarks/compress_accuracy.py OUT/bench --load OUT/bench-load.log
exec bash benchmarks/compress_pairs.sh "${1:-docs/results/compress-accuracy-4k-x}" \
  $(cat docs/results/compress-accuracy-4k-x/workloads.txt)
