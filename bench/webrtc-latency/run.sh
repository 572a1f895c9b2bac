#!/usr/bin/env bash
# INVITE to first audio with a headless Chromium answering at once, and
# CPU per browser call: trunkgate beside the WebRTC anchor an operator
# would otherwise deploy (Kamailio 5.6 + rtpengine 10.5 userspace,
# ../shared/bench/webrtc-anchor), on this machine, in one sitting.
#
#   bench/webrtc-latency/run.sh                       # trunkgate, anchor, trunkgate
#   RUNS="anchor" CALLS=10 bench/webrtc-latency/run.sh
#
# Both sides get the same PBX (latency.mjs: SIP over UDP from 127.0.0.2,
# PCMU/PCMA + telephone-event offer, a second of audio, BYE) and the same
# page (web/softphone's build, ?autoanswer=1): served by trunkgate over
# wss:// for trunkgate; loaded from the file for the anchor, pointed at its
# wss://127.0.0.1:5443. CPU per call: the server processes' user+system
# time over the run (trunkgate: the daemon; anchor: every kamailio process
# and rtpengine), divided by the calls; this includes registration
# keep-alives and the second of media per call.
#
# Needs: chromium, node (tests/browser's playwright-core: npm ci there),
# openssl, kamailio kamailio-websocket-modules kamailio-tls-modules
# kamailio-extra-modules rtpengine-daemon (apt). LOG_LEVEL sets trunkgate's
# log level (default warn; its log is kept with the results). Results:
# bench/results/webrtc-latency-<time>/ (git-ignored).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RUNS=${RUNS:-trunkgate anchor trunkgate}
CALLS=${CALLS:-20}
HOLD_MS=${HOLD_MS:-1000}
OUT=${OUT_DIR:-$ROOT/bench/results/webrtc-latency-$(date +%Y%m%d-%H%M%S)}
ANCHOR=${ANCHOR:-$ROOT/../shared/bench/webrtc-anchor/start.sh}
mkdir -p "$OUT"
[ -d "$ROOT/tests/browser/node_modules/playwright-core" ] || (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund)
cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" --bin trunkgate
BIN=$CARGO_TARGET_DIR/release/trunkgate

# CPU seconds (user+system) of the processes whose ids are given.
cpu_of() {
    local total=0 pid t
    for pid in "$@"; do
        [ -r "/proc/$pid/stat" ] || continue
        t=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        total=$((total + t))
    done
    echo "$total"
}
ticks=$(getconf CLK_TCK)

run_trunkgate() {
    local n=$1 d; d=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
    cat >"$d/trunkgate.toml" <<EOF
node_id = "bench"
state_dir = "$d/state"
[log]
level = "${LOG_LEVEL:-warn}"
[database]
url = "sqlite://$d/state/trunkgate.db"
[sip]
listen = ["udp://127.0.0.1:5070", "wss://127.0.0.1:8443"]
[tls]
certificate = "$d/cert.pem"
private_key = "$d/key.pem"
[media]
public_address = ["127.0.0.1"]
bind_address = ["127.0.0.1"]
port_min = 31000
port_max = 31999
webrtc_port = 32000
[[trunk]]
name = "pbx"
portal = "acme"
sources = ["127.0.0.2/32"]
[[trunk.route]]
number = "+15550001"
users = ["alice"]
EOF
    local tg="$BIN --config $d/trunkgate.toml"
    $tg portal add --id acme --domain acme.example.com >/dev/null
    $tg extension add --portal acme --channels 10 --valid-from 2020-01-01T00:00:00Z --valid-until 2099-01-01T00:00:00Z >/dev/null
    echo "alice-secret-1" | $tg user add --portal acme --username alice >/dev/null
    $tg run 2>"$OUT/$n-daemon.log" & local pid=$!
    for _ in $(seq 100); do grep -q 'ready' "$OUT/$n-daemon.log" 2>/dev/null && break; sleep 0.1; done
    local before; before=$(cpu_of "$pid")
    node "$ROOT/bench/webrtc-latency/latency.mjs" "$(printf '{"page":"https://127.0.0.1:8443/softphone?autoanswer=1","domain":"acme.example.com","username":"alice","password":"alice-secret-1","pbx":"127.0.0.2","target":"127.0.0.1:5070","ruri":"sip:+15550001@127.0.0.1:5070","calls":%d,"hold_ms":%d}' "$CALLS" "$HOLD_MS")" \
        | tee "$OUT/$n-trunkgate.jsonl"
    local after; after=$(cpu_of "$pid")
    echo "{\"run\":\"$n-trunkgate\",\"cpu_ms_per_call\":$(( (after - before) * 1000 / ticks / CALLS ))}" | tee -a "$OUT/cpu.jsonl"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$d"
}

run_anchor() {
    local n=$1
    MAX_SECONDS=600 "$ANCHOR" >"$OUT/$n-anchor.log" 2>&1 & local starter=$!
    for _ in $(seq 100); do grep -q "anchor up" "$OUT/$n-anchor.log" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    local pids; pids=$(pgrep -x kamailio; pgrep -x rtpengine)
    local before; before=$(cpu_of $pids)
    node "$ROOT/bench/webrtc-latency/latency.mjs" "$(printf '{"page":"file://%s/web/softphone/dist/index.html?server=wss://127.0.0.1:5443&autoanswer=1","domain":"127.0.0.1","username":"alice","password":"x","pbx":"127.0.0.1","target":"127.0.0.1:5090","ruri":"sip:alice@127.0.0.1:5090","calls":%d,"hold_ms":%d}' "$ROOT" "$CALLS" "$HOLD_MS")" \
        | tee "$OUT/$n-anchor.jsonl"
    local after; after=$(cpu_of $pids)
    echo "{\"run\":\"$n-anchor\",\"cpu_ms_per_call\":$(( (after - before) * 1000 / ticks / CALLS ))}" | tee -a "$OUT/cpu.jsonl"
    pkill -P "$starter" 2>/dev/null || true; kill "$starter" 2>/dev/null || true
    pkill -x kamailio 2>/dev/null || true; pkill -x rtpengine 2>/dev/null || true
    wait "$starter" 2>/dev/null || true
    sleep 1
}

i=0
for r in $RUNS; do
    i=$((i + 1))
    "run_$r" "$i"
done
echo "results in $OUT"
