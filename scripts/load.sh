#!/usr/bin/env bash
# End-to-end load on loopback: requests per second of fhir-binary-proxy serving a 4 KiB Binary
# natively, against the same proxy passing the same Binary's FHIR JSON through untouched
# (`_format=json`). Uses wrk (Debian package `wrk`); only 127.0.0.1; bounded in time.
# The two alternate, `rounds` times each, in turn first and second (JSON, native, native,
# JSON, ...), so that a machine that slows down or speeds up during the runs favours neither;
# the ratio of each round and their median are printed.
#
#   scripts/load.sh [seconds per run, default 10] [connections, default 32] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-10}"
connections="${2:-32}"
rounds="${3:-3}"
port="${LOAD_PORT:-18080}"
base="http://127.0.0.1:${port}"

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build -q --release --features proxy --bin fhir-binary-proxy

# The proxy with its embedded demo backend; logs off so that they cost nothing.
RUST_LOG=off target/release/fhir-binary-proxy --listen "127.0.0.1:${port}" >/dev/null 2>&1 &
proxy=$!
trap 'kill "$proxy" 2>/dev/null; wait "$proxy" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "${base}/metadata" >/dev/null 2>&1 && break
  sleep 0.1
done

# A 4 KiB document, created through the proxy (POST passes through to the demo backend).
data=$(head -c 4096 /dev/urandom | base64 -w0)
location=$(curl -sf -D - -o /dev/null -X POST "${base}/Binary" \
  -H 'Content-Type: application/fhir+json' \
  --data "{\"resourceType\":\"Binary\",\"contentType\":\"application/octet-stream\",\"data\":\"${data}\"}" |
  tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
id=$(basename "${location%%/_history*}")
[ -n "$id" ] || { echo "could not create the Binary" >&2; exit 1; }
native=$(curl -sf "${base}/Binary/${id}" | wc -c)
[ "$native" -eq 4096 ] || { echo "the native document has ${native} bytes, not 4096" >&2; exit 1; }

rps() {
  wrk -t2 -c"$connections" -d"${duration}s" "$1" | awk '/Requests\/sec/ {print $2}'
}
ratios=()
for round in $(seq "$rounds"); do
  if ((round % 2)); then
    json_rps=$(rps "${base}/Binary/${id}?_format=json")
    native_rps=$(rps "${base}/Binary/${id}")
  else
    native_rps=$(rps "${base}/Binary/${id}")
    json_rps=$(rps "${base}/Binary/${id}?_format=json")
  fi
  ratio=$(awk -v n="$native_rps" -v j="$json_rps" 'BEGIN { printf "%.3f", n / j }')
  ratios+=("$ratio")
  echo "round ${round}: FHIR JSON untouched ${json_rps} requests/s, native (decoded) ${native_rps} requests/s, ratio ${ratio}"
done
printf '%s\n' "${ratios[@]}" | sort -n |
  awk '{ r[NR] = $1 } END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2; printf "median ratio native / JSON over %d rounds: %.3f\n", NR, m }'
