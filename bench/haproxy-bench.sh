#!/usr/bin/env bash
# Stock HAProxy 2.0.0 against HAProxy on libpools, side by side, interleaved.
#
#   bench/haproxy-bench.sh [ROUNDS [SECS]]          the req/s table
#   bench/haproxy-bench.sh crash RUNS SECS [BUILDS] the crash hunt
#   bench/haproxy-bench.sh table FILE               the tables again, from
#                                                   the printed runs in FILE
#
# Table: ROUNDS (default 3) rounds; each runs every cell once for SECS
# (default 10) seconds, in an order rotated by one cell every round. A cell
# is a build (stock-glibc, glibc, stock-musl, musl from `make haproxy`) x
# tune.bufsize (2 MiB, 16 KiB) x SIGQUIT storm (none, every 100 us), run by
# scripts/haproxy-traffic.sh (nbthread 16, wrk -t1 -c64, loopback). Prints
# every run, then per cell the medians of req/s and of HAProxy's CPU time
# per request over the runs that passed, the runs that failed or died, and
# the libpools/stock ratios.
#
#   bench/haproxy-bench.sh cells ROUNDS SECS CELL... chosen cells only
#   bench/haproxy-bench.sh cells-table FILE CELL...  their table again
#
# Cells: CELL is BUILD:BUFSIZE:STORM (e.g. musl:2097152:0), BUILD any
# folder of target/haproxy/ that holds a haproxy binary (a build of another
# commit copied to target/haproxy/musl-before/, say); ROUNDS rounds, the
# order rotated by one cell each round; prints every run, then per cell the
# runs that passed and the medians of req/s and of CPU time per request.
#
# Crash hunt: RUNS runs of SECS seconds of each build in BUILDS (default
# "stock-musl musl"), 2 MiB buffers, storm on, alternating; prints when
# each run died, if it did.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$ROOT/scripts/haproxy-traffic.sh
H=$ROOT/target/haproxy

run() { # build bufsize storm secs -> one RESULT line (the script's)
  local out
  out=$(nice "$T" "$H/$1/haproxy" "$4" "$2" "$3" 2>/dev/null | grep '^RESULT')
  echo "${out:-RESULT $1 bufsize=$2 storm=$3 secs=$4 rps=0 requests=0 alive=no died_after=? balanced=no}"
}

# table METRIC TITLE: per cell the median of METRIC over the runs that
# passed the traffic test's checks, and libpools over stock.
table() {
  echo
  echo "$2"
  echo
  echo "| bufsize | storm | stock-glibc | glibc (libpools) | ratio | stock-musl | musl (libpools) | ratio |"
  echo "|---|---|---|---|---|---|---|---|"
  for bs in 2097152 16384; do
    for storm in 0 1; do
      row="| $([ $bs = 2097152 ] && echo 2MiB || echo 16KiB) | $([ $storm = 1 ] && echo "SIGQUIT/100us" || echo none) |"
      declare -A med=()
      for b in stock-glibc glibc stock-musl musl; do
        vals=$(grep "RESULT $b bufsize=$bs storm=$storm " "$LOG" |
               grep 'non2xx=0 sockerr=0 alive=yes' | grep -v 'balanced=no' |
               sed -n "s/.* $1=\([0-9.]*\).*/\1/p" | sort -n)
        total=$(grep -c "RESULT $b bufsize=$bs storm=$storm " "$LOG")
        ok=$(printf '%s\n' "$vals" | grep -c .)
        m=$(printf '%s\n' "$vals" | awk 'NF { a[n++] = $1 } END { if (n) print (n % 2 ? a[int(n/2)] : (a[n/2-1] + a[n/2]) / 2); else print 0 }')
        med[$b]=$m
        bad=$((total - ok))
        cell=$(printf '%.1f' "$m")
        [ "$1" = rps ] && cell=$(printf '%.0f' "$m")
        [ "$bad" -gt 0 ] && cell="$cell ($bad of $total failed)"
        row="$row $cell |"
        case $b in
          glibc|musl)
            s=${med[stock-$b]}
            ratio=$(awk -v a="$m" -v s="$s" 'BEGIN { if (s > 0) printf "%.2fx", a / s; else print "n/a" }')
            row="$row $ratio |" ;;
        esac
      done
      echo "$row"
      unset med
    done
  done
}

