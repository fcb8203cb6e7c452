#!/usr/bin/env bash
# HAProxy under traffic, on loopback, for a bounded time:
#
#   scripts/haproxy-traffic.sh HAPROXY SECONDS [BUFSIZE [STORM]]
#
# HAPROXY runs with nbthread 16 and tune.bufsize BUFSIZE (default 2097152)
# and one frontend on 127.0.0.1 that answers every request itself (a 200
# from an errorfile, then it closes the connection); `wrk -t1 -c64` drives
# it for SECONDS while, with STORM=1 (the default), `haptool storm` sends
# it a SIGQUIT every 100 us (HAProxy 2.0's thread 0 then dumps the pools
# and runs pool_gc while the other threads allocate). A 1 s warm-up comes
# first, and "show pools" is read on the CLI before and after the run.
#
# Prints one line "RESULT ..." (req/s, requests, HAProxy's CPU time per
# request, errors, whether it stayed alive, when it died) and exits 0 when the run passed: no failed request
# (wrk's non-2xx responses and socket errors are 0), the process alive and
# answering its CLI at the end, and the final dump balanced (every pool has
# allocated == used + cached + shared, and as many objects used as before
# the run: none leaked; stock HAProxy's dump, which lacks these counts, is
# reported as balanced=n/a). Exits 1 otherwise, with the reasons on stderr.
# Every process it starts is killed when it exits (trap).
set -u

