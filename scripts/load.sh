#!/usr/bin/env bash
# End-to-end load on loopback: requests per second of fhir-binary-proxy serving a 4 KiB Binary
# natively, against the same proxy passing the same Binary's FHIR JSON through untouched
# (`_format=json`). Uses wrk (Debian package `wrk`); only 127.0.0.1; bounded in time.
# The two alternate, `rounds` times each, in turn first and second (JSON, native, native,
# JSON, ...), so that a machine that slows down or speeds up during the runs favours neither;
# the ratio of each round and their median are printed, with the CPU time the proxy process
# (demo backend included) spent per request, from /proc, a steadier figure on a busy machine.
#
# With BASELINE=/path/to/another/fhir-binary-proxy, the two compared are that binary and this
# tree's, both serving the Binary natively (e.g. before and after a change). BASELINE_ARGS adds
# flags to the baseline's command line: BASELINE=target/release/fhir-binary-proxy
# BASELINE_ARGS=--no-rewrite-body-urls compares this tree with and without a feature.
#
#   scripts/load.sh [seconds per run, default 10] [connections, default 32] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-10}"
connections="${2:-32}"
rounds="${3:-3}"
port="${LOAD_PORT:-18080}"

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
# CURRENT=/path/to/fhir-binary-proxy runs that binary as this tree's, without building.
if [ -n "${CURRENT:-}" ]; then
  current="$CURRENT"
else
  cargo build -q --release --features proxy --bin fhir-binary-proxy
  current="${CARGO_TARGET_DIR:-target}/release/fhir-binary-proxy"
fi

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done' EXIT

# Starts `binary` with its embedded demo backend on `port` (logs off so that they cost nothing),
# creates a 4 KiB Binary through it and sets `started` to the Binary's URL.
start() {
  local binary="$1" port="$2" base="http://127.0.0.1:$2"
  shift 2
  RUST_LOG=off "$binary" --listen "127.0.0.1:${port}" "$@" >/dev/null 2>&1 &
  pids+=($!)
  started_pid=$!
  for _ in $(seq 100); do
    curl -sf "${base}/metadata" >/dev/null 2>&1 && break
    sleep 0.1
  done
  local data location id native
  data=$(head -c 4096 /dev/urandom | base64 -w0)
  location=$(curl -sf -D - -o /dev/null -X POST "${base}/Binary" \
    -H 'Content-Type: application/fhir+json' \
    --data "{\"resourceType\":\"Binary\",\"contentType\":\"application/octet-stream\",\"data\":\"${data}\"}" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  id=$(basename "${location%%/_history*}")
  [ -n "$id" ] || { echo "could not create the Binary" >&2; exit 1; }
  native=$(curl -sf "${base}/Binary/${id}" | wc -c)
  [ "$native" -eq 4096 ] || { echo "the native document has ${native} bytes, not 4096" >&2; exit 1; }
  started="${base}/Binary/${id}"
}

if [ -n "${BASELINE:-}" ]; then
  a_name="baseline"
  b_name="current"
  # shellcheck disable=SC2086 # BASELINE_ARGS is a list of flags
  start "$BASELINE" "$port" ${BASELINE_ARGS:-}
  a_url="$started"
  a_pid="$started_pid"
  start "$current" "$((port + 1))"
  b_url="$started"
  b_pid="$started_pid"
else
  a_name="FHIR JSON untouched"
  b_name="native (decoded)"
  start "$current" "$port"
  a_url="${started}?_format=json"
  b_url="${started}"
  a_pid="$started_pid"
  b_pid="$started_pid"
fi

ticks=$(getconf CLK_TCK)
# Requests per second of url $1 under wrk, and the CPU time in µs that process $2 spent per
# request.
rps() {
  local before after
  before=$(awk '{ print $14 + $15 }' "/proc/$2/stat")
  wrk -t2 -c"$connections" -d"${duration}s" "$1" >"$wrk_out"
  after=$(awk '{ print $14 + $15 }' "/proc/$2/stat")
  awk -v b="$before" -v a="$after" -v t="$ticks" \
    '/requests in/ { n = $1 } /Requests\/sec/ { r = $2 } END { printf "%s %.1f\n", r, (a - b) * 1e6 / t / n }' "$wrk_out"
}
wrk_out=$(mktemp)
ratios=()
cpu_ratios=()
for round in $(seq "$rounds"); do
  if ((round % 2)); then
    read -r a_rps a_cpu < <(rps "$a_url" "$a_pid")
    read -r b_rps b_cpu < <(rps "$b_url" "$b_pid")
  else
    read -r b_rps b_cpu < <(rps "$b_url" "$b_pid")
    read -r a_rps a_cpu < <(rps "$a_url" "$a_pid")
  fi
  ratio=$(awk -v b="$b_rps" -v a="$a_rps" 'BEGIN { printf "%.3f", b / a }')
  ratios+=("$ratio")
  cpu_ratios+=("$(awk -v b="$b_cpu" -v a="$a_cpu" 'BEGIN { printf "%.3f", b / a }')")
  echo "round ${round}: ${a_name} ${a_rps} requests/s (${a_cpu} µs CPU a request), ${b_name} ${b_rps} requests/s (${b_cpu} µs), ratio ${ratio}"
done
rm -f "$wrk_out"
median() { printf '%s\n' "$@" | sort -n | awk '{ r[NR] = $1 } END { print (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'; }
echo "median ratio ${b_name} / ${a_name} over ${rounds} rounds: requests/s $(median "${ratios[@]}"), CPU a request $(median "${cpu_ratios[@]}")"
