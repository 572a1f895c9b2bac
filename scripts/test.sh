#!/usr/bin/env bash
# Runs trunkgate's whole test suite on a Debian machine with Rust installed.
#
# - installs the system packages the suite needs when they are missing
#   (PostgreSQL server binaries, sipp, systemd-analyze, ...);
# - uses the PostgreSQL server on 127.0.0.1:5432 when one answers, otherwise
#   starts a throwaway one from the installed binaries (and stops it at exit);
# - checks formatting, clippy and the dependency policy, then runs every test.
#
# Nothing is skipped: a missing peer fails the run.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# --- system packages -----------------------------------------------------------
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
pg_bin_dir() {
    if have initdb && have pg_ctl; then dirname "$(command -v initdb)"; return; fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}
[ -n "$(pg_bin_dir)" ] && [ -x "$(pg_bin_dir)/initdb" ] || need_pkgs+=(postgresql)
have psql || need_pkgs+=(postgresql-client)
have pg_isready || need_pkgs+=(postgresql-client)
have sipp || need_pkgs+=(sip-tester)
have baresip || need_pkgs+=(baresip)
have systemd-analyze || need_pkgs+=(systemd)
have cc || need_pkgs+=(gcc)
have openssl || need_pkgs+=(openssl)
# The browser tests: Debian's Chromium driven by playwright-core (npm).
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
have node || need_pkgs+=(nodejs)
have npm || need_pkgs+=(npm)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# --- Node packages ------------------------------------------------------------------
log "npm: the browser tests' driver, and the softphone page rebuilt from source"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
(cd web/softphone && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build >/dev/null && npm test --silent)
# The page embedded in the binary must be what its source builds to.
if ! git diff --quiet -- web/softphone/dist 2>/dev/null; then
    echo "web/softphone/dist is not what web/softphone/src builds to: run npm run build there and commit dist" >&2
    git diff --stat -- web/softphone/dist >&2
    exit 1
fi

# --- PostgreSQL ------------------------------------------------------------------
PG_TMP=""
cleanup() {
    if [ -n "$PG_TMP" ]; then
        log "stopping the throwaway PostgreSQL"
        runas_pg "$(pg_bin_dir)/pg_ctl" -D "$PG_TMP/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PG_TMP"
    fi
}
trap cleanup EXIT
runas_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ -z "${TRUNKGATE_TEST_PG_URL:-}" ]; then
    # TRUNKGATE_TEST_THROWAWAY_PG=1 skips the local server (to test this path).
    if [ -z "${TRUNKGATE_TEST_THROWAWAY_PG:-}" ] \
        && pg_isready -q -h 127.0.0.1 -p 5432 && psql -h 127.0.0.1 -U postgres -d test -Atc 'SELECT 1' >/dev/null 2>&1; then
        export TRUNKGATE_TEST_PG_URL="postgres://postgres@127.0.0.1:5432/test"
        log "using PostgreSQL on 127.0.0.1:5432"
    else
        log "no PostgreSQL on 127.0.0.1:5432: starting a throwaway server"
        if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
            useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        fi
        PG_TMP=$(mktemp -d /tmp/trunkgate-pg.XXXXXX)
        [ "$(id -u)" = 0 ] && chown postgres "$PG_TMP"
        PORT=55432
        runas_pg "$(pg_bin_dir)/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 >/dev/null
        runas_pg "$(pg_bin_dir)/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/log" -w \
            -o "-p $PORT -k $PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
        psql -h 127.0.0.1 -p $PORT -U postgres -d postgres -qc 'CREATE DATABASE test'
        export TRUNKGATE_TEST_PG_URL="postgres://postgres@127.0.0.1:$PORT/test"
    fi
fi
# Schemas left by earlier runs (each test makes its own).
PG_PSQL_URL="${TRUNKGATE_TEST_PG_URL%%\?*}"
psql "$PG_PSQL_URL" -qAt -c "SELECT 'DROP SCHEMA ' || nspname || ' CASCADE;' FROM pg_namespace WHERE nspname LIKE 't\\_%'" \
    | psql "$PG_PSQL_URL" -q >/dev/null 2>&1 || true

# --- Rust ----------------------------------------------------------------------------
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
log "rustfmt"
cargo fmt --all --check
log "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "dependency policy: no aws-lc-rs (rustls on ring; DTLS on RustCrypto, decision 0005)"
if cargo tree --locked -e normal -i aws-lc-rs >/dev/null 2>&1; then
    echo "aws-lc-rs is in the dependency graph: two rustls providers panic at run time" >&2
    cargo tree --locked -e normal -i aws-lc-rs >&2
    exit 1
fi

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests: run them first so the last summary
    # printed is the whole suite's.
    cargo test --locked --doc
    cargo test --locked -p mediaload
    cargo nextest run --locked --no-fail-fast
else
    # Doctests first, so the last summary printed is a real suite's.
    cargo test --locked --doc
    cargo test --locked -p mediaload
    cargo test --locked --no-fail-fast --lib --bins --tests
fi
