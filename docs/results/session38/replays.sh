#!/bin/bash
# the replays of docs/benchmarks.md section 34; prints markdown
cd /work/main
NEW="--target-curve 1:76.5,2:118.7,3:156.6,4:173.5,5:202.6,6:289.2,7:277.0,8:400.7,9:426.5 --draft-curve 1:28.3,2:52.0,3:74.3,5:95.4,9:137.4,13:183.5,17:208.4,25:302.1,33:360.7"
OLD="--target-curve 1:82.8,2:142.8,3:184.4,4:239.4,5:326.4,6:312.2,7:376.1,8:643.9,9:591.3 --draft-curve 1:31.1,2:51.3,3:75.4,5:99.6,9:151.2,13:208.2,17:255.3,25:358.6,33:444.7"
M3="--target-curve 1:76.5,2:89.2,3:100.5,4:105.6,5:114.3,6:140.3,7:136.7,8:173.8,9:181.5 --draft-curve 1:28.3,2:52.0,3:74.3,5:95.4,9:137.4,13:183.5,17:208.4,25:302.1,33:360.7"
M5="--target-curve 1:76.5,2:97.6,3:116.5,4:125.0,5:139.6,6:182.8,7:176.8,8:238.6,9:251.5 --draft-curve 1:28.3,2:52.0,3:74.3,5:95.4,9:137.4,13:183.5,17:208.4,25:302.1,33:360.7"
# CFG and REPLAYS_ONLY=1 (the replays alone) may be set by the caller (session39/replays-probe-k.sh)
CFG=${CFG:-"auto:probe_z=0 auto auto:probe_z=0.5 auto:probe_z=2 auto:probe_memory=512 auto:probe_memory=8192 auto:probe_budget=0"}
for r in qwen-pair qwen-pair-4 smollm2-4; do
  for c in NEW OLD M3 M5 TVM; do
    [ $r = smollm2-4 ] && [ $c != TVM ] && continue
    case $c in NEW) X=$NEW;; OLD) X=$OLD;; M3) X=$M3;; M5) X=$M5;; TVM) X="";; esac
    echo "### $r, curves $c"
    echo
    echo "\`.venv/bin/python benchmarks/controller_replay.py replay docs/results/controller-replay/$r.json $CFG $X\`"
    echo
    .venv/bin/python benchmarks/controller_replay.py replay docs/results/controller-replay/$r.json $CFG $X 2>&1 | grep '^|'
    echo
  done
done

[ -n "$REPLAYS_ONLY" ] && exit 0

# per-prompt acceptance of the draft in the records, and fixed drafts on llama.cpp's curves
echo "### The draft's acceptance per prompt (first drafted token; mean accepted of a draft of 4, plus 1)"
echo
.venv/bin/python - <<'PY'
import json
print("| record | prompt | first-token acceptance | E(4) |")
print("|---|---|---|---|")
for f in ["qwen-pair-4"]:
    r = json.load(open(f"docs/results/controller-replay/{f}.json"))
    for p in r["prompts"]:
        t, d = p["text"], p["drafts"]
        first = [d[i][0] == t[i] for i in range(len(t)) if d[i]]
        acc = []
        for i in range(len(t)):
            n = 0
            for j, tok in enumerate(d[i][:4]):
                if i + j < len(t) and tok == t[i + j]:
                    n += 1
                else:
                    break
            acc.append(n)
        print(f"| {f} | {p['id']} | {sum(first) / len(first):.2f} | {1 + sum(acc) / len(acc):.2f} |")
PY
echo
NEW="--target-curve 1:76.5,2:118.7,3:156.6,4:173.5,5:202.6,6:289.2,7:277.0,8:400.7,9:426.5 --draft-curve 1:28.3,2:52.0,3:74.3,5:95.4,9:137.4,13:183.5,17:208.4,25:302.1,33:360.7"
echo "### Fixed drafts of 3 and 4 on llama.cpp's curves, per prompt (one round)"
echo
echo "\`.venv/bin/python benchmarks/controller_replay.py replay docs/results/controller-replay/qwen-pair-4.json speculative:proposers=draft:k=3 speculative:proposers=draft:k=4 --runs 1 --traces $NEW\`"
echo
echo '```'
.venv/bin/python benchmarks/controller_replay.py replay docs/results/controller-replay/qwen-pair-4.json speculative:proposers=draft:k=3 speculative:proposers=draft:k=4 --runs 1 --traces $NEW 2>&1 | grep -E "^[a-z].*:$|^0 " | cut -c1-22
echo '```'
