#!/usr/bin/env bash
# PBX↔browser calls through trunkgate (issue 9, item 6): the most concurrent
# calls at < 0.1 % loss with a generator playing many browsers, and the
# DTLS handshakes per second, on this machine.
#
#   bench/run-browser-load.sh                              # the default steps
#   STEPS=20,200 CPS=50 WINDOW=5 bench/run-browser-load.sh # a short check
#   STEPS=1000 CPS=500 WINDOW=5 bench/run-browser-load.sh  # handshakes/s at 500 cps
#
# The generator (bench/mediaload --mode browser) is both ends of every call:
#   - the PBX: SIP over UDP from 127.0.0.1:$PBX_PORT to trunkgate's
#     127.0.0.1:$SIP_PORT, plain G.711 RTP (50 packets/s each way); call k
#     dials $NUMBER<k mod USERS>;
#   - USERS browsers b0..b<USERS-1> (password bench-pw-b<i>): each registers over
#     its own WebSocket to ws://127.0.0.1:$WS_PORT (USERS_PER_CONN to share
#     connections), answers the INVITE trunkgate forks to it with a str0m
#     peer in the browser's role (full ICE, controlling; DTLS client; SRTP)
#     on a UDP socket of its own, and sends and receives the same stamped
#     G.711 payloads through it.
# trunkgate (release) runs as bench/run-media.sh starts it: SQLite in a temp
# dir, one trunk from 127.0.0.1 (`portal = "*"`), portal bench.example
# (100000 channels), the free plan's call-rate and user limits lifted; one
# `[[trunk.route]]` per user (number $NUMBER<i> rings b<i>), a ws://
# listener and the browsers' shared port $WEBRTC_PORT.
#
# Per step (see bench/mediaload/src/main.rs): calls set up at CPS, SETTLE s
# of media, a WINDOW s window measured (loss, latency, jitter, trunkgate's
# CPU and memory), teardown; and the handshakes: 200 OK sent → ICE + DTLS
# done per call (p50/p99/max) and handshakes done per second over the
# setup. To find the handshake ceiling, raise CPS until the rate achieved
# falls behind it or handshakes fail.
#
# The generator runs at nice $GEN_NICE (-10) as in run-media.sh: the relay,
# not the generator, must be what falls behind; `generator-limited` in the
# table says when it did not keep up (skipped slots), and its CPU % is
# printed: in this mode it does the browsers' SRTP and DTLS, which costs
# about what trunkgate's side does.
#
# Variables: STEPS CPS WINDOW SETTLE COOLDOWN WORKERS USERS (default: the
# largest step) USERS_PER_CONN MAX_LOSS STOP_AFTER_FAILURE=1 MEDIA_THREADS
# GEN_NICE DTLS_TIMEOUT SIP_PORT PBX_PORT WS_PORT WEBRTC_PORT NUMBER
# USER_JOBS (parallel `user add`) LOG_LEVEL OUT_DIR.
# Results: $OUT_DIR (default bench/results/browser-<time>/, git-ignored):
# results.jsonl, the table, trunkgate's log, summary.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

