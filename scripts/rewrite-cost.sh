#!/usr/bin/env bash
# What rewriting the upstream's URLs in JSON bodies costs a large native read: a 64 MiB Binary
# (contentType before data) served by Python's http.server on 127.0.0.1, read natively with curl
# through two proxies of the same binary, one with --no-rewrite-body-urls, alternately, `rounds`
# times each; prints each time, the medians and their ratio, the upstream read directly, and
# the CPU time each proxy process spent per read (from /proc, in 10 ms ticks).
#
#   scripts/rewrite-cost.sh [rounds, default 10] [MiB, default 64] [php: every / escaped as \/]
# CURRENT=/path/to/fhir-binary-proxy runs that binary instead of building this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds="${1:-10}"
mib="${2:-64}"
escaping="${3:-plain}"
port="${LOAD_PORT:-18280}"

if [ -n "${CURRENT:-}" ]; then
  binary="$CURRENT"
else
  cargo build -q --release --features proxy --bin fhir-binary-proxy
  binary="${CARGO_TARGET_DIR:-target}/release/fhir-binary-proxy"
fi

dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done; rm -rf "$dir"' EXIT

mkdir -p "$dir/fhir/Binary"
python3 - "$dir/fhir/Binary/big" "$mib" "$port" "$escaping" <<'PY'
import base64, os, sys
path, mib, port, escaping = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = base64.b64encode(os.urandom(mib << 20)).decode()
if escaping == "php":
    data = data.replace("/", "\\/")
with open(path, "w") as f:
    f.write('{"resourceType":"Binary","id":"big","contentType":"application/octet-stream",'
            f'"securityContext":{{"reference":"http://127.0.0.1:{port}/fhir/Patient/1"}},'
            f'"data":"{data}"}}')
PY
# http.server names a file without extension application/octet-stream: a .json name and a
# symlink would not help, so serve it as `big` with a handler that says JSON.
python3 - "$dir" "$port" >/dev/null 2>&1 <<'PY' &
import http.server, sys
directory, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=directory, **k)
    def guess_type(self, path):
        return "application/fhir+json"
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
PY
pids+=($!)
RUST_LOG=off "$binary" --listen "127.0.0.1:$((port + 1))" --upstream "http://127.0.0.1:${port}/fhir" >/dev/null 2>&1 &
on_pid=$!
pids+=("$on_pid")
RUST_LOG=off "$binary" --listen "127.0.0.1:$((port + 2))" --upstream "http://127.0.0.1:${port}/fhir" --no-rewrite-body-urls >/dev/null 2>&1 &
off_pid=$!
pids+=("$off_pid")
for p in 0 1 2; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$((port + p))/fhir/Binary/big" 2>/dev/null && break
    sleep 0.1
  done
done

time_of() {
  curl -sf -o /dev/null -H 'Accept: application/octet-stream' -w '%{time_total}' "$1"
}
on_url="http://127.0.0.1:$((port + 1))/Binary/big"
off_url="http://127.0.0.1:$((port + 2))/Binary/big"
size=$(curl -sf -H 'Accept: application/octet-stream' "$on_url" | wc -c)
[ "$size" -eq $((mib << 20)) ] || { echo "the native document has ${size} bytes" >&2; exit 1; }
# User and system CPU time of a process, in ticks.
cpu_of() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
on_cpu=$(cpu_of "$on_pid")
off_cpu=$(cpu_of "$off_pid")
on=()
off=()
direct=()
for round in $(seq "$rounds"); do
  if ((round % 2)); then
    on+=("$(time_of "$on_url")")
    off+=("$(time_of "$off_url")")
  else
    off+=("$(time_of "$off_url")")
    on+=("$(time_of "$on_url")")
  fi
  direct+=("$(time_of "http://127.0.0.1:${port}/fhir/Binary/big")")
  echo "round ${round}: rewriting on ${on[-1]} s, off ${off[-1]} s, upstream directly ${direct[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ r[NR] = $1 } END { print (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }'; }
on_cpu=$(($(cpu_of "$on_pid") - on_cpu))
off_cpu=$(($(cpu_of "$off_pid") - off_cpu))
ticks=$(getconf CLK_TCK)
awk -v on="$on_cpu" -v off="$off_cpu" -v t="$ticks" -v n="$rounds" 'BEGIN {
  printf "CPU time per read: on %.1f ms, off %.1f ms\n", on * 1000 / t / n, off * 1000 / t / n }'
m_on=$(median "${on[@]}")
m_off=$(median "${off[@]}")
m_direct=$(median "${direct[@]}")
awk -v on="$m_on" -v off="$m_off" -v d="$m_direct" -v mib="$mib" 'BEGIN {
  printf "median over the rounds: on %.4f s, off %.4f s (on/off %.3f); upstream directly %.4f s\n", on, off, on / off, d }'
