#!/bin/bash
# 1 GiB downloads by curl, server pinned to CPU 0, curl to CPU 1; interleaved configs
# DIR must hold 1g.bin (head -c 1073741824 /dev/urandom > $DIR/1g.bin); run from the checkout.
Z=${ZCSERVE:-.venv/bin/zcserve}
for round in 1 2 3; do
  for cfg in "fallback" "readwrite" "readwrite --chunk-size 1m" "readwrite --chunk-size 4m"; do
    taskset -c 0 $Z serve ${DIR:-/tmp/gib} --port 8893 --strategy $cfg >/dev/null 2>&1 &
    pid=$!; sleep 1
    t=$( { /usr/bin/time -f "%e" taskset -c 1 curl -s -o /dev/null http://127.0.0.1:8893/1g.bin; } 2>&1 )
    cpu=$(awk '{print ($14+$15)/100}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null
    echo "$round | $cfg | ${t}s | server cpu ${cpu}s"
  done
done