STEPS=${STEPS:-250,500,750,1000,1250}
CPS=${CPS:-100}
WINDOW=${WINDOW:-20}
SETTLE=${SETTLE:-3}
COOLDOWN=${COOLDOWN:-3}
WORKERS=${WORKERS:-2}
MAX_LOSS=${MAX_LOSS:-0.1}
LATE_MS=${LATE_MS:-50}
GEN_NICE=${GEN_NICE:--10}
MEDIA_THREADS=${MEDIA_THREADS:-2}
DTLS_TIMEOUT=${DTLS_TIMEOUT:-10}
SIP_PORT=${SIP_PORT:-5260}
PBX_PORT=${PBX_PORT:-5270}
WS_PORT=${WS_PORT:-5280}
WEBRTC_PORT=${WEBRTC_PORT:-20000}
NUMBER=${NUMBER:-9000}
USERS_PER_CONN=${USERS_PER_CONN:-1}
USER_JOBS=${USER_JOBS:-1}
LOG_LEVEL=${LOG_LEVEL:-warn,trunkgate::daemon=info}
max_step=$(tr ',' '\n' <<<"$STEPS" | sort -n | tail -1)
USERS=${USERS:-$max_step}
OUT_DIR=${OUT_DIR:-$ROOT/bench/results/browser-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
log() { printf '\n==> %s\n' "$*" >&2; }

# Each call: a WebSocket and a UDP socket on the generator's side, a TCP
# connection and an RTP pair on trunkgate's.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building (release): trunkgate, mediaload"
# OUT_DIR is unset for cargo: rustc records it as an input of crates that
# read it, and a new value rebuilds them.
env -u OUT_DIR cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p trunkgate -p mediaload
ML_BIN="$CARGO_TARGET_DIR/release/mediaload"
TG="$CARGO_TARGET_DIR/release/trunkgate"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $REV$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "steps=$STEPS cps=$CPS window=$WINDOW settle=$SETTLE workers=$WORKERS users=$USERS users_per_conn=$USERS_PER_CONN gen_nice=$GEN_NICE media_threads=$MEDIA_THREADS"
} >"$OUT_DIR/environment.txt"
cat "$OUT_DIR/environment.txt" >&2

udp_bound() { ss -Hnlu "sport = :$1" 2>/dev/null | grep -q .; }
tcp_bound() { ss -Hnlt "sport = :$1" 2>/dev/null | grep -q .; }
for p in "$SIP_PORT" "$PBX_PORT" "$WEBRTC_PORT"; do
    if udp_bound "$p"; then echo "UDP port $p is taken" >&2; exit 1; fi
done
if tcp_bound "$WS_PORT"; then echo "TCP port $WS_PORT is taken" >&2; exit 1; fi

SUT_PID=""
WORK=$(mktemp -d /tmp/trunkgate-browser.XXXXXX)
cleanup() {
    if [ -n "$SUT_PID" ] && kill -0 "$SUT_PID" 2>/dev/null; then
        kill -TERM "$SUT_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SUT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SUT_PID" 2>/dev/null || true
        wait "$SUT_PID" 2>/dev/null || true
    fi
    SUT_PID=""
    rm -rf "$WORK"
}
trap cleanup EXIT

{
    cat <<TOML
node_id = "bench-browser"
state_dir = "$WORK/state"
[log]
level = "$LOG_LEVEL"
[sip]
listen = ["udp://127.0.0.1:$SIP_PORT", "ws://127.0.0.1:$WS_PORT"]
max_calls = 100000
[media]
public_address = ["127.0.0.1"]
bind_address = ["127.0.0.1"]
port_min = 10000
port_max = 19999
webrtc_port = $WEBRTC_PORT
timeout_s = 60
hold_timeout_s = 3600
threads = $MEDIA_THREADS
[[trunk]]
name = "bench-pbx"
portal = "*"
sources = ["127.0.0.1/32"]
TOML
    for ((i = 0; i < USERS; i++)); do
        printf '[[trunk.route]]\nnumber = "%s%d"\nusers = ["b%d"]\n' "$NUMBER" "$i" "$i"
    done
} >"$WORK/trunkgate.toml"
tg() { "$TG" --config "$WORK/trunkgate.toml" "$@"; }
if ! tg check-config >"$WORK/check.log" 2>&1; then
    cat "$WORK/check.log" >&2
    echo "trunkgate rejects the configuration" >&2
    exit 1
fi
tg plan set free --max-cps unlimited --max-users unlimited >/dev/null
tg portal add --id bench --domain bench.example >/dev/null
tg extension add --portal bench --channels 100000 \
    --valid-from 2020-01-01T00:00:00Z --valid-until 2099-01-01T00:00:00Z >/dev/null
