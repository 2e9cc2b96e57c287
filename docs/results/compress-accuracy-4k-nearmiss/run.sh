#!/usr/bin/env bash
# The accuracy run of docs/compression.md, "Near-misses" (Qwen 1.5B target on llama.cpp,
# smollm2-135m compressor, --compress 0.25, 2 threads). From the repository root:
#
#   bash docs/results/compress-accuracy-4k-nearmiss/run.sh [OUT [PROMPT ...]]
#
# The compressed arm of the 12 prompts whose full-context rows are already in
# docs/results/compress-accuracy-4k/results.json (deterministic greedy, same GGUF), one
# `edgespec generate` each, one after another, the directories first: OUT/gen/<prompt>.json
# (PROMPT: family:id, e.g. multifact:multifact-4k-s1; default: all 12). The load average is
# logged every 30 s (OUT/load.log) and each generate call in OUT/runs.log. Then:
#   python benchmarks/compress_accuracy.py docs/results/compress-accuracy-4k --compressed-json OUT/gen
# The doc's other two parts, run by hand after this script:
#   bash docs/results/compress-accuracy-4k-nearmiss/run.sh OUT/second \
#     multifact:multifact-4k-s5 code_long:code-long-4k-s5
#   python benchmarks/compress_accuracy.py docs/results/compress-accuracy-4k-phrases/bench \
#     --compressed-json OUT/second/gen
#   edgespec bench -m qwen2.5-coder-1.5b --backends llamacpp --strategies autoregressive \
#     --compress 0.25 --compress-only --compressor smollm2-135m \
#     --workloads $(cat docs/results/compress-accuracy-4k-nearmiss/workloads-bench.txt) \
#     -c 4608 -n 16 --runs 1 --warmup 0 -t 2 --energy estimate --out OUT/bench --no-plot -q
#   python benchmarks/compress_accuracy.py OUT/bench --load OUT/bench-load.log
#   python benchmarks/compress_accuracy.py --pairs OUT/gen/pairs.jsonl \
#     OUT/second/gen/pairs.jsonl OUT/bench/pairs.jsonl
# (bench-load.log: the same 30 s load logger, run beside the bench.)
set -u
OUT=${1:-docs/results/compress-accuracy-4k-nearmiss}
shift || true
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
[ $# -gt 0 ] && FIRST="$*"
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
