#!/usr/bin/env bash
# Cold `lockgate up` and `lockgate down`, five times, each on a fresh state directory and its own ports
# (29055/29390/29275, all on 127.0.0.1); prints the wall seconds of each and the 1-minute load average.
# Run from the repository root: benchmarks/bench_up_down.sh   (targets, issue #13: up <= 10 s, down <= 3 s)
set -u
cd "$(dirname "$0")/.."
for i in 1 2 3 4 5; do
  d=$(mktemp -d /tmp/lockgate-updown-XXXX)
  s=$(date +%s.%N)
  .venv/bin/lockgate up --state-dir "$d/state" --mlflow-port 29055 --ray-port 29390 --dashboard-port 29275 >/dev/null 2>&1
  rc=$?
  e=$(date +%s.%N)
  up=$(python3 -c "print(f'{$e - $s:.2f}')")
  s=$(date +%s.%N)
  .venv/bin/lockgate down --state-dir "$d/state" >/dev/null 2>&1
  e=$(date +%s.%N)
  down=$(python3 -c "print(f'{$e - $s:.2f}')")
  echo "run $i: up (exit $rc) ${up} s, down ${down} s, load $(cut -d' ' -f1 /proc/loadavg)"
  rm -rf "$d"
done