if [ "${1:-}" = table ]; then
  LOG=$2
  table rps "Requests per second (median; higher is better)"
  table cpu_us_per_req "HAProxy CPU time per request in microseconds, user + system (median; lower is better)"
  exit 0
fi

# cells_table CELL...: per cell of $LOG, the runs that passed and the
# medians of their req/s and CPU time per request.
cells_table() {
  echo
  echo "| cell | runs passed | req/s (median) | CPU us/request (median) | each run (req/s / us) |"
  echo "|---|---|---|---|---|"
  for c in "$@"; do
    IFS=: read -r b bs storm <<< "$c"
    lines=$(grep "RESULT $b bufsize=$bs storm=$storm " "$LOG")
    ok=$(printf '%s\n' "$lines" | grep 'non2xx=0 sockerr=0 alive=yes' | grep -v 'balanced=no')
    printf '%s\n' "$ok" | awk -v cell="$c" -v total="$(printf '%s\n' "$lines" | grep -c .)" '
      function med(a, n,   i, j, t) {
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      }
      match($0, / rps=[0-9.]+/) { r[++n] = substr($0, RSTART + 5, RLENGTH - 5) + 0
        match($0, / cpu_us_per_req=[0-9.]+/); u[n] = substr($0, RSTART + 16, RLENGTH - 16) + 0
        each = each sprintf("%s%.0f / %.1f", n > 1 ? ", " : "", r[n], u[n]) }
      END { printf "| %s | %d of %d | %.0f | %.1f | %s |\n", cell, n, total, n ? med(r, n) : 0, n ? med(u, n) : 0, each }'
  done
}

if [ "${1:-}" = cells-table ]; then
  LOG=$2
  shift 2
  cells_table "$@"
  exit 0
fi

if [ "${1:-}" = cells ]; then
  ROUNDS=$2 SECS=$3
  shift 3
  cells=("$@")
  n=${#cells[@]}
  LOG=$(mktemp)
  trap 'rm -f "$LOG"' EXIT
  echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD) rounds=$ROUNDS secs=$SECS load $(cut -d' ' -f1-3 /proc/loadavg)"
  for r in $(seq 0 $((ROUNDS - 1))); do
    for k in $(seq 0 $((n - 1))); do
      IFS=: read -r b bs storm <<< "${cells[$(((k + r) % n))]}"
      echo "round $((r + 1)): $(run "$b" "$bs" "$storm" "$SECS")" | tee -a "$LOG"
    done
  done
  echo "# end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
  cells_table "${cells[@]}"
  exit 0
fi

if [ "${1:-}" = crash ]; then
  RUNS=$2 SECS=$3 BUILDS=${4:-stock-musl musl}
  for i in $(seq "$RUNS"); do
    for b in $BUILDS; do
      echo "run $i: $(run "$b" 2097152 1 "$SECS")"
    done
  done
  exit 0
fi

ROUNDS=${1:-3}
SECS=${2:-10}
cells=()
for bs in 2097152 16384; do
  for storm in 0 1; do
    for b in stock-glibc glibc stock-musl musl; do
      cells+=("$b $bs $storm")
    done
  done
done
n=${#cells[@]}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
echo "# $(date -u +%FT%TZ) $(git -C "$ROOT" rev-parse --short HEAD) rounds=$ROUNDS secs=$SECS"
for r in $(seq 0 $((ROUNDS - 1))); do
  for k in $(seq 0 $((n - 1))); do
    c=${cells[$(((k + r) % n))]}
    # shellcheck disable=SC2086
    line=$(run $c "$SECS")
    echo "round $((r + 1)): $line" | tee -a "$LOG"
  done
done

table rps "Requests per second (median; higher is better)"
table cpu_us_per_req "HAProxy CPU time per request in microseconds, user + system (median; lower is better)"
