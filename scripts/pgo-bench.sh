#!/usr/bin/env bash
# The per-request benchmark built as a latency-minded application would build its server:
# profile-guided (PGO) and with fat link-time optimisation, for the layer and its baselines
# alike. It trains on the benchmark itself (criterion's --profile-time), then measures it.
#
# Why: the layer's fixed cost per request is limited by where its code lies, not by how much
# of it runs. Each request touches more code than a 32 KiB instruction cache holds; a profile
# lets the compiler put the hot paths together. Compare with a plain `cargo bench --bench
# throughput -- "per request"`.
#
#   scripts/pgo-bench.sh [criterion filter, default "per request"]
#
# Needs the toolchain's llvm-profdata (rustup component llvm-tools, added here if missing).
# Builds in target/pgo, apart from the usual target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

filter="${1:-per request}"

sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="${sysroot}/lib/rustlib/${host}/bin/llvm-profdata"
[ -x "$profdata" ] || rustup component add llvm-tools
[ -x "$profdata" ] || { echo "llvm-profdata not found at ${profdata}" >&2; exit 1; }

work="${PWD}/target/pgo"
rm -rf "${work}/profiles" "${work}/merged.profdata"
mkdir -p "${work}/profiles"
export CARGO_PROFILE_BENCH_LTO=fat CARGO_PROFILE_BENCH_CODEGEN_UNITS=1

echo "== training (instrumented build)" >&2
RUSTFLAGS="-Cprofile-generate=${work}/profiles" CARGO_TARGET_DIR="${work}/generate" \
  cargo bench --bench throughput -- --profile-time 3 "$filter" >/dev/null
"$profdata" merge -o "${work}/merged.profdata" "${work}/profiles"

echo "== measuring (built with the profile)" >&2
RUSTFLAGS="-Cprofile-use=${work}/merged.profdata" CARGO_TARGET_DIR="${work}/use" \
  cargo bench --bench throughput -- "$filter"
