#!/bin/bash
# Alternate benchmarks/request_cost.py between an older checkout ($BASE) and this one,
# $R rounds (default 6); print min and median µs per request for each, and the floor.
# Usage: BASE=/path/to/old/checkout R=8 benchmarks/request_cost_ab.sh [--size 65536]
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
R=${R:-6}
for i in $(seq "$R"); do
  for side in base here; do
    dir=$BASE; [ $side = here ] && dir=$here
    v=$(cd "$dir" && PYTHONPATH=$dir "$python" "$dir/benchmarks/request_cost.py" -n 20000 "$@" 2>&1 | tail -1 |
        sed 's/.*: \([0-9.]*\) µs CPU per request; floor: \([0-9.]*\).*/\1 \2/')
    echo "$side $v"
  done
done | "$python" -c "
import statistics as st, sys
runs = {}
for line in sys.stdin:
    side, cost, floor = line.split()
    runs.setdefault(side, []).append((float(cost), float(floor)))
for side, pairs in runs.items():
    costs = [c for c, _ in pairs]
    print(f'{side}: min {min(costs):.1f} median {st.median(costs):.1f} µs; floor min {min(f for _, f in pairs):.1f}')
"
