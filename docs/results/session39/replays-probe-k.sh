#!/bin/bash
# the replays of docs/benchmarks.md section 36 (`auto`: probes of 2 tokens, the default):
# session 38's records and curves (its replays.sh), other configs; prints markdown
CFG="auto auto:probe_k=0 auto:probe_k=1 auto:probe_k=3 auto:probe_k=4" REPLAYS_ONLY=1 \
  exec bash "$(dirname "$0")/../session38/replays.sh"
