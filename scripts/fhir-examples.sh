#!/usr/bin/env bash
# Converts every official FHIR example of STU3, R4, R4B and R5 (the packages
# hl7.fhir.{r3,r4,r4b,r5}.examples from the npm registry) to FHIR XML with the crate's JSON -> XML
# converter, split at random points, and validates the XML with xmllint against the release's
# official schema (tests/fixtures/xsd; R4B has none and is only converted). The examples the
# packages hold that are not valid FHIR as published are listed below; anything else that fails
# to convert or to validate fails the script.
#
#   scripts/fhir-examples.sh [work directory, default a temporary one]
#
# Needs npm, xmllint (Debian package libxml2-utils) and network access to the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
if [ -n "${1:-}" ]; then
  work="$1"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

# Not FHIR as published: a required element missing, an R4 resource in the STU3 package.
expected_stu3="AdverseEvent-example ImplementationGuide-fhir Questionnaire-qs1
SearchParameter-codesystem-extensions-CodeSystem-author SearchParameter-codesystem-extensions-CodeSystem-effective
SearchParameter-codesystem-extensions-CodeSystem-end SearchParameter-codesystem-extensions-CodeSystem-keyword
SearchParameter-codesystem-extensions-CodeSystem-workflow SearchParameter-location-extensions-Location-alias
SearchParameter-organization-extensions-Organization-alias SearchParameter-valueset-extensions-ValueSet-author
SearchParameter-valueset-extensions-ValueSet-effective SearchParameter-valueset-extensions-ValueSet-end
SearchParameter-valueset-extensions-ValueSet-keyword SearchParameter-valueset-extensions-ValueSet-workflow
StructureDefinition-Definition StructureDefinition-Event StructureDefinition-Request ig-r4"
expected_r4="Bundle-dataelements ImplementationGuide-fhir Questionnaire-qs1 ig-r4
SearchParameter-codesystem-extensions-CodeSystem-author SearchParameter-codesystem-extensions-CodeSystem-effective
SearchParameter-codesystem-extensions-CodeSystem-end SearchParameter-codesystem-extensions-CodeSystem-keyword
SearchParameter-codesystem-extensions-CodeSystem-workflow
SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject
SearchParameter-valueset-extensions-ValueSet-author SearchParameter-valueset-extensions-ValueSet-effective
SearchParameter-valueset-extensions-ValueSet-end SearchParameter-valueset-extensions-ValueSet-keyword
SearchParameter-valueset-extensions-ValueSet-workflow"
expected_r4b=""
expected_r5="Bundle-dataelements"

status=0
for spec in r3:3.0.2:stu3 r4:4.0.1:r4 r4b:4.3.0:r4b r5:5.0.0:r5; do
  IFS=: read -r package version release <<<"$spec"
  dir="$work/$release"
  if [ ! -d "$dir/package" ]; then
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "hl7.fhir.$package.examples@$version" >/dev/null && tar xzf ./*.tgz)
  fi
  rm -rf "$dir/xml" && mkdir -p "$dir/xml"
  FHIR_EXAMPLES_DIR="$dir/package" FHIR_XML_OUT="$dir/xml" FHIR_RELEASE="$release" \
    cargo test -q --release --lib convert_example_directory -- --ignored --nocapture \
    >"$dir/convert.log" 2>&1
  grep -E '^[0-9]+ examples' "$dir/convert.log" | sed "s/^/$release: /"
  failed="$(sed -n 's|^not converted: .*/\([^/]*\)\.json: .*|\1|p' "$dir/convert.log")"
  if [ -f "$root/tests/fixtures/xsd/$release/fhir-single.xsd" ]; then
    failed="$failed
$( (cd "$dir/xml" && find . -name '*.xml' -printf '%f\n' | sort |
      xargs xmllint --noout --schema "$root/tests/fixtures/xsd/$release/fhir-single.xsd" 2>&1 || true) |
      sed -n 's/^\(.*\)\.xml fails to validate$/\1/p')"
  fi
  expected_var="expected_$release"
  got="$(echo "$failed" | tr ' ' '\n' | sed '/^$/d' | sort)"
  want="$(echo "${!expected_var}" | tr ' ' '\n' | sed '/^$/d' | sort)"
  if [ "$got" != "$want" ]; then
    echo "$release: failures differ from the known invalid examples:" >&2
    diff <(echo "$want") <(echo "$got") >&2 || true
    status=1
  else
    echo "$release: all valid except the $(echo "$want" | sed '/^$/d' | wc -l) known invalid examples"
  fi
done
exit "$status"
