#!/bin/sh
# Seeds fuzz/corpus/<target>/ from the torture suites in tests/data.
# Run from anywhere; safe to run again (it overwrites its own seeds).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data="$here/../tests/data"
pm="$here/corpus/parse_message"
sf="$here/corpus/stream_framer"
mkdir -p "$pm" "$sf"
seed() { # name, file with wire bytes
    cp "$2" "$pm/$1"
    # stream_framer: first byte chooses the chunk size, then a ping and
    # the message twice.
    { printf 'A\r\n\r\n'; cat "$2"; cat "$2"; } > "$sf/$1"
}
for f in "$data"/sip-torture/*.dat "$data"/sip-torture/unreferenced/*.dat; do
    seed "rfc4475-$(basename "$f")" "$f"
done
tmp=$(mktemp)
for f in "$data"/sip-torture-ipv6/*; do
    case "$(basename "$f")" in MANIFEST.tsv|SOURCE.md|SHA256SUMS) continue ;; esac
    # RFC 5118's archive is LF-only: seed both the raw and the CRLF form.
    seed "rfc5118-$(basename "$f")-lf" "$f"
    sed 's/$/\r/' "$f" > "$tmp"
    seed "rfc5118-$(basename "$f")-crlf" "$tmp"
done
rm -f "$tmp"
echo "seeded $(ls "$pm" | wc -l) inputs per target under $here/corpus"
