#!/usr/bin/env bash
# The last 5 of the 24 4k prompts without a full/compressed pair (docs/compression.md,
# "Near-misses"): Qwen 1.5B target on llama.cpp, smollm2-135m compressor, --compress 0.25,
# 2 threads, both arms in one `edgespec bench` run, the load average logged every 30 s.
# From the repository root:
#
#   bash docs/results/compress-accuracy-4k-last5/run.sh [OUT]
#   python benchmarks/compress_accuracy.py OUT/bench --load OUT/bench-load.log
#   python benchmarks/compress_accuracy.py --pairs \
#     docs/results/compress-accuracy-4k-nearmiss/gen/pairs.jsonl \
#     docs/results/compress-accuracy-4k-nearmiss/second/gen/pairs.jsonl \
#     docs/results/compress-accuracy-4k-nearmiss/bench/pairs.jsonl OUT/bench/pairs.jsonl
exec bash benchmarks/compress_pairs.sh "${1:-docs/results/compress-accuracy-4k-last5}" \
  long/code_long:code-long-4k-s7 long/needle:needle-4k-s3 long/code_long:code-long-4k-s8 \
  long/needle:needle-4k-s4 long/needle:needle-4k-s5