log "creating $USERS users ($USER_JOBS at a time)"
t0=$(date +%s)
export TG WORK
# Retried: a CLI that finds SQLite busy for its pool's acquire timeout
# gives up ("pool timed out while waiting for an open connection").
seq 0 $((USERS - 1)) | xargs -P "$USER_JOBS" -I{} sh -c '
    for try in 1 2 3; do
        printf "bench-pw-b{}\n" | "$TG" --config "$WORK/trunkgate.toml" user add --portal bench --username b{} >/dev/null && exit 0
        echo "user add b{}: attempt $try failed" >&2; sleep 0.5
    done
    exit 1'
echo "users created in $(($(date +%s) - t0)) s" >&2

"$TG" --config "$WORK/trunkgate.toml" run >"$OUT_DIR/trunkgate.log" 2>&1 &
SUT_PID=$!
for _ in $(seq 100); do grep -q 'ready' "$OUT_DIR/trunkgate.log" 2>/dev/null && break; sleep 0.1; done
grep -q 'ready' "$OUT_DIR/trunkgate.log" || { cat "$OUT_DIR/trunkgate.log" >&2; echo "trunkgate did not start" >&2; exit 1; }

ARGS=(--mode browser --steps "$STEPS" --cps "$CPS" --window "$WINDOW" --settle "$SETTLE" --cooldown "$COOLDOWN"
    --workers "$WORKERS" --max-loss "$MAX_LOSS" --late-ms "$LATE_MS" --json "$OUT_DIR/results.jsonl"
    --sip-target 127.0.0.1:"$SIP_PORT" --pbx-sip 127.0.0.1:"$PBX_PORT" --ws 127.0.0.1:"$WS_PORT"
    --domain bench.example --number "$NUMBER" --users "$USERS" --users-per-conn "$USERS_PER_CONN"
    --password-prefix bench-pw- --user-prefix b --dtls-timeout "$DTLS_TIMEOUT"
    --relay-pid "$SUT_PID" --label "trunkgate $REV browsers")
[ "${STOP_AFTER_FAILURE:-0}" = 1 ] && ARGS+=(--stop-after-failure)
log "running: mediaload ${ARGS[*]}"
nice -n "$GEN_NICE" "$ML_BIN" "${ARGS[@]}" | tee "$OUT_DIR/table.txt"

if ! kill -0 "$SUT_PID" 2>/dev/null; then
    echo "trunkgate died during the run: see $OUT_DIR/trunkgate.log" >&2
fi
cleanup

python3 - "$OUT_DIR/results.jsonl" "$MAX_LOSS" >"$OUT_DIR/summary.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def f(v, p=2):
    return "-" if v is None else f"{v:.{p}f}"
print("| calls | up | loss % | latency p50/p99/max ms | jitter ms | trunkgate CPU % | µs CPU/pkt | KB/call | gen CPU % | DTLS ok/failed | DTLS ms p50/p99/max | handshakes/s | clean |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    flags = ("yes" if r["clean"] else "no") + (" (generator-limited)" if r["generator_limited"] else "")
    if (r.get("others_cpu_pct") or 0) > 10:
        flags += f' (busy box: others {r["others_cpu_pct"]:.0f} %)'
    print(f'| {r["target_calls"]} | {r["calls_up"]} | {r["loss_pct"]:.4f} | '
          f'{r["latency_ms_p50"]:.2f}/{r["latency_ms_p99"]:.2f}/{r["latency_ms_max"]:.2f} | {r["jitter_ms_mean"]:.2f} | '
          f'{f(r["relay_cpu_pct"], 1)} | {f(r["relay_us_per_packet"])} | {f(r["relay_kb_per_call"], 1)} | {r["gen_cpu_pct"]:.1f} | '
          f'{r["dtls_connected"]}/{r["dtls_failed"]} | {f(r["dtls_ms_p50"])}/{f(r["dtls_ms_p99"])}/{f(r["dtls_ms_max"])} | '
          f'{f(r["dtls_per_s"], 1)} | {flags} |')
best = max([r["target_calls"] for r in rows if r["clean"]], default=0)
print()
print(f"Most concurrent PBX↔browser calls at < {sys.argv[2]} % loss: {best if best else 'none of the steps'}")
PY
cat "$OUT_DIR/summary.md"
echo "results: $OUT_DIR"
