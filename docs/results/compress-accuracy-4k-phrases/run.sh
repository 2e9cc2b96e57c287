#!/usr/bin/env bash
# The accuracy run of docs/compression.md, "Lines and phrases" (Qwen 1.5B target on
# llama.cpp, smollm2-135m compressor, --compress 0.25, 2 threads). From the repository root:
#
#   bash docs/results/compress-accuracy-4k-phrases/run.sh [OUT]
#
# 1. The compressed arm of the 12 prompts whose full-context rows are already in
#    docs/results/compress-accuracy-4k/results.json (deterministic greedy, same GGUF), one
#    `edgespec generate` each, the directories first: OUT/gen/<prompt>.json.
# 2. Full context and compressed side by side for the other 12 (`edgespec bench
#    --compress-only`: per prompt its full-context row, then its compressed row, in one
#    process): OUT/bench/results.json, written after every prompt.
# The load average is logged every 30 s (OUT/load.log) and each generate call in
# OUT/runs.log. Then:
#   python benchmarks/compress_accuracy.py docs/results/compress-accuracy-4k --compressed-json OUT/gen
#   python benchmarks/compress_accuracy.py OUT/bench
#   python benchmarks/compress_accuracy.py --pairs OUT/gen/pairs.jsonl OUT/bench/pairs.jsonl
set -u
OUT=${1:-docs/results/compress-accuracy-4k-phrases}
ES=.venv/bin/edgespec
PY=.venv/bin/python
mkdir -p "$OUT/gen"
(while :; do echo "$(date -u +%T) $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.log"; sleep 30; done) &
LOGGER=$!
trap 'kill $LOGGER' EXIT
FIRST="multifact:multifact-4k-s1 multifact:multifact-4k-s2 multifact:multifact-4k-s3
multifact:multifact-4k-s4 code_long:code-long-4k-s1 needle:needle-4k-50
code_long:code-long-4k-s2 needle:needle-4k-s1 code_long:code-long-4k-s3 needle:needle-4k-25
code_long:code-long-4k-s4 needle:needle-4k-s2"
PROMPT=$(mktemp)
for w in $FIRST; do
  id=${w#*:}
  $PY -c "import sys; from edgespec.bench.workloads import load_workloads as L
open(sys.argv[2], 'w').write(L([sys.argv[1]])[0].prompt)" "long/$w" "$PROMPT"
  start="$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  $ES generate -m qwen2.5-coder-1.5b -b llamacpp -f "$PROMPT" -c 4608 -n 16 -t 2 -q --json \
    --compress 0.25 --compressor smollm2-135m >"$OUT/gen/$id.json"
  rc=$?
  echo "$id start $start end $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg) rc $rc" >>"$OUT/runs.log"
done
rm -f "$PROMPT"
$ES bench -m qwen2.5-coder-1.5b --backends llamacpp --strategies autoregressive \
  --compress 0.25 --compress-only --compressor smollm2-135m \
  --workloads $(cat "$(dirname "$0")/workloads-second.txt") \
  -c 4608 -n 16 --runs 1 --warmup 0 -t 2 --energy estimate --out "$OUT/bench" --no-plot -q