HAP=$1
SECS=$2
BUFSIZE=${3:-2097152}
STORM=${4:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOL=${HAPTOOL:-$ROOT/target/haproxy/haptool}

for f in "$HAP" "$TOOL"; do
  [ -x "$f" ] || { echo "haproxy-traffic: $f is missing: run make haproxy" >&2; exit 1; }
done
command -v wrk >/dev/null || { echo "haproxy-traffic: wrk is missing (apt-get install wrk)" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/haproxy-traffic.XXXXXX")
HPID= SPID= WPID=
cleanup() {
  for p in $SPID $WPID $HPID; do kill "$p" 2>/dev/null; done
  for p in $SPID $WPID $HPID; do wait "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

printf 'HTTP/1.0 200 OK\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n' > "$TMP/200.http"

# Starts HAProxy on a free port; a port taken between `haptool port` and
# the bind (another run) makes HAProxy exit: try another one.
started=
for attempt in 1 2 3 4 5; do
  PORT=$("$TOOL" port)
  cat > "$TMP/haproxy.cfg" <<EOF
global
    nbthread 16
    tune.bufsize $BUFSIZE
    maxconn 4096
    stats socket $TMP/cli.sock level admin

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend answer
    bind 127.0.0.1:$PORT
    http-request deny deny_status 200
    errorfile 200 $TMP/200.http
EOF
  if [ "$attempt" = 1 ] && ! "$HAP" -c -q -f "$TMP/haproxy.cfg"; then
    echo "haproxy-traffic: $HAP refuses the configuration" >&2; exit 1
  fi
  # stderr: the SIGQUIT dumps, thousands a second.
  "$HAP" -f "$TMP/haproxy.cfg" </dev/null >/dev/null 2>&1 &
  HPID=$!
  for _ in $(seq 50); do
    if "$TOOL" cli "$TMP/cli.sock" "show pools" > "$TMP/before" 2>/dev/null; then
      started=1; break
    fi
    kill -0 "$HPID" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$started" ] && break
  kill "$HPID" 2>/dev/null; wait "$HPID" 2>/dev/null; HPID=
done
[ -n "$started" ] || { echo "haproxy-traffic: $HAP did not start" >&2; exit 1; }

URL=http://127.0.0.1:$PORT/
wrk -t1 -c64 -d1s "$URL" > /dev/null
# The reference dump, once the warm-up's connections are gone: two dumps
# in a row with the same counts of used objects.
prev=
for _ in $(seq 20); do
  sleep 0.3
  "$TOOL" cli "$TMP/cli.sock" "show pools" > "$TMP/before" || continue
  cur=$(sed -n 's/^  - Pool \(.*\) : .* bytes), \([0-9]*\) used.*/\1 \2/p' "$TMP/before")
  [ -n "$cur" ] && [ "$cur" = "$prev" ] && break
  prev=$cur
done

died=
if [ "$STORM" = 1 ]; then
  "$TOOL" storm "$HPID" 100 "$SECS" > "$TMP/storm" &
  SPID=$!
fi
# HAProxy's CPU time (user + system, in clock ticks) across the run: the
# cost per request, which a busy machine blurs less than the rate.
cpu() { awk '{ print $14 + $15 }' "/proc/$HPID/stat" 2>/dev/null || echo 0; }
cpu0=$(cpu)
wrk -t1 -c64 -d"${SECS}s" "$URL" > "$TMP/wrk" 2>&1 &
WPID=$!
wait "$WPID"; WPID=
cpu1=$(cpu)
if [ -n "$SPID" ]; then
  wait "$SPID"; SPID=
  died=$(sed -n 's/^died after \([0-9.]*\) s.*/\1/p' "$TMP/storm")
fi

# The process: alive and answering, with a balanced dump (the connections
# wrk closed may take a moment to be released: retry for up to 3 s).
alive=no; balanced=no; why=
state=$(sed 's/.*) \(.\).*/\1/' "/proc/$HPID/stat" 2>/dev/null || echo gone)
if [ "$state" != Z ] && [ "$state" != gone ]; then
  for _ in $(seq 10); do
    if "$TOOL" cli "$TMP/cli.sock" "show pools" > "$TMP/after"; then
      alive=yes
      why=$(awk '
        function parse(line, f,   name) {
          if (!match(line, /^  - Pool .* \([0-9]+ bytes\) : /)) return ""
          name = substr(line, 10, RLENGTH - 9)
          sub(/ \([0-9]+ bytes\) : $/, "", name)
          split(substr(line, RLENGTH + 1), f, /[ ,()]+/)
          # f: 1 allocated 2 "allocated" 3 bytes 4 "bytes" 5 used 6 "used"
          #    7 cached 8 "cached" 9 shared
          return name
        }
        FNR == NR { n = parse($0, f); if (n != "") before[n] = f[5]; next }
        {
          n = parse($0, f); if (n == "") next
          if (f[1] != f[5] + f[7] + f[9])
            printf "%s: %d allocated != %d used + %d cached + %d shared; ", n, f[1], f[5], f[7], f[9]
          if (n in before && f[5] != before[n])
            printf "%s: %d used, %d before the run; ", n, f[5], before[n]
          seen++
        }
        END { if (!seen) printf "no pool line in the dump" }' "$TMP/before" "$TMP/after")
      if [ -z "$why" ]; then balanced=yes; break; fi
      # Stock HAProxy's dump has no cached/shared counts to balance.
      if ! grep -q " cached, " "$TMP/after"; then balanced=n/a; break; fi
    fi
    sleep 0.3
  done
fi
if [ "$alive" = no ] && [ -z "$died" ]; then died=after-run; fi
# How it ended, when it did (128 + N: killed by signal N).
status=-
if [ "$alive" = no ]; then
  wait "$HPID"; status=$?; HPID=
fi

reqs=$(awk '/requests in/ { print $1 }' "$TMP/wrk")
rps=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/wrk")
non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$TMP/wrk")
sockerr=$(awk '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$TMP/wrk" | tr -d ,)
cpu_us=$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" -v n="${reqs:-0}" \
  'BEGIN { if (n > 0 && b >= a) printf "%.1f", (b - a) * 1e6 / hz / n; else print 0 }')
echo "RESULT $(basename "$(dirname "$HAP")") bufsize=$BUFSIZE storm=$STORM secs=$SECS" \
     "rps=${rps:-0} requests=${reqs:-0} cpu_us_per_req=$cpu_us non2xx=${non2xx:-0} sockerr=${sockerr:-0}" \
     "alive=$alive died_after=${died:--} exit_status=$status balanced=$balanced"

fail=
[ "${reqs:-0}" -gt 0 ] 2>/dev/null || fail="no request answered; "
[ "${non2xx:-0}" = 0 ] || fail="$fail${non2xx} non-2xx responses; "
[ "${sockerr:-0}" = 0 ] || fail="$fail${sockerr} socket errors; "
[ "$alive" = yes ] || fail="${fail}died (${died}); "
[ "$alive" = no ] || [ "$balanced" != no ] || fail="${fail}unbalanced dump: $why"
if [ -n "$fail" ]; then
  echo "haproxy-traffic: FAILED: $fail" >&2
  [ -s "$TMP/after" ] && { echo "final dump:" >&2; cat "$TMP/after" >&2; }
  cat "$TMP/wrk" >&2
  exit 1
fi
exit 0
