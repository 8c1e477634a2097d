#!/bin/bash
# Server CPU per request and the wake-ups it sends the load generator's CPU, for
# servers already running (pinned to CPU 0). wrk runs on CPU 1; the wake-ups are
# the rescheduling and function-call interrupts CPU 1 received, per request.
# Usage: benchmarks/wakeups.sh ROUNDS PID=URL [PID=URL ...]
#   e.g. benchmarks/wakeups.sh 3 4242=https://127.0.0.1:8443/4k.bin 4343=http://...
rounds=${1:?rounds}; shift
interrupts() { awk '/RES:|CAL:/ { sum += $3 } END { print sum }' /proc/interrupts; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for round in $(seq "$rounds"); do
  for server in "$@"; do
    pid=${server%%=*}; url=${server#*=}
    taskset -c 1 wrk -t1 -c64 -d1s "$url" >/dev/null  # warm-up
    ticks=$(cpu_ticks "$pid"); woken=$(interrupts)
    requests=$(taskset -c 1 wrk -t1 -c64 -d4s "$url" | awk '/requests in/ { print $1 }')
    ticks=$(( $(cpu_ticks "$pid") - ticks )); woken=$(( $(interrupts) - woken ))
    awk -v r="$round" -v u="$url" -v t="$ticks" -v w="$woken" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "round %s %s: %.1f µs CPU/request, %.3f wake-ups of CPU 1/request, %d requests\n", r, u, t * 1e6 / hz / n, w / n, n }'
  done
done
