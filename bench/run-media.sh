#!/usr/bin/env bash
# The media relay benchmark (issue 8): the most concurrent relayed G.711
# calls at < 0.1 % loss, CPU per relayed packet and memory per call, for
# rtpengine (userspace forwarding, driven over its ng protocol) and for
# trunkgate (calls set up over SIP), on this machine, in one run, with the
# same generator (bench/mediaload) on the same box.
#
#   bench/run-media.sh                          # rtpengine, then trunkgate
#   STEPS=500,1000 WINDOW=10 bench/run-media.sh # a short run
#   ABA=1 bench/run-media.sh                    # rtpengine, trunkgate, rtpengine
#   RUNS="trunkgate" bench/run-media.sh         # one relay only
#   RUNS="baseline" bench/run-media.sh          # no relay: the generator alone
#
# What it sets up:
#   - rtpengine in the foreground, userspace only (--table=-1), on
#     127.0.0.1, ng on 127.0.0.1:$NG_PORT, RTP ports $RTPE_PORT_MIN..MAX,
#     sessions freed at once on delete (--delete-delay=0); installed with
#     apt (rtpengine-daemon) if missing;
#   - trunkgate (release) as bench/run-harness.sh starts it: SQLite in a
#     temp dir, one trunk from 127.0.0.1 (`portal = "*"`), portal
#     bench.example (100000 channels), user `far-end` whose static contact
#     is the generator's phone side (127.0.0.1:$PHONE_PORT), every number
#     routed to it, the free plan's call-rate limit lifted; a `[media]`
#     section when MEDIA_SECTION=1.
#   SIP ports default to 5160/5170/5180 (trunkgate/PBX/phone), not the
#   shared harness's 5060/5080, so the two benches can share the box.
#
# The generator runs at nice $GEN_NICE (-10): on a saturated box the relay,
# not the generator, must be what falls behind, whatever the number of
# threads each relay runs; otherwise the load asked for is not offered
# (the generator reports skipped slots) and the step says nothing about
# the relay.
#
# MEDIA_SECTION=1 (the default) writes the `[media]` section below (ports
# 10000-29999, MEDIA_THREADS relay threads); with 0 the daemon's defaults
# apply. A step whose media flowed generator to generator (`media_path:
# direct`, e.g. with `[media] anchor = false`) is never "clean".
#
# Variables: STEPS CPS WINDOW SETTLE COOLDOWN WORKERS SOCKETS (shared|per-call)
# MAX_LOSS STOP_AFTER_FAILURE=1 RUNS ABA MEDIA_SECTION MEDIA_THREADS MEDIA_IO_URING
# GEN_NICE RTPE_THREADS (default: rtpengine's own) RTPE_LOG_LEVEL
# NG_PORT SIP_PORT PBX_PORT PHONE_PORT OUT_DIR.
# Results: $OUT_DIR (default bench/results/media-<time>/, git-ignored):
# results.jsonl (one line per step), one log and table per run, summary.md.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

STEPS=${STEPS:-500,1000,1250,1500,2000}
CPS=${CPS:-200}
WINDOW=${WINDOW:-20}
SETTLE=${SETTLE:-3}
COOLDOWN=${COOLDOWN:-3}
WORKERS=${WORKERS:-2}
SOCKETS=${SOCKETS:-shared}
MAX_LOSS=${MAX_LOSS:-0.1}
LATE_MS=${LATE_MS:-50}
GEN_NICE=${GEN_NICE:--10}
MEDIA_SECTION=${MEDIA_SECTION:-1}
MEDIA_THREADS=${MEDIA_THREADS:-2}
NG_PORT=${NG_PORT:-22222}
RTPE_PORT_MIN=${RTPE_PORT_MIN:-10000}
RTPE_PORT_MAX=${RTPE_PORT_MAX:-31999}
RTPE_LOG_LEVEL=${RTPE_LOG_LEVEL:-4}
SIP_PORT=${SIP_PORT:-5160}
PBX_PORT=${PBX_PORT:-5170}
PHONE_PORT=${PHONE_PORT:-5180}
if [ "${ABA:-0}" = 1 ]; then
    RUNS=${RUNS:-rtpengine trunkgate rtpengine}
else
    RUNS=${RUNS:-rtpengine trunkgate}
