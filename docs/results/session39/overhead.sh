#!/bin/bash
# auto's plain step before (151c3ce) and after (d8f9aa5) the lean plain step, old and new
# code in alternating processes on one host; benchmarks/controller_overhead.py from d8f9aa5
# copied into a worktree of 151c3ce (it uses only public APIs). Prints markdown.
set -e
OLD=${OLD:-/tmp/wt}  # git worktree add /tmp/wt 151c3ce && cp benchmarks/controller_overhead.py /tmp/wt/benchmarks/
NEW=${NEW:-/work/main}
PY=/work/main/.venv/bin/python
for backend in llamacpp tvm; do
  for pass in 1 2; do
    for side in OLD NEW; do
      dir=${!side}
      echo "### $backend, $side code ($(git -C $dir rev-parse --short HEAD)), pass $pass"
      echo
      echo "\`benchmarks/controller_overhead.py --model smollm2-135m --backend $backend --strategies autoregressive auto:probe_every=0 auto --rounds 3\`"
      echo
      (cd $dir && PYTHONPATH=$dir $PY benchmarks/controller_overhead.py --model smollm2-135m \
        --backend $backend --strategies autoregressive auto:probe_every=0 auto --rounds 3 2>&1 | grep -v "^smollm2\|^$")
      echo
    done
  done
done
