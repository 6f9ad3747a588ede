#!/usr/bin/env bash
# Memory of fhir-binary-proxy under slow readers of a 64 MiB Binary, natively, as FHIR JSON and
# as FHIR XML, one run each: resident memory before, per reader at the peak, and after the
# readers leave; requests per second of other clients (wrk, if installed) alone and during the
# attack. See examples/slow_readers.rs. Only 127.0.0.1; takes about 80 s a format.
#
# With BASELINE=/path/to/another/fhir-binary-proxy, each format is run against that binary too
# (e.g. before and after a change), alternating.
#
#   scripts/slow-readers.sh [readers, default 1000] [seconds at full attack, default 30] [formats...]
set -euo pipefail
cd "$(dirname "$0")/.."

readers="${1:-1000}"
seconds="${2:-30}"
shift 2 2>/dev/null || shift $#
formats=("${@:-native json xml}")
read -r -a formats <<<"${formats[*]}"

if [ "$(ulimit -n)" -lt $((readers * 3 + 100)) ]; then
  ulimit -n $((readers * 3 + 100)) 2>/dev/null ||
    { echo "needs $((readers * 3 + 100)) file descriptors (ulimit -n)" >&2; exit 1; }
fi
cargo build -q --release --features proxy --bin fhir-binary-proxy
cargo build -q --release --example slow_readers
target="${CARGO_TARGET_DIR:-target}/release"
current="${target}/fhir-binary-proxy"

for format in "${formats[@]}"; do
  for proxy in ${BASELINE:+"$BASELINE"} "$current"; do
    "${target}/examples/slow_readers" --proxy "$proxy" --format "$format" \
      --readers "$readers" --seconds "$seconds"
  done
done