fi
OUT_DIR=${OUT_DIR:-$ROOT/bench/results/media-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
log() { printf '\n==> %s\n' "$*" >&2; }

# --- rtpengine ------------------------------------------------------------------
if [[ " $RUNS " == *" rtpengine "* ]] && ! command -v rtpengine >/dev/null 2>&1; then
    log "installing rtpengine-daemon"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends rtpengine-daemon
fi
if pgrep -x rtpengine >/dev/null 2>&1; then
    echo "warning: an rtpengine is already running (pid $(pgrep -x rtpengine | tr '\n' ' ')): it shares the CPU" >&2
fi

# Every endpoint is a socket for rtpengine (two per call side) and possibly
# for the generator (SOCKETS=per-call): as many files as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- build ------------------------------------------------------------------------
log "building (release): trunkgate, mediaload"
env -u OUT_DIR cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" -p trunkgate -p mediaload
ML_BIN="$CARGO_TARGET_DIR/release/mediaload"
ML() { nice -n "$GEN_NICE" "$ML_BIN" "$@"; }
TG="$CARGO_TARGET_DIR/release/trunkgate"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $REV$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "rtpengine: $(rtpengine --version 2>&1 | head -1 || echo absent)"
    echo "steps=$STEPS cps=$CPS window=$WINDOW settle=$SETTLE workers=$WORKERS sockets=$SOCKETS gen_nice=$GEN_NICE"
    echo "runs: $RUNS; MEDIA_SECTION=$MEDIA_SECTION"
} >"$OUT_DIR/environment.txt"
cat "$OUT_DIR/environment.txt" >&2

COMMON=(--steps "$STEPS" --cps "$CPS" --window "$WINDOW" --settle "$SETTLE" --cooldown "$COOLDOWN"
    --workers "$WORKERS" --sockets "$SOCKETS" --max-loss "$MAX_LOSS" --late-ms "$LATE_MS"
    --json "$OUT_DIR/results.jsonl")
[ "${STOP_AFTER_FAILURE:-0}" = 1 ] && COMMON+=(--stop-after-failure)

# The process this script started last, stopped on exit whatever happens.
SUT_PID=""
WORK=""
cleanup() {
    if [ -n "$SUT_PID" ] && kill -0 "$SUT_PID" 2>/dev/null; then
        kill -TERM "$SUT_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SUT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SUT_PID" 2>/dev/null || true
        wait "$SUT_PID" 2>/dev/null || true
    fi
    SUT_PID=""
    if [ -n "$WORK" ]; then rm -rf "$WORK"; WORK=""; fi
}
trap cleanup EXIT

udp_bound() { ss -Hnlu "sport = :$1" 2>/dev/null | grep -q .; }

run_rtpengine() {
    local n=$1
    local version
    version=$(rtpengine --version 2>&1 | head -1 | sed 's/^Version: //')
    log "run $n: rtpengine $version (userspace, ng 127.0.0.1:$NG_PORT)"
    if udp_bound "$NG_PORT"; then echo "UDP port $NG_PORT is taken" >&2; exit 1; fi
    local args=(--config-file=none --foreground --log-stderr --log-level="$RTPE_LOG_LEVEL" --table=-1
        --interface=127.0.0.1 --listen-ng=127.0.0.1:"$NG_PORT"
        --port-min="$RTPE_PORT_MIN" --port-max="$RTPE_PORT_MAX" --delete-delay=0 --timeout=60)
    [ -n "${RTPE_THREADS:-}" ] && args+=(--num-threads="$RTPE_THREADS")
    rtpengine "${args[@]}" >"$OUT_DIR/run$n-rtpengine.log" 2>&1 &
    SUT_PID=$!
    for _ in $(seq 100); do udp_bound "$NG_PORT" && break; sleep 0.1; done
    udp_bound "$NG_PORT" || { echo "rtpengine did not start: see $OUT_DIR/run$n-rtpengine.log" >&2; exit 1; }
    ML --mode rtpengine --ng 127.0.0.1:"$NG_PORT" --relay-pid "$SUT_PID" \
        --label "run$n rtpengine $version" "${COMMON[@]}" | tee "$OUT_DIR/run$n-rtpengine.txt"
    cleanup
}

