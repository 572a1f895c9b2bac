#!/usr/bin/env bash
# Gated, admitted calls per second of trunkgate, measured with the shared
# Kamailio-anchored harness (../shared/bench, or $HARNESS) on this machine.
#
#   bench/run-harness.sh            # release build, seed, run, report
#
# What it sets up (the harness's expectations, see its README):
#   - trunkgate (release) on udp://127.0.0.1:5060, SQLite in a temp dir;
#   - one shared trunk from 127.0.0.1 (`portal = "*"`: portal by the
#     Request-URI domain, as the harness's UAC addresses portals by domain);
#   - portals bench.example (100000 channels), limited.example (10 channels),
#     expired.example (no SIP connector extension); nosuch.example absent;
#   - in each, user `far-end` whose static contact is the harness UAS
#     127.0.0.1:5080; every number routes to it;
#   - the free plan's call-rate limit lifted (the bench offers thousands/s).
# The harness's Warning-text check is off (EXPECT_REASONS=0): trunkgate's
# Warning carries the stable reason tokens (`channels-busy: ...`), not
# Kamailio's prose. Results land in bench/results/ (git-ignored).
# Harness variables (RATES, CORRECTNESS, PROBE, …) pass through; DB_MAX_CONNECTIONS
# sets the SQLite pool size (default 4), OVERLOAD_QUEUE_MS overload control's
# target wait (default 50, 0 = off), SIP_CORES `[sip] cores` (default 0: one
# per two CPUs), SEND_THREAD_BUSY_PCT `[sip] send_thread_busy_pct` (default
# 70; 100 = the cores always send themselves); BENCH_NICE the daemon's nice level (default -10 as root,
# the harness's own for Kamailio and SIPp); TRUNKGATE_LOG=path keeps the
# daemon's log; TRUNKGATE_BIN=path runs that binary instead of building one
# (A-B-A of two builds).
# DATABASE=postgres runs the node as a fleet node on the local PostgreSQL
# (PG_URL, default postgres://postgres@127.0.0.1:5432, trust auth) in a
# database created empty for the run (trunkgate_bench), and reports
# PostgreSQL's own CPU over the run beside the harness's report.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/bench}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# Without OUT_DIR (the harness's results folder): build scripts read that
# variable, so cargo would rebuild every crate that has one.
if [ -n "${TRUNKGATE_BIN:-}" ]; then
    TG=$TRUNKGATE_BIN
else
    env -u OUT_DIR cargo build --release --manifest-path "$ROOT/Cargo.toml"
    TG="$CARGO_TARGET_DIR/release/trunkgate"
fi
WORK=$(mktemp -d /tmp/trunkgate-bench.XXXXXX)
DB_URL_LINE=""
if [ "${DATABASE:-sqlite}" = postgres ]; then
    PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
    psql "$PG_URL/postgres" -qAt -c "DROP DATABASE IF EXISTS trunkgate_bench" -c "CREATE DATABASE trunkgate_bench" >/dev/null
    DB_URL_LINE="url = \"$PG_URL/trunkgate_bench\""
    # The postmaster: its tree is every backend of every session.
    PG_PID=$(pgrep -o -x postgres)
fi
pg_ticks() {
    local t=0 p v
    for p in $PG_PID $(pgrep -P "$PG_PID"); do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
cat >"$WORK/trunkgate.toml" <<TOML
node_id = "bench"
state_dir = "$WORK/state"
[log]
level = "warn,trunkgate::daemon=info"
[database]
$DB_URL_LINE
max_connections = ${DB_MAX_CONNECTIONS:-4}
[sip]
listen = ["udp://127.0.0.1:5060"]
max_calls = 100000
overload_queue_ms = ${OVERLOAD_QUEUE_MS:-50}
cores = ${SIP_CORES:-0}
send_thread_busy_pct = ${SEND_THREAD_BUSY_PCT:-70}
# Signalling only, like the Kamailio reference (which relays no media):
# media anchoring is measured by bench/run-media.sh against rtpengine.
[media]
anchor = false
[[trunk]]
name = "bench-sbc"
portal = "*"
sources = ["127.0.0.1/32"]
[[trunk.route]]
number = "*"
users = ["far-end"]
ring_timeout_s = 30
TOML
tg() { "$TG" --config "$WORK/trunkgate.toml" "$@"; }
tg plan set free --max-cps unlimited --max-users unlimited >/dev/null
for p in bench:100000 limited:10 expired:0; do
    id=${p%%:*}; ch=${p##*:}
    tg portal add --id "$id" --domain "$id.example" >/dev/null
    if [ "$ch" != 0 ]; then
        tg extension add --portal "$id" --channels "$ch" \
            --valid-from 2020-01-01T00:00:00Z --valid-until 2099-01-01T00:00:00Z >/dev/null
    fi
    printf 'far-end-password\n' | tg user add --portal "$id" --username far-end >/dev/null
    tg user set-contact --portal "$id" --username far-end --contact sip:far-end@127.0.0.1:5080 >/dev/null
done
# At the harness's nice level (BENCH_NICE, default -10, as root only), the
# level it starts Kamailio and both SIPp instances at: at nice 0 beside
# them, the scheduler's weights gave each SIPp about nine times the
# daemon's share of a contended CPU, and a SIPp woken by the daemon's own
# sends preempted it (thousands of involuntary switches a second).
# Started directly (not through the tg function; nice execs it) so $! is
# trunkgate itself.
NICE=()
if [ "${BENCH_NICE:--10}" != 0 ] && [ "$(id -u)" -eq 0 ]; then NICE=(nice -n "${BENCH_NICE:--10}"); fi
"${NICE[@]}" "$TG" --config "$WORK/trunkgate.toml" run >"$WORK/trunkgate.log" 2>&1 &
PID=$!
# TRUNKGATE_LOG=path keeps the daemon's log (the work folder is removed).
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; [ -z "${TRUNKGATE_LOG:-}" ] || cp "$WORK/trunkgate.log" "$TRUNKGATE_LOG"; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do grep -q '"ready"\|ready' "$WORK/trunkgate.log" 2>/dev/null && break; sleep 0.1; done
OUT_DIR=${OUT_DIR:-$ROOT/bench/results/trunkgate-$(date +%Y%m%d-%H%M%S)}
export OUT_DIR
[ -z "${PG_PID:-}" ] || PG0=$(pg_ticks)
TARGET=127.0.0.1:5060 SUT_PID=$PID SUT_NAME="trunkgate ${TRUNKGATE_BIN:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)} (${DATABASE:-sqlite})" \
    EXPECT_REASONS=0 "$HARNESS/run-target.sh"
if [ -n "${PG_PID:-}" ]; then
    PG1=$(pg_ticks)
    # Every call the harness made has its record (written behind): wait for
    # the count to settle, then PostgreSQL's CPU per recorded call.
    prev=-1
    for _ in $(seq 30); do
        n=$(psql "$PG_URL/trunkgate_bench" -qAt -c "SELECT COUNT(*) FROM call_records")
        [ "$n" = "$prev" ] && break
        prev=$n; sleep 1
    done
    awk -v t=$((PG1 - PG0)) -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN {
        printf "PostgreSQL CPU over the run: %.1f s for %d call records: %.0f us per call\n", t / hz, n, n ? t / hz / n * 1e6 : 0
    }' | tee -a "$OUT_DIR/report.md"
fi
echo "report: $OUT_DIR/report.md"
