#!/usr/bin/env bash
# Checks that the checked-in model tables (src/model/*.rs) are exactly what
# tools/fhir-tables/generate.py makes from the official definitions.
# Usage: tools/fhir-tables/check.sh [DEFINITIONS_DIR]   (default ../shared/definitions)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
definitions="${1:-$root/../shared/definitions}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
python3 "$root/tools/fhir-tables/generate.py" "$definitions" "$out"
if ! diff -r "$root/src/model" "$out"; then
  echo "src/model differs from what tools/fhir-tables/generate.py makes from $definitions" >&2
  exit 1
fi
echo "src/model matches the definitions in $definitions"