run_trunkgate() {
    local n=$1
    log "run $n: trunkgate $REV (SIP 127.0.0.1:$SIP_PORT, MEDIA_SECTION=$MEDIA_SECTION)"
    for p in "$SIP_PORT" "$PBX_PORT" "$PHONE_PORT"; do
        if udp_bound "$p"; then echo "UDP port $p is taken" >&2; exit 1; fi
    done
    WORK=$(mktemp -d /tmp/trunkgate-media.XXXXXX)
    local media=""
    if [ "$MEDIA_SECTION" = 1 ]; then
        media=$(cat <<TOML
[media]
public_address = ["127.0.0.1"]
bind_address = ["127.0.0.1"]
port_min = 10000
port_max = 29999
timeout_s = 60
hold_timeout_s = 3600
threads = $MEDIA_THREADS
io_uring = ${MEDIA_IO_URING:-false}
TOML
)
    fi
    cat >"$WORK/trunkgate.toml" <<TOML
node_id = "bench-media"
state_dir = "$WORK/state"
[log]
level = "warn,trunkgate::daemon=info"
[sip]
listen = ["udp://127.0.0.1:$SIP_PORT"]
max_calls = 100000
$media
[[trunk]]
name = "bench-pbx"
portal = "*"
sources = ["127.0.0.1/32"]
[[trunk.route]]
number = "*"
users = ["far-end"]
ring_timeout_s = 30
TOML
    tg() { "$TG" --config "$WORK/trunkgate.toml" "$@"; }
    if ! tg check-config >"$WORK/check.log" 2>&1; then
        cat "$WORK/check.log" >&2
        echo "trunkgate rejects the configuration (MEDIA_SECTION=$MEDIA_SECTION)" >&2
        exit 1
    fi
    tg plan set free --max-cps unlimited --max-users unlimited >/dev/null
    tg portal add --id bench --domain bench.example >/dev/null
    tg extension add --portal bench --channels 100000 \
        --valid-from 2020-01-01T00:00:00Z --valid-until 2099-01-01T00:00:00Z >/dev/null
    printf 'far-end-password\n' | tg user add --portal bench --username far-end >/dev/null
    tg user set-contact --portal bench --username far-end --contact "sip:far-end@127.0.0.1:$PHONE_PORT" >/dev/null
    # Started directly (not through tg) so $! is trunkgate itself.
    "$TG" --config "$WORK/trunkgate.toml" run >"$OUT_DIR/run$n-trunkgate.log" 2>&1 &
    SUT_PID=$!
    for _ in $(seq 100); do grep -q 'ready' "$OUT_DIR/run$n-trunkgate.log" 2>/dev/null && break; sleep 0.1; done
    grep -q 'ready' "$OUT_DIR/run$n-trunkgate.log" || { echo "trunkgate did not start" >&2; exit 1; }
    ML --mode sip --sip-target 127.0.0.1:"$SIP_PORT" --pbx-sip 127.0.0.1:"$PBX_PORT" \
        --phone-sip 127.0.0.1:"$PHONE_PORT" --domain bench.example --relay-pid "$SUT_PID" \
        --label "run$n trunkgate $REV" "${COMMON[@]}" | tee "$OUT_DIR/run$n-trunkgate.txt"
    cleanup
}

run_baseline() {
    local n=$1
    log "run $n: baseline (no relay: each side sends to the other)"
    ML --mode direct --label "run$n baseline (no relay)" "${COMMON[@]}" | tee "$OUT_DIR/run$n-baseline.txt"
}

n=0
for r in $RUNS; do
    n=$((n + 1))
    case $r in
        rtpengine) run_rtpengine "$n" ;;
        trunkgate) run_trunkgate "$n" ;;
        baseline) run_baseline "$n" ;;
        *) echo "unknown run: $r" >&2; exit 2 ;;
    esac
done

# --- summary ------------------------------------------------------------------------
python3 - "$OUT_DIR/results.jsonl" "$MAX_LOSS" "$LATE_MS" >"$OUT_DIR/summary.md" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
max_loss, late_ms = sys.argv[2], sys.argv[3]
def f(v, p=2):
    return "-" if v is None else f"{v:.{p}f}"
print(f"| run | calls | up | loss % | loss % incl. > {late_ms} ms late | latency p50/p99/max ms | jitter ms (mean/peak) | relay CPU % | µs CPU/relayed pkt | KB/call (step / from start) | generator CPU % | media path | clean |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
best, best_late = {}, {}
for r in rows:
    flags = ("yes" if r["clean"] else "no") + (" (generator-limited)" if r["generator_limited"] else "")
    if (r.get("others_cpu_pct") or 0) > 10:
        flags += f' (busy box: others {r["others_cpu_pct"]:.0f} %)'
    print(f'| {r["label"]} | {r["target_calls"]} | {r["calls_up"]} | {r["loss_pct"]:.4f} | {r["loss_with_late_pct"]:.4f} | '
          f'{r["latency_ms_p50"]:.2f}/{r["latency_ms_p99"]:.2f}/{r["latency_ms_max"]:.2f} | '
          f'{r["jitter_ms_mean"]:.2f}/{r["jitter_ms_peak"]:.2f} | {f(r["relay_cpu_pct"], 1)} | '
          f'{f(r["relay_us_per_packet"])} | {f(r["relay_kb_per_call"], 1)} / {f(r["relay_kb_per_call_from_start"], 1)} | '
          f'{r["gen_cpu_pct"]:.1f} | {r["media_path"]} | {flags} |')
    for key, table in (("clean", best), ("clean_with_late", best_late)):
        table[r["label"]] = max(table.get(r["label"], 0), r["target_calls"] if r[key] else 0)
print()
print(f"Most concurrent calls at < {max_loss} % loss (every call up, media relayed, load offered);")
print(f"in brackets: with packets later than {late_ms} ms counted as lost:")
for label, b in best.items():
    bl = best_late.get(label, 0)
    print(f"- {label}: {b if b else 'none of the steps'} ({bl if bl else 'none'})")
PY
cat "$OUT_DIR/summary.md"
echo "results: $OUT_DIR"
